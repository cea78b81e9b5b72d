r"""FCDB on several GPU hosts (e.g. 4 x 8 GPUs): one process per host, global batch 256.

SLURM (one task per host; jax.distributed reads the SLURM environment):

  srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 python -m procrop_jax.main --config=configs/fcdb_gpu_multihost.py --workdir=/shared/workdirs/fcdb_mh

Without a cluster manager, on host i of N (host 0 runs the coordinator):

  PROCROP_COORDINATOR=host0:12345 PROCROP_NUM_PROCESSES=4 PROCROP_PROCESS_ID=0 python -m procrop_jax.main --config=configs/fcdb_gpu_multihost.py --workdir=/shared/workdirs/fcdb_mh

Build the dataset and the reference database once before (README, "Scaling out"), on a
filesystem every host sees, and pass --config.retrieval.index_dir. Mesh (-1, 1): every GPU of
every host on the data axis (the batch must divide by their number: 256 does for 8 to 256
GPUs); parameters replicated. Same epochs as fcdb.py; learning rates scaled by sqrt(16) (a
starting point: no multi-host GPU run has been made yet).
"""

import ml_collections

from configs import fcdb

BATCH_SIZE = 256


def get_config() -> ml_collections.ConfigDict:
  config = fcdb.get_config()
  config.mesh.shape = (-1, 1)
  config.train.batch_size = BATCH_SIZE
  config.train.num_steps = 1_250  # fcdb.py: 20,000 steps of 16.
  config.optim.warmup_steps = 30
  scale = (BATCH_SIZE / 16) ** 0.5
  config.optim.learning_rate *= scale
  config.optim.backbone_learning_rate *= scale
  config.train.log_every = 25
  config.train.checkpoint_every = 100  # Preemptible clusters: lose at most 100 steps.
  config.train.eval_every = 125
  config.eval.batch_size = 256
  return config
