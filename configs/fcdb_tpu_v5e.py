r"""FCDB on a TPU v5e pod slice (v5litepod-16: 4 hosts x 4 chips), global batch 256.

Every worker runs the same command (the TPU environment is detected, no coordinator flags):

  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd procrop_jax && pip install -e '.[tpu,scann]'"
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd procrop_jax && python -m procrop_jax.main --config=configs/fcdb_tpu_v5e.py --workdir=/mnt/shared/workdirs/fcdb_v5e"

The workdir, data and reference database must be on a filesystem mounted at the same path on
every worker (a Filestore NFS share; see the README, "Scaling out"). Mesh
(16, 1): the batch is split over the 16 chips (16 photos each), parameters replicated; for
another slice set --config.mesh.shape and keep the batch a multiple of its chips. Same epochs
as fcdb.py; learning rates scaled by sqrt(16) (a starting point: no TPU run has been made yet).
"""

import ml_collections

from configs import fcdb

NUM_CHIPS = 16


def get_config() -> ml_collections.ConfigDict:
  config = fcdb.get_config()
  config.mesh.shape = (NUM_CHIPS, 1)
  config.train.batch_size = 16 * NUM_CHIPS
  config.train.num_steps = 1_250  # fcdb.py: 20,000 steps of 16.
  config.optim.warmup_steps = 30
  config.optim.learning_rate *= NUM_CHIPS ** 0.5
  config.optim.backbone_learning_rate *= NUM_CHIPS ** 0.5
  config.train.log_every = 25
  config.train.checkpoint_every = 100  # Spot / preemptible slices: lose at most 100 steps.
  config.train.eval_every = 125
  config.eval.batch_size = 8 * NUM_CHIPS
  return config
