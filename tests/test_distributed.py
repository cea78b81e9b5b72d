"""Two processes joined by jax.distributed train exactly like one process on the same batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

WORKER = REPO_ROOT / "tests" / "distributed_worker.py"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(process_id, num_processes, port, local_devices, out):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, str(WORKER), str(process_id), str(num_processes), str(port),
       str(local_devices), str(out)], cwd=REPO_ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs):
  for p in procs:
    output, _ = p.communicate(timeout=900)
    assert p.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  port = _free_port()
  _wait([_run(i, 2, port, 4, tmp_path / "two.json") for i in range(2)])
  _wait([_run(0, 1, port, 8, tmp_path / "one.json")])
  two = json.loads((tmp_path / "two.json").read_text())
  one = json.loads((tmp_path / "one.json").read_text())
  assert two["num_devices"] == one["num_devices"] == 8
  # Same global batch, same mesh shape: equal up to float32 reduction order across processes.
  np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(two["checksum"], one["checksum"], rtol=1e-6)
