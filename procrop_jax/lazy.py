"""Modules imported at their first use rather than at start-up (`importlib.util.LazyLoader`).

For a dependency that only some paths through a module need, whose import costs start-up time
on every path: orbax's checkpointing (0.2-0.3 s on 2 CPU cores) for `workdir.py`, which a
cropper with a shipped model imports but never restores a checkpoint through.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def module(name: str) -> types.ModuleType:
  """`import name` that runs the module's code at the first attribute access.

  An already imported module is returned as it is. A missing one raises ModuleNotFoundError
  now, as a plain import would.
  """
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.find_spec(name)
  if spec is None or spec.loader is None:
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
  loader = importlib.util.LazyLoader(spec.loader)
  spec.loader = loader
  lazy = importlib.util.module_from_spec(spec)
  sys.modules[name] = lazy
  loader.exec_module(lazy)
  return lazy


def is_loaded(name: str) -> bool:
  """Whether the module's code has run (imported plainly, or first used after `module`)."""
  loaded = sys.modules.get(name)
  # A lazy module turns into a plain one when it loads.
  return loaded is not None and type(loaded) is types.ModuleType  # pylint: disable=unidiomatic-typecheck
