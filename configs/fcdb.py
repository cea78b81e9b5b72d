r"""Supervised training on FCDB (Flickr Cropping Dataset), evaluated with the IoU/BDE protocol.

Put the dataset in data/manual/fcdb (see data/README.md), then:

  python -m procrop_jax.main --config=configs/fcdb.py --workdir=workdirs/fcdb

Tuning uses a validation slice of the training split (train[85%:]); the official test split is
evaluated too when its annotation file is present, and is meant for the final, blind figure.
"""

import ml_collections

from configs import benchmark


def get_config() -> ml_collections.ConfigDict:
  config = benchmark.get_config()
  config.data.dataset = "fcdb"
  config.data.builder_config = ""
  config.data.manual_dir = "data/manual/fcdb"
  config.data.train_split = "train[:85%]"
  config.data.eval_split = "train[85%:]"
  config.data.max_boxes = 4  # FCDB has one expert crop per image.
  config.eval.best_benchmark = "fcdb_val"
  config.eval.best_metric = "iou"
  config.eval.benchmarks.fcdb_val = dict(
      dataset="fcdb", builder_config="", split="train[85%:]", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4)
  config.eval.benchmarks.fcdb_test = dict(
      dataset="fcdb", builder_config="", split="test", manual_dir="data/manual/fcdb",
      protocols="iou", max_boxes=4, optional=True)
  return config
