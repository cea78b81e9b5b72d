"""Reads a TensorFlow Lite flatbuffer (tensors, operators, options) without TensorFlow.

The inference path must never import TensorFlow, and the TFLite schema needs only five tables
(Model, SubGraph, Tensor, Buffer, Operator) and a few option tables, so they are read here by
field index with `flatbuffers.table.Table` instead of generated code. Field indices follow
tensorflow/compiler/mlir/lite/schema/schema.fbs; a field's vtable slot is 4 + 2 * index.
Float16 weights are returned as stored; `DEQUANTIZE` of a constant is the caller's to fold.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import flatbuffers
from flatbuffers import table as fb_table
import numpy as np

# TensorType enum -> numpy dtype (the ones small vision models use).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
           7: np.int16, 9: np.int8}
# BuiltinOperator enum -> name, for the ops the face models use and a few neighbours.
OP_NAMES = {0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D",
            4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 14: "LOGISTIC", 17: "MAX_POOL_2D",
            18: "MUL", 19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR",
            34: "PAD", 54: "PRELU", 121: "DENSIFY"}
# Option tables: op name -> field names in schema order (scalars only; None skips a field).
_OPTIONS = {
    "CONV_2D": ("padding", "stride_w", "stride_h", "activation", "dilation_w", "dilation_h"),
    "DEPTHWISE_CONV_2D": ("padding", "stride_w", "stride_h", "depth_multiplier", "activation",
                          "dilation_w", "dilation_h"),
    "MAX_POOL_2D": ("padding", "stride_w", "stride_h", "filter_w", "filter_h", "activation"),
    "AVERAGE_POOL_2D": ("padding", "stride_w", "stride_h", "filter_w", "filter_h",
                        "activation"),
    "ADD": ("activation",),
    "MUL": ("activation",),
    "CONCATENATION": ("axis", "activation"),
    "RESIZE_BILINEAR": (None, None, "align_corners", "half_pixel_centers"),
}
# Defaults where the schema's differ from 0.
_DEFAULTS = {"dilation_w": 1, "dilation_h": 1, "depth_multiplier": 1}
_SCALAR = flatbuffers.number_types.Int32Flags


class TFLiteError(ValueError):
  """A .tflite file is missing, truncated or not a TFLite model; the message names it."""


@dataclasses.dataclass(frozen=True)
class Tensor:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  data: np.ndarray | None  # None for activations (no buffer data).


@dataclasses.dataclass(frozen=True)
class Operator:
  op: str  # BuiltinOperator name, or "BUILTIN_<code>" for one not in OP_NAMES.
  inputs: tuple[int, ...]  # Tensor indices; -1 marks an omitted optional input.
  outputs: tuple[int, ...]
  options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Model:
  tensors: list[Tensor]
  operators: list[Operator]  # In execution order.
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]


def _field(t: fb_table.Table, index: int) -> int:
  return t.Offset(4 + 2 * index)


def _scalar(t: fb_table.Table, index: int, flags, default=0):
  o = _field(t, index)
  return t.Get(flags, o + t.Pos) if o else default


def _vector(t: fb_table.Table, index: int, dtype) -> np.ndarray:
  o = _field(t, index)
  if not o:
    return np.zeros((0,), dtype)
  start = t.Vector(o)
  n = t.VectorLen(o)
  return np.frombuffer(t.Bytes, dtype=np.dtype(dtype).newbyteorder("<"), count=n,
                       offset=start)


def _tables(t: fb_table.Table, index: int) -> list[fb_table.Table]:
  o = _field(t, index)
  if not o:
    return []
  start = t.Vector(o)
  return [fb_table.Table(t.Bytes, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]


def _string(t: fb_table.Table, index: int) -> str:
  o = _field(t, index)
  return t.String(o + t.Pos).decode("utf-8") if o else ""


def _subtable(t: fb_table.Table, index: int) -> fb_table.Table | None:
  o = _field(t, index)
  return fb_table.Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _options(op: str, t: fb_table.Table | None) -> dict[str, Any]:
  names = _OPTIONS.get(op, ())
  out = {}
  for i, name in enumerate(names):
    if name is None:
      continue
    # Every option these ops use is a byte, bool or int32: int32 fields are read as such, the
    # one-byte ones (padding, activation, booleans) as int8.
    small = name in ("padding", "activation", "align_corners", "half_pixel_centers")
    flags = flatbuffers.number_types.Int8Flags if small else _SCALAR
    out[name] = _scalar(t, i, flags, _DEFAULTS.get(name, 0)) if t else _DEFAULTS.get(name, 0)
  return out


def read(path: str | os.PathLike) -> Model:
  """Reads the first subgraph of a .tflite file.

  Raises:
    TFLiteError: the file is missing or is not a readable TFLite model (the message names it).
  """
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise TFLiteError(f"Cannot read the TFLite model {path}: {e}") from e
  try:
    return _parse(data)
  except TFLiteError as e:
    raise TFLiteError(f"{path} is not a valid TFLite model: {e}") from e
  except Exception as e:  # A truncated or foreign file fails anywhere inside the flatbuffer.
    raise TFLiteError(f"{path} is not a valid TFLite model ({type(e).__name__}: {e})") from e


def _parse(data: bytes) -> Model:
  # The file identifier "TFL3" sits after the root offset.
  if len(data) < 8 or data[4:8] != b"TFL3":
    raise TFLiteError("no TFL3 file identifier")
  root = fb_table.Table(bytearray(data), flatbuffers.encode.Get(
      flatbuffers.packer.uoffset, data, 0))
  codes = []
  for c in _tables(root, 1):
    deprecated = _scalar(c, 0, flatbuffers.number_types.Int8Flags)
    code = max(deprecated, _scalar(c, 3, _SCALAR))  # Codes >127 live only in builtin_code.
    codes.append(OP_NAMES.get(code, f"BUILTIN_{code}"))
  buffers = [_vector(b, 0, np.uint8) for b in _tables(root, 4)]
  subgraphs = _tables(root, 2)
  if not subgraphs:
    raise TFLiteError("no subgraph")
  graph = subgraphs[0]
  tensors = []
  for t in _tables(graph, 0):
    shape = tuple(int(s) for s in _vector(t, 0, np.int32))
    type_code = _scalar(t, 1, flatbuffers.number_types.Int8Flags)
    if type_code not in _DTYPES:
      raise TFLiteError(f"tensor {_string(t, 3)!r} has unsupported type {type_code}")
    dtype = np.dtype(_DTYPES[type_code])
    raw = buffers[_scalar(t, 2, flatbuffers.number_types.Uint32Flags)]
    array = None
    if raw.size:
      array = raw.view(dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    tensors.append(Tensor(_string(t, 3), shape, dtype, array))
  operators = []
  for o in _tables(graph, 3):
    op = codes[_scalar(o, 0, flatbuffers.number_types.Uint32Flags)]
    operators.append(Operator(
        op, tuple(int(i) for i in _vector(o, 1, np.int32)),
        tuple(int(i) for i in _vector(o, 2, np.int32)), _options(op, _subtable(o, 4))))
  return Model(tensors, operators, tuple(int(i) for i in _vector(graph, 1, np.int32)),
               tuple(int(i) for i in _vector(graph, 2, np.int32)))


def constant(model: Model, index: int) -> np.ndarray:
  """A constant tensor's data as float32 (float16 weights widened), else its stored dtype."""
  data = model.tensors[index].data
  if data is None:
    raise TFLiteError(f"tensor {model.tensors[index].name!r} has no data")
  return data.astype(np.float32) if data.dtype == np.float16 else data
