"""Forward passes kept across processes as serialized `jax.export` modules.

JAX's persistent compilation cache (`inference.use_compile_cache`) spares a later process the
XLA compilation of a canvas shape, but not tracing the model in Python and lowering it, which is
most of what is left: 0.76 of 0.99 s per shape on 2 CPU cores. So the lowered pass is kept as
well. `jax.export` serializes it into the compilation cache folder (`exported/`), keyed by
everything the program depends on: the package's source code, JAX's version, the model's config
and graph, the step's options and the input shapes. A later process deserializes it (10 ms) and
lowers only the call into it (0.26 s); XLA then finds the compiled executable in the cache.

The state enters a pass as its list of leaves. Their names, shapes and dtypes in order are kept
too (`<identity>.leaves.json`): a shipped model's weights are stored by name, so a later process
orders them for the pass without building the model (`nnx.eval_shape` of it costs 0.6 s).

A file that cannot be read back (truncated, from another JAX) is exported again, never used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import threading
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import numpy as np

FOLDER = "exported"
SUFFIX = ".jaxexport"
# XLA:CPU's fusion emitters (its default code generator) compile the cropper's passes, whose many
# small fusions include the face network's depthwise convolutions written as shifted slices, in
# 1.4x the CPU time and about 3x the peak memory of the loop emitters, and the code they make
# runs no faster: the face pass at 384 x 384 compiled in 3.1-3.3 CPU-s (+80 MB) instead of
# 4.5-5.2 (+225-230 MB), and a first-ever `procrop crop ONE.jpg` peaked at 639 MB instead of
# 988 MB (experiments/README.md, "Start-up").
#
# LLVM's optimization level 1 rather than 2: on CPU the heavy work is in library calls
# (YNNPACK's or XLA's own convolution and matmul kernels), and what LLVM compiles (elementwise
# fusions) runs as fast at -O1. A first-ever `procrop crop ONE.jpg` took 6.6-7.6 s instead of
# 7.3-7.9, and steady photos/s did not fall (experiments/README.md, "Start-up", session 23).
_CPU_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
# XLA:CPU hands dots and convolutions to the YNNPACK library by default. The face network's are
# narrow (3 to 64 channels at up to 192 x 192): there YNNPACK took 28.6-30 CPU-ms a photo at
# 384 px against 22.6 for XLA's own kernels, and its first conv (3 -> 32 channels) alone 4.8 ms.
# The cropper's EfficientNet passes keep it: without it they ran ~1 CPU-ms a photo faster but
# compiled 0.5-0.7 s slower, the larger cost to a first-ever `procrop crop ONE.jpg`.
_CPU_NO_LIBRARY_FUSIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(*, library_fusions: bool = True) -> dict[str, Any]:
  """XLA options for the calls into exported passes on the current backend (`jax.jit`'s
  `compiler_options`; only a top-level jit takes them): on CPU, the loop emitters at LLVM's
  level 1 (see `_CPU_COMPILER_OPTIONS`) and, unless `library_fusions`, XLA's own dots and
  convolutions instead of YNNPACK's (`_CPU_NO_LIBRARY_FUSIONS`)."""
  if jax.default_backend() != "cpu":
    return {}
  return {**_CPU_COMPILER_OPTIONS, **({} if library_fusions else _CPU_NO_LIBRARY_FUSIONS)}


@functools.cache
def source_fingerprint() -> str:
  """A hash of every Python file of the package: a changed model never reuses an old pass."""
  root = pathlib.Path(__file__).resolve().parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


LeafSpecs = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype) per state leaf


class OncePerKey(dict):
  """A dict whose values are made once per key, thread-safe: a thread asking for a key that
  another is making (a pass exporting or compiling, seconds) waits for it rather than making
  it again; threads asking for other keys go on."""

  def __init__(self):
    super().__init__()
    self._locks: dict[Any, threading.Lock] = {}
    self._locks_lock = threading.Lock()

  def get_or_make(self, key: Any, make: Callable[[], Any]) -> Any:
    if key not in self:
      with self._locks_lock:
        lock = self._locks.setdefault(key, threading.Lock())
      with lock:
        if key not in self:
          self[key] = make()
    return self[key]


def leaf_specs(named_leaves: Sequence[tuple[str, Any]]) -> LeafSpecs:
  """(name, shape, dtype) of each (name, array) in the state's leaf order."""
  return [(name, tuple(np.shape(x)), str(x.dtype)) for name, x in named_leaves]


def _shapes(tree: Any) -> list[tuple[tuple[int, ...], str]]:
  return [(tuple(np.shape(x)), str(x.dtype)) for x in jax.tree.leaves(tree)]


