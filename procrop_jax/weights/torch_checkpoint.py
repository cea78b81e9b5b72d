"""Reads PyTorch checkpoint files into numpy arrays without importing torch.

Two on-disk formats exist:

* The zip format of `torch.save` since PyTorch 1.6 (and torchvision's files): a zip archive
  whose single top folder holds `data.pkl` (the pickled object), `data/<key>` (one raw storage
  per key), and `byteorder` ("little" or "big"; absent in old files, meaning little).
* The legacy format (`_use_new_zipfile_serialization=False`, e.g. the efficientnet-liteN
  pytorch-model packages): five pickles back to back (magic number, protocol version, system
  info, the object, the list of storage keys), then each storage as an int64 element count
  followed by its raw bytes, in the order of that list.

Unpickling an untrusted file can run arbitrary code, so the unpickler here resolves only an
allow-list of globals (containers, torch's tensor-rebuild functions and storage types), each
mapped to a harmless stand-in defined in this module; any other global is refused with an error
naming it, before anything from the file is called. The allow-list is read-only, and the
pickle's state-setting opcode (BUILD) is refused on everything but the OrderedDicts the file
itself made (a state dict's `_metadata`), so a file cannot alter the stand-ins that later loads
share. Sizes are bounded by the file's: a storage may not declare more bytes than the file
holds, a compressed zip member may not inflate past `_MAX_INFLATION` times its stored size, and
the tensors of one file may not expand (through zero strides) to more than `_MAX_EXPANSION`
times the file's size. Tensors are rebuilt with their exact offsets, sizes and strides (views
and transposes included) after checking that every element lies inside its storage, and are
returned as contiguous numpy arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import math
import struct
import types
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Containers that commonly wrap a state dict in training checkpoints, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
# torch stores zip members uncompressed; a compressed one may inflate at most this much.
_MAX_INFLATION = 20
# The arrays of one file may total at most this many times its size (plus _MIN_BUDGET): zero
# strides (expanded tensors) are legal but must not turn a small file into a huge allocation.
_MAX_EXPANSION = 4
_MIN_BUDGET = 64 << 20


class UnsafeCheckpointError(pickle.UnpicklingError):
  """The checkpoint references a global outside the allow-list."""


class CheckpointFormatError(ValueError):
  """The file is not a well-formed PyTorch checkpoint."""


def _bfloat16() -> np.dtype:
  import ml_dtypes  # pylint: disable=g-import-not-at-top  # Comes with jax; only for bf16 files.
  return np.dtype(ml_dtypes.bfloat16)


# torch.<Name>Storage -> numpy dtype (a callable for dtypes numpy lacks).
_STORAGE_DTYPES: dict[str, np.dtype | Callable[[], np.dtype]] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _bfloat16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}


# Frozen and slotted; besides, BUILD is refused on them (see _RestrictedUnpickler.load_build).
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  name: str

  @property
  def dtype(self) -> np.dtype:
    dtype = _STORAGE_DTYPES[self.name]
    return dtype if isinstance(dtype, np.dtype) else dtype()


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageRef:
  """A storage named by a persistent id; the bytes are attached once read."""
  key: str
  storage_type: _StorageType
  numel: int
  # Legacy storage views: (root key, element offset) into another storage.
  view_of: tuple[str, int] | None = None


@dataclasses.dataclass
class _TensorRef:
  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise CheckpointFormatError(f"tensor {what} must be a tuple of ints, got {value!r}")
  return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_rest) -> _TensorRef:
  """Stand-in for torch._utils._rebuild_tensor(_v2): records, never calls anything."""
  if not isinstance(storage, _StorageRef):
    raise CheckpointFormatError(f"tensor storage must be a persistent storage, got {storage!r}")
  if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
    raise CheckpointFormatError(f"bad tensor storage offset {storage_offset!r}")
  size = _as_int_tuple(size, "size")
  stride = _as_int_tuple(stride, "stride")
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise CheckpointFormatError(f"bad tensor size {size} / stride {stride}")
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused_rest):
  """Stand-in for torch._utils._rebuild_parameter(_with_state): a Parameter is its data."""
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """Stand-in for torch._tensor._rebuild_from_type_v2 (tensor subclasses with Python state)."""
  del new_type, state  # Only Tensor / Parameter can reach here (the allow-list).
  if func not in (_rebuild_tensor, _rebuild_parameter):
    raise CheckpointFormatError(f"unexpected tensor rebuild function {func!r}")
  return func(*args)


class _TensorType:
  """Stand-in for torch.Tensor / torch.nn.Parameter, only ever passed as a marker."""


def _encode(text: str, encoding: str = "latin1") -> bytes:
  """Stand-in for _codecs.encode, which protocol-2 pickles use to rebuild bytes."""
  return text.encode(encoding)


_allowed_globals: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _encode,
    ("torch", "Size"): tuple,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType,
    ("torch._tensor", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
}
_allowed_globals.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
_allowed_globals[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")
_ALLOWED_GLOBALS = types.MappingProxyType(_allowed_globals)
del _allowed_globals


class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Resolves only allow-listed globals; records storages named by persistent ids.

  Built on the pure-Python unpickler because its opcode table can be changed: BUILD (set an
  object's state) is allowed only on OrderedDicts, the one container torch pickles with state.
  The pickle holds only the tensors' metadata (storages are read apart), so speed is no issue.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file: BinaryIO, *, legacy: bool):
    super().__init__(file, encoding="utf-8")
    self._legacy = legacy
    self.storages: dict[str, _StorageRef] = {}

  def load_build(self) -> None:
    state = self.stack.pop()
    target = self.stack[-1]
    if type(target) is not collections.OrderedDict:  # pylint: disable=unidiomatic-typecheck
      raise UnsafeCheckpointError(
          f"refusing to set the state of {type(target).__name__} {target!r:.80}: a tensor "
          "checkpoint sets state only on OrderedDicts; the file is corrupt or malicious")
    if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
      state = state[0]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
      raise CheckpointFormatError(f"bad OrderedDict state {state!r:.80}")
    target.__dict__.update(state)

  dispatch[pickle.BUILD[0]] = load_build

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UnsafeCheckpointError(
          f"refusing to load global '{module}.{name}': not in the allow-list of a tensor "
          "checkpoint (it could run code); the file is corrupt or malicious") from None

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid:
      raise CheckpointFormatError(f"unsupported persistent id {pid!r}")
    if pid[0] == "module" and self._legacy:
      return None  # Pickled nn.Module source text for torch's source-change warnings.
    if pid[0] != "storage" or len(pid) not in (5, 6):
      raise CheckpointFormatError(f"unsupported persistent id {pid!r}")
    storage_type, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType):
      raise CheckpointFormatError(f"persistent id names no storage type: {pid!r}")
    if not isinstance(numel, int) or numel < 0:
      raise CheckpointFormatError(f"bad storage size in {pid!r}")
    key = str(key)
    if key not in self.storages:
      self.storages[key] = _StorageRef(key, storage_type, numel)
    root = self.storages[key]
    if view is None:
      return root
    # Old torch (< 1.x) saved storage views as (view key, element offset, view size).
    view_key, view_offset, view_size = view
    view_key = str(view_key)
    if view_key not in self.storages:
      self.storages[view_key] = _StorageRef(view_key, storage_type, view_size,
                                            view_of=(key, view_offset))
    return self.storages[view_key]


def _storage_arrays(storages: dict[str, _StorageRef], raw: dict[str, bytes],
                    byteorder: str) -> dict[str, np.ndarray]:
  """Typed 1-D arrays for every storage (views resolved against their roots)."""
  arrays = {}
  for key, ref in storages.items():
    if ref.view_of is not None:
      continue
    if key not in raw:
      raise CheckpointFormatError(f"storage {key!r} has no data in the file")
    dtype = ref.storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
    nbytes = ref.numel * dtype.itemsize
    if len(raw[key]) < nbytes:
      raise CheckpointFormatError(
          f"storage {key!r} holds {len(raw[key])} bytes, {nbytes} expected")
    array = np.frombuffer(raw[key], dtype=dtype, count=ref.numel)
    arrays[key] = array.astype(dtype.newbyteorder("="), copy=False)
  for key, ref in storages.items():
    if ref.view_of is not None:
      root_key, offset = ref.view_of
      root = arrays[root_key]
      if offset < 0 or offset + ref.numel > root.size:
        raise CheckpointFormatError(f"storage view {key!r} lies outside storage {root_key!r}")
      arrays[key] = root[offset:offset + ref.numel]
  return arrays


class _Budget:
  """Bytes the arrays of one file may still take (see _MAX_EXPANSION)."""

  def __init__(self, file_size: int):
    self.file_size = file_size
    self.left = _MAX_EXPANSION * file_size + _MIN_BUDGET

  def spend(self, nbytes: int, what: str) -> None:
    if nbytes > self.left:
      raise CheckpointFormatError(
          f"{what} would take {nbytes} bytes, more than a {self.file_size}-byte checkpoint may "
          "expand to; the file is corrupt or malicious")
    self.left -= nbytes


def _materialise(tensor: _TensorRef, arrays: dict[str, np.ndarray],
                 budget: _Budget) -> np.ndarray:
  storage = arrays[tensor.storage.key]
  count = math.prod(tensor.size)
  budget.spend(count * storage.itemsize, f"tensor of size {tensor.size}")
  if count:
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= storage.size:
      raise CheckpointFormatError(
          f"tensor of size {tensor.size}, stride {tensor.stride}, offset {tensor.offset} "
          f"reads past the end of storage {tensor.storage.key!r} ({storage.size} elements)")
  else:
    return np.zeros(tensor.size, dtype=storage.dtype)
  view = np.lib.stride_tricks.as_strided(
      storage[tensor.offset:], shape=tensor.size,
      strides=tuple(s * storage.itemsize for s in tensor.stride), writeable=False)
  return np.array(view, order="C")  # A copy; ascontiguousarray would make 0-d arrays 1-d.


def _resolve(obj: Any, arrays: dict[str, np.ndarray], seen: dict[int, Any],
             budget: _Budget) -> Any:
  """Replaces every _TensorRef in a nested structure with its numpy array."""
  if id(obj) in seen:
    return seen[id(obj)]
  if isinstance(obj, _TensorRef):
    result = _materialise(obj, arrays, budget)
  elif isinstance(obj, _StorageRef):
    result = arrays[obj.key]
  elif isinstance(obj, dict):
    seen[id(obj)] = obj
    for key in list(obj):
      obj[key] = _resolve(obj[key], arrays, seen, budget)
    return obj
  elif isinstance(obj, list):
    seen[id(obj)] = obj
    obj[:] = [_resolve(v, arrays, seen, budget) for v in obj]
    return obj
  elif isinstance(obj, tuple):
    result = type(obj)(_resolve(v, arrays, seen, budget) for v in obj) if type(
        obj) is tuple else obj
  else:
    return obj
  seen[id(obj)] = result
  return result


def _file_size(file: BinaryIO) -> int:
  position = file.tell()
  size = file.seek(0, os.SEEK_END)
  file.seek(position)
  return size


def _read_member(archive: zipfile.ZipFile, name: str, file_size: int,
                 expected: int | None = None) -> bytes:
  """A member's bytes, refused before reading when its declared size is out of bounds."""
  info = archive.getinfo(name)
  limit = file_size if info.compress_type == zipfile.ZIP_STORED else (
      _MAX_INFLATION * info.compress_size)
  if info.file_size > limit:
    raise CheckpointFormatError(
        f"zip member {name} declares {info.file_size} bytes, more than the file can hold "
        f"({limit}); the file is corrupt or malicious")
  if expected is not None and info.file_size < expected:
    raise CheckpointFormatError(f"zip member {name} holds {info.file_size} bytes, {expected} "
                                "expected")
  return archive.read(name)


