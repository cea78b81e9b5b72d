r"""Weakly supervised training on CAD (out-painted professional photos), evaluated on FCDB/FLMS.

Either put ProCrop's released CAD set in data/manual/procrop_cad, or generate one from your own
professional photos with `--config.cad.source=/path/to/photos` (see data/README.md). Then:

  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad

In a multi-process run each process generates its slice of the photos and process 0 builds the
set, so data.manual_dir and data.data_dir must be on storage shared by all hosts.

Refinement rounds (procrop_jax/refine_cad.py) alternate with training: the trained run adds its
best crops to the training canvases' annotations, and a second run, started from the first,
trains on them (its dataset is rebuilt because the annotations changed):

  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad --mode=refine_cad
  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad_r1 \
      --config.train.init_from=workdirs/cad
"""

import ml_collections

from configs import benchmark


def get_config() -> ml_collections.ConfigDict:
  config = benchmark.get_config()
  config.data.dataset = "procrop_cad"
  config.data.builder_config = "default"
  config.data.manual_dir = "data/manual/procrop_cad"
  config.data.train_split = "train[:95%]"
  config.data.eval_split = "train[95%:]"  # Held-out photos: model selection.
  config.cad.source = ""  # Set to a folder of professional photos to generate CAD from them.
  config.train.num_steps = 50_000
  config.train.batch_size = 32
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.train.eval_every = 2000
  config.optim.warmup_steps = 1000
  config.eval.best_benchmark = "cad_val"
  config.eval.best_metric = "iou"
  config.eval.benchmarks.cad_val = dict(split="train[95%:]", protocols="iou")
  config.eval.benchmarks.fcdb_test = dict(
      dataset="fcdb", builder_config="", split="test", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4, optional=True)
  config.eval.benchmarks.flms = dict(
      dataset="flms", builder_config="", split="test", manual_dir="data/manual/flms",
      protocols="iou", max_boxes=16, optional=True)
  return config
