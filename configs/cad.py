r"""Weakly supervised training on CAD (out-painted professional photos), evaluated on FCDB/FLMS.

Either put ProCrop's released CAD set in data/manual/procrop_cad, or generate one from your own
professional photos with `--config.cad.source=/path/to/photos` (see data/README.md). Then:

  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.dataset = "procrop_cad"
  config.data.builder_config = "default"
  config.data.manual_dir = "data/manual/procrop_cad"
  config.data.train_split = "train"
  config.cad.source = ""  # Set to a folder of professional photos to generate CAD from them.
  config.model.num_references = 10  # As in the paper.
  # The professional-photo database (e.g. AVA's or Unsplash's photos; see data/README.md).
  # Build it once with --mode=build_index and set retrieval.index_dir to skip re-embedding.
  config.retrieval.database_config = "default"
  config.retrieval.database_manual_dir = "data/manual/professional_photos"
  config.data.image_size = 320
  config.optim.backbone_learning_rate = 1e-5  # Fine-tune the backbone.
  config.train.num_steps = 50_000
  config.train.batch_size = 32
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.train.eval_every = 2000
  config.optim.warmup_steps = 1000
  config.eval.best_benchmark = "flms"
  config.eval.best_metric = "iou"
  config.eval.benchmarks = ml_collections.ConfigDict()
  config.eval.benchmarks.fcdb_test = dict(
      dataset="fcdb", builder_config="", split="test", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4, optional=True)
  config.eval.benchmarks.flms = dict(
      dataset="flms", builder_config="", split="test", manual_dir="data/manual/flms",
      protocols="iou", max_boxes=16, optional=True)
  return config
