r"""Supervised training on FCDB (Flickr Cropping Dataset), evaluated with the IoU/BDE protocol.

Put the dataset in data/manual/fcdb (see data/README.md), then:

  python -m procrop_jax.main --config=configs/fcdb.py --workdir=workdirs/fcdb

Tuning uses a validation slice of the training split (train[85%:]); the official test split is
evaluated too when its annotation file is present, and is meant for the final, blind figure.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.dataset = "fcdb"
  config.data.builder_config = ""
  config.data.manual_dir = "data/manual/fcdb"
  config.data.train_split = "train[:85%]"
  config.data.eval_split = "train[85%:]"
  config.data.max_boxes = 4  # FCDB has one expert crop per image.
  config.cad.source = ""  # Real labels: nothing to generate.
  config.model.num_references = 10  # As in the paper.
  # The professional-photo database (e.g. AVA's or Unsplash's photos; see data/README.md).
  # Build it once with --mode=build_index and set retrieval.index_dir to skip re-embedding.
  config.retrieval.database_config = "default"
  config.retrieval.database_manual_dir = "data/manual/professional_photos"
  config.data.image_size = 320
  config.optim.backbone_learning_rate = 1e-5  # Fine-tune the backbone.
  config.train.num_steps = 20_000
  config.train.batch_size = 16
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.eval_every = 1000
  config.optim.warmup_steps = 500
  config.eval.best_benchmark = "fcdb_val"
  config.eval.best_metric = "iou"
  config.eval.benchmarks = ml_collections.ConfigDict()
  config.eval.benchmarks.fcdb_val = dict(
      dataset="fcdb", builder_config="", split="train[85%:]", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4)
  config.eval.benchmarks.fcdb_test = dict(
      dataset="fcdb", builder_config="", split="test", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4, optional=True)
  return config
