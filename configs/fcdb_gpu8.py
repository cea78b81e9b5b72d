r"""FCDB on one host with 8 GPUs: the configs/fcdb.py recipe, data-parallel at a global batch 128.

  pip install -e '.[cuda,scann]'     # '.[cuda13,scann]' where the driver runs CUDA 13
  python -m procrop_jax.datasets.prepare --config=configs/fcdb_gpu8.py
  python -m procrop_jax.main --config=configs/fcdb_gpu8.py --workdir=workdirs/fcdb_gpu8 --mode=build_index
  python -m procrop_jax.main --config=configs/fcdb_gpu8.py --workdir=workdirs/fcdb_gpu8 --config.retrieval.index_dir=workdirs/fcdb_gpu8/reference_db

Mesh (8, 1): the batch is split over the 8 GPUs (16 photos each, fcdb.py's whole batch); the
parameters are replicated (the model is small). The same epochs as fcdb.py in 8x fewer steps;
learning rates scaled by sqrt(8) (a starting point: no 8-GPU run has been made yet). Re-running
the last command resumes from the latest checkpoint in the workdir.
"""

import ml_collections

from configs import fcdb

NUM_DEVICES = 8


def get_config() -> ml_collections.ConfigDict:
  config = fcdb.get_config()
  config.mesh.shape = (NUM_DEVICES, 1)
  config.train.batch_size = 16 * NUM_DEVICES
  config.train.num_steps = 2_500  # fcdb.py: 20,000 steps of 16.
  config.optim.warmup_steps = 60
  config.optim.learning_rate *= NUM_DEVICES ** 0.5
  config.optim.backbone_learning_rate *= NUM_DEVICES ** 0.5
  config.train.log_every = 25
  config.train.checkpoint_every = 125
  config.train.eval_every = 250
  config.eval.batch_size = 8 * NUM_DEVICES
  return config
