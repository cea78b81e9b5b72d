"""Test setup: 8 fake CPU devices so sharding tests run on any machine.

The flag must be set before JAX initialises its backends, hence at import time here.
"""

import importlib.util
import os
import pathlib
import socket

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# `procrop crop` keeps compiled passes in the user's cache unless told otherwise: not in tests.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# ScaNN is the optional `scann` extra (Linux x86-64 wheels only); its tests skip without it.
HAS_SCANN = importlib.util.find_spec("scann") is not None
requires_scann = pytest.mark.skipif(not HAS_SCANN, reason="scann is not installed (the [scann] extra)")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def free_port() -> int:
  """A localhost port for the coordinator of a test's jax.distributed processes."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real datasets beside the checkout; skips where a user's clone has none."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not available: {SHARED_DATA} does not exist "
                "(it is only present in the development sandbox)")
  return SHARED_DATA


def _enable_compilation_cache(path: pathlib.Path) -> None:
  """Identical jitted steps compiled by several tests (and xdist workers) are compiled once."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def compilation_cache_env() -> dict[str, str]:
  """Environment for a test's subprocess to share this run's compilation cache (empty before
  `shared_tmp` turns it on): a worker that trains the tiny config reuses the steps the tests
  compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  folder = jax.config.jax_compilation_cache_dir
  if not folder:
    return {}
  return {"JAX_COMPILATION_CACHE_DIR": folder,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1.0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory) -> pathlib.Path:
  """A directory shared by all xdist workers of this test run."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / "procrop_shared"
  path.mkdir(exist_ok=True)
  _enable_compilation_cache(path / "xla_cache")
  return path


@pytest.fixture(scope="session")
def tiny_config(shared_tmp):
  """configs/testing.py with its CAD data built (once per run, under a lock) in a temp dir."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from configs import testing  # pylint: disable=g-import-not-at-top
  from procrop_jax.datasets import prepare  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.data.data_dir = str(shared_tmp / "tfds")
  config.data.manual_dir = str(shared_tmp / "manual" / "procrop_cad_tiny")
  with open(shared_tmp / "data.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  return config


@pytest.fixture(scope="session")
def tiny_trained_workdir(shared_tmp, tiny_config) -> pathlib.Path:
  """A workdir of the tiny config trained for 1 step (once per run, under a lock)."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from procrop_jax import train  # pylint: disable=g-import-not-at-top
  workdir = shared_tmp / "trained_tiny"
  with open(shared_tmp / "trained.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "checkpoints").is_dir():
      config = tiny_config.copy_and_resolve_references()
      config.train.num_steps = 1
      train.train_and_evaluate(config, str(workdir))
  return workdir
