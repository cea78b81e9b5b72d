"""One process of the multi-process training test (run by tests/test_distributed.py).

  python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS OUT DATA.json
      [BATCHES.npz ...]

Without BATCHES, each process reads its own shard of the tiny config's training split (DATA.json
names its data_dir and manual_dir), as every host of a real multi-host run does, and trains on
it. With BATCHES (the local batches that processes of such a run saved), the one process trains
on their concatenation instead: the global batch those processes made together.

Each process writes OUT.p<PROCESS_ID>.json (the loss of each step, the ids of its examples, a
checksum and a hash of its copy of the parameters) and OUT.p<PROCESS_ID>.npz (its local batches).
"""

import hashlib
import json
import os
import sys

STEPS = 2


def main() -> None:
  process_id, num_processes, port, local_devices = (int(a) for a in sys.argv[1:5])
  out, data_path, replay = sys.argv[5], sys.argv[6], sys.argv[7:]
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
  os.environ["CUDA_VISIBLE_DEVICES"] = ""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)
  from configs import testing  # pylint: disable=g-import-not-at-top
  from procrop_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from procrop_jax import train  # pylint: disable=g-import-not-at-top

  config = testing.get_config()
  config.model.num_references = 0
  with open(data_path) as f:
    config.data.update(json.load(f))
  trainer = train.Trainer(config, os.path.dirname(out))
  if replay:  # The global batches of another run: its processes' local batches, in order.
    saved = [np.load(path) for path in replay]
    batches = [{k.split("/", 1)[1]: np.concatenate([s[k] for s in saved])
                for k in saved[0].files if k.startswith(f"{step}/")} for step in range(STEPS)]
  else:  # This host's own shard of the training split.
    data = input_pipeline.create_train_iterator(
        config.data, seed=config.seed, global_batch_size=config.train.batch_size)
    batches = [next(data) for _ in range(STEPS)]
  losses, ids = [], []
  for batch in batches:
    ids.append([x.decode() for x in batch.pop("image_id", [])])
    trainer.state, metrics = trainer.train_step(trainer.state, trainer.device_batch(batch))
    losses.append(float(metrics["loss"]))
  # Parameters are replicated on this mesh (model axis of size 1): the local copy is the value.
  leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(trainer.state["params"])]
  digest = hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves)).hexdigest()
  checksum = sum(float(np.abs(leaf.astype(np.float64)).sum()) for leaf in leaves)
  with open(f"{out}.p{process_id}.json", "w") as f:
    json.dump({"losses": losses, "image_ids": ids, "checksum": checksum, "params_sha256": digest,
               "num_devices": jax.device_count()}, f)
  np.savez(f"{out}.p{process_id}.npz",
           **{f"{step}/{k}": v for step, batch in enumerate(batches) for k, v in batch.items()})


if __name__ == "__main__":
  main()
