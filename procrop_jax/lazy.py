"""Modules imported at their first use rather than at start-up.

For a dependency that only some paths through a module need, whose import costs start-up time
on every path:
- orbax's checkpointing (0.2-0.3 s on 2 CPU cores) for `workdir.py`, which a cropper with a
  shipped model imports but never restores a checkpoint through;
- Flax (0.4-0.45 s) and the model's modules, which a cropper whose forward passes an earlier
  process exported (exported_passes.py) never runs: it feeds stored arrays to those passes.

`module("a.b")` imports neither `a` nor `a.b` until an attribute is read (unlike
`importlib.util.LazyLoader`, which must import the parent package to find a submodule).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
  """Stands for a module until an attribute is read; then every read goes to the real one."""

  def __getattr__(self, attr: str) -> Any:
    if attr.startswith("__") and attr.endswith("__"):  # copy, pickle and inspect probe these.
      raise AttributeError(attr)
    return getattr(importlib.import_module(self.__name__), attr)

  def __dir__(self) -> list[str]:
    return dir(importlib.import_module(self.__name__))


def module(name: str) -> types.ModuleType:
  """`import name`, run at the first attribute access.

  An already imported module is returned as it is. A missing top-level package raises
  ModuleNotFoundError now, as a plain import would (finding it imports nothing).
  """
  if name in sys.modules:
    return sys.modules[name]
  top = name.partition(".")[0]
  if top not in sys.modules and importlib.util.find_spec(top) is None:
    raise ModuleNotFoundError(f"No module named {top!r}", name=top)
  return _Deferred(name)


def is_loaded(name: str) -> bool:
  """Whether the module's code has run (imported plainly, or first used after `module`)."""
  return name in sys.modules
