"""Two processes joined by jax.distributed, each reading its own shard of the training split,
train exactly like one process fed the concatenation of their local batches."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, free_port

WORKER = REPO_ROOT / "tests" / "distributed_worker.py"


def _run(process_id, num_processes, port, local_devices, out, data, *replay):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, str(WORKER), str(process_id), str(num_processes), str(port),
       str(local_devices), str(out), str(data), *map(str, replay)], cwd=REPO_ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs):
  for p in procs:
    output, _ = p.communicate(timeout=900)
    assert p.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_two_hosts_reading_their_own_shards_train_like_one_on_the_joined_batch(
    tiny_config, tmp_path):
  data = tmp_path / "data.json"
  data.write_text(json.dumps({"data_dir": tiny_config.data.data_dir,
                              "manual_dir": tiny_config.data.manual_dir}))
  port = free_port()
  _wait([_run(i, 2, port, 4, tmp_path / "two", data) for i in range(2)])
  hosts = [json.loads((tmp_path / f"two.p{i}.json").read_text()) for i in range(2)]
  # Each host read its own examples: different local batches, none shared.
  local = tiny_config.train.batch_size // 2
  for step in range(2):
    ids = [h["image_ids"][step] for h in hosts]
    assert len(ids[0]) == len(ids[1]) == local
    assert not set(ids[0]) & set(ids[1]), ids
  # Training ran, and the replicated parameters are the same bytes on both hosts.
  assert np.all(np.isfinite(hosts[0]["losses"]))
  assert hosts[0]["losses"] == hosts[1]["losses"]
  assert hosts[0]["params_sha256"] == hosts[1]["params_sha256"]
  # The global batch is host 0's local batch followed by host 1's: one process fed exactly
  # that (8 devices, the same mesh shape) takes the same steps.
  _wait([_run(0, 1, port, 8, tmp_path / "one", data,
              tmp_path / "two.p0.npz", tmp_path / "two.p1.npz")])
  one = json.loads((tmp_path / "one.p0.json").read_text())
  assert hosts[0]["num_devices"] == one["num_devices"] == 8
  # Equal up to float32 reduction order across processes.
  np.testing.assert_allclose(hosts[0]["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(hosts[0]["checksum"], one["checksum"], rtol=1e-6)
