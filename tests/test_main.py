"""The command line: user mistakes end in one clear line and a non-zero exit, no traceback."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def run_main(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "procrop_jax.main", *args], cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/default.py", "--workdir=/tmp/w", "--mode=bogus"],
     "value should be one of <train|eval|build_index|crop|export|refine_cad>"),
    (["--config=configs/missing.py", "--workdir=/tmp/w"], "configs/default.py"),
    (["--config=configs/default.py", "--workdir=/tmp/w", "--config.model.no_such_field=3"],
     "no_such_field"),
    (["--config=configs/default.py", "--workdir=/tmp/w", "--config.model.d_model=abc"],
     "d_model"),
    (["--workdir=/tmp/w"], "--config is required"),
    (["--config=configs/default.py"], "--workdir is required"),
])
def test_user_errors_exit_nonzero_with_one_clear_line(args, expected):
  result = run_main(*args)
  assert result.returncode != 0
  assert expected in result.stderr
  assert "Traceback" not in result.stderr


def test_missing_config_lists_the_available_configs():
  result = run_main("--config=configs/missing.py", "--workdir=/tmp/w")
  assert "configs/missing.py" in result.stderr
  assert "configs/testing.py" in result.stderr
