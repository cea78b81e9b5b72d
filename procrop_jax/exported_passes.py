"""Forward passes kept across processes as serialized `jax.export` modules.

JAX's persistent compilation cache (`inference.use_compile_cache`) spares a later process the
XLA compilation of a canvas shape, but not tracing the model in Python and lowering it, which is
most of what is left: 0.76 of 0.99 s per shape on 2 CPU cores. So the lowered pass is kept as
well. `jax.export` serializes it into the compilation cache folder (`exported/`), keyed by
everything the program depends on: the package's source code, JAX's version, the model's config
and graph, the step's options and the input shapes. A later process deserializes it (10 ms) and
lowers only the call into it (0.26 s); XLA then finds the compiled executable in the cache.

A file that cannot be read back (truncated, from another JAX) is exported again, never used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Mapping

from absl import logging
import jax
import numpy as np

FOLDER = "exported"
SUFFIX = ".jaxexport"


@functools.cache
def source_fingerprint() -> str:
  """A hash of every Python file of the package: a changed model never reuses an old pass."""
  root = pathlib.Path(__file__).resolve().parent
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def _shapes(tree: Any) -> list[tuple[tuple[int, ...], str]]:
  return [(tuple(np.shape(x)), str(x.dtype)) for x in jax.tree.leaves(tree)]


class ExportedPasses:
  """Jitted forward passes, exported once per input shape and kept in `folder`.

  `identity` is what, besides the inputs' shapes, decides the program (the model's config and
  graph, the step's options); `get` returns a function of (state, batch) like the jitted step.
  """

  def __init__(self, folder: str | os.PathLike[str], identity: Mapping[str, Any]):
    self.folder = pathlib.Path(folder) / FOLDER
    self.identity = {**identity, "jax": jax.__version__,
                     "platform": jax.default_backend(), "source": source_fingerprint()}
    self._calls: dict[tuple[Any, ...], Callable] = {}

  def key(self, what: str, state: Any, batch: Mapping[str, Any]) -> str:
    record = {**self.identity, "what": what, "state": _shapes(state),
              "treedef": str(jax.tree.structure(state)),
              "batch": {k: _shapes(v) for k, v in sorted(batch.items())}}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

  def get(self, what: str, step: Callable, state: Any, batch: Mapping[str, Any]) -> Callable:
    """`step` (a jitted function of (state, batch)) for these inputs' shapes, through a pass
    exported by this or an earlier process."""
    # Every call asks: hashing the whole state's shapes is left to the first call of a shape.
    seen = (what, id(state), tuple((k, np.shape(v)) for k, v in sorted(batch.items())))
    if seen not in self._calls:
      key = self.key(what, state, batch)
      exported = self._read(key)
      if exported is None:
        exported = self._export(key, step, state, batch)
      call = jax.jit(exported.call)
      self._calls[seen] = lambda state, batch: call(jax.tree.leaves(state), batch)
    return self._calls[seen]

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
    path = self._path(key)
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      partial = path.with_suffix(f".{os.getpid()}.tmp")
      partial.write_bytes(exported.serialize())
      partial.replace(path)  # Atomic: a concurrent reader sees the whole file or none.
    except OSError as e:  # A read-only cache still predicts; it only forgets the pass.
      logging.warning("Cannot keep the exported pass in %s: %s", path.parent, e)
    return exported
