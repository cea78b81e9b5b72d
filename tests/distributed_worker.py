"""One process of the multi-process training test (run by tests/test_distributed.py).

  python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS OUT.json

Each process feeds its slice of one fixed global batch; process 0 writes the loss of each step
and a checksum of the parameters.
"""

import json
import os
import sys


def main() -> None:
  process_id, num_processes, port, local_devices = (int(a) for a in sys.argv[1:5])
  out_path = sys.argv[5]
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  os.environ["CUDA_VISIBLE_DEVICES"] = ""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)
  from configs import testing  # pylint: disable=g-import-not-at-top
  from procrop_jax import train  # pylint: disable=g-import-not-at-top
  from tests.test_train import synthetic_batch  # pylint: disable=g-import-not-at-top

  config = testing.get_config()
  config.model.num_references = 0
  trainer = train.Trainer(config, os.path.dirname(out_path))
  batch = synthetic_batch(config)
  local = config.train.batch_size // num_processes
  local_batch = {k: v[process_id * local:(process_id + 1) * local] for k, v in batch.items()}
  losses = []
  for _ in range(2):
    trainer.state, metrics = trainer.train_step(trainer.state, trainer.device_batch(local_batch))
    losses.append(float(metrics["loss"]))
  # Parameters are replicated on this mesh (model axis of size 1): any local copy is the value.
  checksum = sum(float(np.abs(np.asarray(x.addressable_data(0), np.float64)).sum())
                 for x in jax.tree.leaves(trainer.state["params"]))
  if process_id == 0:
    with open(out_path, "w") as f:
      json.dump({"losses": losses, "checksum": checksum,
                 "num_devices": jax.device_count()}, f)


if __name__ == "__main__":
  main()
