"""Atomic writes, fingerprints and the workdir lock."""

import json
import os
import signal
import subprocess
import sys

import pytest

from procrop_jax import artifacts
from tests.conftest import REPO_ROOT


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "result.json"
  path.write_text("old")
  artifacts.atomic_write_json(path, {"iou": 0.7})
  assert json.loads(path.read_text()) == {"iou": 0.7}
  assert os.listdir(tmp_path) == ["result.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "result.json"
  path.write_text("old")
  with pytest.raises(TypeError):
    artifacts.atomic_write_json(path, {"not json": object()})
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["result.json"]


def test_fingerprint_ignores_key_order_and_sees_every_value():
  assert artifacts.fingerprint({"a": 1, "b": [2, 3]}) == artifacts.fingerprint({"b": [2, 3], "a": 1})
  assert artifacts.fingerprint({"a": 1}) != artifacts.fingerprint({"a": 2})


def test_a_held_workdir_is_refused_with_the_holder_named(tmp_path):
  with artifacts.workdir_lock(tmp_path) as path:
    assert path.read_text().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(artifacts.WorkdirInUseError, match=f"pid {os.getpid()}.*train.lock"):
      with artifacts.workdir_lock(tmp_path):
        pass
  with artifacts.workdir_lock(tmp_path):  # Released on the way out.
    pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
  holder = ("import os, signal, sys\n"
            "from procrop_jax import artifacts\n"
            "with artifacts.workdir_lock(sys.argv[1]):\n"
            "  os.kill(os.getpid(), signal.SIGKILL)\n")
  result = subprocess.run([sys.executable, "-c", holder, str(tmp_path)], cwd=REPO_ROOT,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), timeout=60)
  assert result.returncode == -signal.SIGKILL
  assert "pid" in (tmp_path / "train.lock").read_text()  # Left behind by the dead process.
  with artifacts.workdir_lock(tmp_path) as path:
    assert path.read_text().startswith(f"pid {os.getpid()} on ")
