"""lazy.py: a module named at import runs its code at first use, and a missing one fails now."""

import sys

import pytest

from procrop_jax import lazy


def test_a_lazy_module_loads_at_its_first_use(monkeypatch):
  name = "colorsys"  # Small, in the standard library, and imported by nothing here.
  monkeypatch.delitem(sys.modules, name, raising=False)
  module = lazy.module(name)
  assert not lazy.is_loaded(name)
  assert module.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
  assert lazy.is_loaded(name)
  assert lazy.module(name) is sys.modules[name]  # Already imported: returned as it is.


def test_a_missing_module_fails_at_once():
  with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
    lazy.module("no_such_module_here")