def _load_zip(file: BinaryIO) -> Any:
  file_size = _file_size(file)
  with zipfile.ZipFile(file) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pickles) != 1:
      raise CheckpointFormatError(f"expected one data.pkl in the zip checkpoint, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = _read_member(archive, prefix + "byteorder", file_size).decode().strip()
      if byteorder not in ("little", "big"):
        raise CheckpointFormatError(f"unknown byteorder {byteorder!r}")
    unpickler = _RestrictedUnpickler(
        io.BytesIO(_read_member(archive, pickles[0], file_size)), legacy=False)
    obj = unpickler.load()
    raw = {}
    for key, ref in unpickler.storages.items():
      if ref.view_of is None:
        name = f"{prefix}data/{key}"
        if name not in names:
          raise CheckpointFormatError(f"storage {key!r} is missing from the zip ({name})")
        raw[key] = _read_member(archive, name, file_size,
                                expected=ref.numel * ref.storage_type.dtype.itemsize)
  return _resolve(obj, _storage_arrays(unpickler.storages, raw, byteorder), {},
                  _Budget(file_size))


def _load_legacy(file: BinaryIO) -> Any:
  file_size = _file_size(file)

  def header() -> Any:
    return _RestrictedUnpickler(file, legacy=True).load()

  if header() != _LEGACY_MAGIC:
    raise CheckpointFormatError("not a PyTorch checkpoint (bad magic number)")
  protocol = header()
  if protocol != _LEGACY_PROTOCOL:
    raise CheckpointFormatError(f"unsupported legacy protocol version {protocol!r}")
  sys_info = header()
  little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
  unpickler = _RestrictedUnpickler(file, legacy=True)
  obj = unpickler.load()
  keys = header()
  if not isinstance(keys, list):
    raise CheckpointFormatError(f"bad storage key list {keys!r}")
  raw = {}
  for key in keys:
    key = str(key)
    ref = unpickler.storages.get(key)
    if ref is None:
      raise CheckpointFormatError(f"storage {key!r} has data but is not referenced")
    (numel,) = struct.unpack("<q" if little else ">q", file.read(8))
    itemsize = ref.storage_type.dtype.itemsize
    if numel != ref.numel:
      raise CheckpointFormatError(f"storage {key!r}: {numel} elements on disk, {ref.numel} named")
    if numel * itemsize > file_size - file.tell():  # Before reading: no huge allocation.
      raise CheckpointFormatError(
          f"storage {key!r} declares {numel * itemsize} bytes but the file has "
          f"{file_size - file.tell()} left; the file is truncated, corrupt or malicious")
    data = file.read(numel * itemsize)
    if len(data) != numel * itemsize:
      raise CheckpointFormatError(f"file ends inside storage {key!r}")
    raw[key] = data
  return _resolve(obj, _storage_arrays(unpickler.storages, raw, "little" if little else "big"),
                  {}, _Budget(file_size))


def load(source: str | os.PathLike | BinaryIO | bytes) -> Any:
  """Loads a PyTorch checkpoint (zip or legacy format) with tensors as numpy arrays.

  Args:
    source: a path, an open binary file, or the file's bytes.

  Returns:
    The pickled object (typically an OrderedDict) with every tensor and parameter replaced by a
    C-contiguous np.ndarray of the tensor's dtype and shape.

  Raises:
    UnsafeCheckpointError: the file references a global outside the allow-list.
    CheckpointFormatError: the file is not a well-formed checkpoint.
  """
  if isinstance(source, (bytes, bytearray)):
    return load(io.BytesIO(source))
  if isinstance(source, (str, os.PathLike)):
    with open(source, "rb") as f:
      return load(f)
  if zipfile.is_zipfile(source):
    source.seek(0)
    return _load_zip(source)
  source.seek(0)
  if source.read(1) != b"\x80":
    raise CheckpointFormatError(
        "not a PyTorch checkpoint: neither a zip archive nor a pickle (very old tar-format "
        "checkpoints are not supported)")
  source.seek(0)
  return _load_legacy(source)


def _is_state_dict(obj: Any) -> bool:
  return isinstance(obj, dict) and bool(obj) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def load_state_dict(source: str | os.PathLike | BinaryIO | bytes) -> dict[str, np.ndarray]:
  """Loads a checkpoint's state dict as {name: array}.

  A state dict wrapped in a training checkpoint ({"state_dict": ...}, {"model": ...}, ...) is
  unwrapped, and a "module." prefix on every key (torch DataParallel) is removed.

  Raises:
    CheckpointFormatError: no mapping of names to tensors was found.
  """
  obj = load(source)
  candidates = [obj]
  if isinstance(obj, dict):
    candidates += [obj[k] for k in _WRAPPER_KEYS if k in obj]
  for candidate in candidates:
    if _is_state_dict(candidate):
      state = dict(candidate)
      if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
      return state
  keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
  raise CheckpointFormatError(f"no state dict (name -> tensor mapping) found; top level: {keys}")


__all__ = ["CheckpointFormatError", "UnsafeCheckpointError", "load", "load_state_dict"]
