"""Test setup: 8 fake CPU devices so sharding tests run on any machine.

The flag must be set before JAX initialises its backends, hence at import time here.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real datasets beside the checkout; skips where a user's clone has none."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not available: {SHARED_DATA} does not exist "
                "(it is only present in the development sandbox)")
  return SHARED_DATA
