r"""Evaluation on FLMS (500 images, about 10 expert crops each) with the IoU/BDE protocol.

FLMS is evaluation-only: point --workdir at a model trained with configs/fcdb.py or
configs/cad.py (the model fields must match that run's config). Put the data in
data/manual/flms (see data/README.md), then:

  python -m procrop_jax.main --config=configs/flms.py --workdir=workdirs/fcdb --mode=eval
"""

import ml_collections

from configs import fcdb


def get_config() -> ml_collections.ConfigDict:
  config = fcdb.get_config()
  config.eval.benchmarks = ml_collections.ConfigDict()
  config.eval.benchmarks.flms = dict(
      dataset="flms", builder_config="", split="test", manual_dir="data/manual/flms",
      protocols="iou", max_boxes=16)
  config.eval.best_benchmark = "flms"
  return config
