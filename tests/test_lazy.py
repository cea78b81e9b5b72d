"""lazy.py: a module named at import runs its code at first use, and a missing one fails now."""

import subprocess
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


def test_a_lazy_submodule_imports_no_parent_until_used():
  # A fresh interpreter: json is imported by nothing at Python's start-up.
  script = ("import sys; from procrop_jax import lazy\n"
            "decoder = lazy.module('json.decoder')\n"
            "assert not lazy.is_loaded('json') and not lazy.is_loaded('json.decoder')\n"
            "assert decoder.JSONDecoder().decode('[1]') == [1]\n"
            "assert lazy.is_loaded('json.decoder')\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr


def test_a_missing_module_fails_at_once():
  with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
    lazy.module("no_such_module_here")
  with pytest.raises(ModuleNotFoundError, match="no_such_package"):
    lazy.module("no_such_package.sub")