class ExportedPasses:
  """Jitted forward passes, exported once per input shape and kept in `folder`.

  `identity` is what, besides the inputs' shapes, decides the program (the model's config and
  graph, the step's options). The state enters an exported pass as its list of leaves, named by
  `specs` (see `leaf_specs`); `get` returns a function of (leaves, batch). The calls compile
  with the XLA `options` given (default: `compiler_options()`).

  The model's config and the package's code decide its leaves, so they are kept too
  (`read_specs`/`write_specs`): a later process with the weights by name (a shipped model's
  file) orders them for an exported pass without building the model at all.
  """

  def __init__(self, folder: str | os.PathLike[str], identity: Mapping[str, Any], *,
               options: Mapping[str, Any] | None = None):
    self.options = dict(compiler_options() if options is None else options)
    self.folder = pathlib.Path(folder) / FOLDER
    self.identity = {**identity, "jax": jax.__version__,
                     "platform": jax.default_backend(), "source": source_fingerprint()}
    self._calls = OncePerKey()  # (what, input shapes) -> the call into its exported pass.

  def _identity_key(self) -> str:
    return hashlib.sha256(json.dumps(self.identity, sort_keys=True, default=str).encode()
                          ).hexdigest()

  def key(self, what: str, specs: LeafSpecs, batch: Mapping[str, Any]) -> str:
    record = {**self.identity, "what": what, "state": specs,
              "batch": {k: _shapes(v) for k, v in sorted(batch.items())}}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

  # ---------------------------------------------------------------------- the state's leaves
  def _specs_path(self) -> pathlib.Path:
    return self.folder / f"{self._identity_key()[:40]}.leaves.json"

  def read_specs(self) -> LeafSpecs | None:
    """The leaves a model of this identity has, in order, if a process kept them."""
    path = self._specs_path()
    try:
      return [(name, tuple(shape), dtype)
              for name, shape, dtype in json.loads(path.read_text())]
    except FileNotFoundError:
      return None
    except (OSError, ValueError, TypeError) as e:  # Unreadable: the model is built instead.
      logging.warning("%s cannot be read back (%s): building the model.", path, e)
      return None

  def write_specs(self, specs: LeafSpecs) -> None:
    self._write(self._specs_path(), json.dumps(specs).encode())

  # ------------------------------------------------------------------------------- the passes
  def get(self, what: str, specs: LeafSpecs, batch: Mapping[str, Any],
          make_step: Callable[[], tuple[Callable, Any]]) -> Callable:
    """A function of (leaves, batch) for these inputs' shapes, through a pass exported by this
    or an earlier process.

    `make_step()` returns (the jitted function of (state, batch), the state whose leaves are
    `specs`): called only to export a pass no process has kept yet. Thread-safe: threads asking
    for the same shapes at once export it once.
    """
    # Every call asks: hashing the whole state's shapes is left to the first call of a shape.
    seen = (what, tuple((k, np.shape(v)) for k, v in sorted(batch.items())))

    def make() -> Callable:
      key = self.key(what, specs, batch)
      exported = self._read(key)
      if exported is None:
        exported = self._export(key, *make_step(), batch)
      return jax.jit(exported.call, compiler_options=self.options)
    return self._calls.get_or_make(seen, make)

  def __len__(self) -> int:
    """The passes this process has prepared (one per input shape)."""
    return len(self._calls)

  def _path(self, key: str) -> pathlib.Path:
    return self.folder / f"{key[:40]}{SUFFIX}"

  def _read(self, key: str) -> jax.export.Exported | None:
    path = self._path(key)
    if not path.is_file():
      return None
    try:
      return jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception as e:  # pylint: disable=broad-except  (any unreadable file: export again)
      logging.warning("%s cannot be read back (%s): exporting the pass again.", path, e)
      return None

  def _export(self, key: str, step: Callable, state: Any, batch: Mapping[str, Any]
              ) -> jax.export.Exported:
    treedef = jax.tree.structure(state)

    def flat(leaves, batch):  # Lists and dicts serialize; the model's State nodes do not.
      return step(jax.tree.unflatten(treedef, leaves), batch)

    exported = jax.export.export(jax.jit(flat))(jax.tree.leaves(state), batch)
    self._write(self._path(key), exported.serialize())
    return exported

  def _write(self, path: pathlib.Path, data: bytes) -> None:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      partial = path.with_suffix(f".{os.getpid()}.tmp")
      partial.write_bytes(data)
      partial.replace(path)  # Atomic: a concurrent reader sees the whole file or none.
    except OSError as e:  # A read-only cache still predicts; it only forgets what it made.
      logging.warning("Cannot keep %s in %s: %s", path.name, path.parent, e)
