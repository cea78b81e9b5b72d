r"""GAICD: trained on 90% of its 1036 training images (the rest validates), evaluated with the proposal and ranking protocols.

Put the data in data/manual/gaicd (see data/README.md), then:

  python -m procrop_jax.main --config=configs/gaicd.py --workdir=workdirs/gaicd
  python -m procrop_jax.main --config=configs/gaicd.py --workdir=workdirs/gaicd --mode=eval

Training targets are the best-scored candidates (mean opinion scores as box scores, so the
soft-label rule applies); evaluation scores all ~90 annotated candidates per image (ranking:
Acc_K/N, wAcc, SRCC, PCC) and proposes crops (Acc5/Acc10, mAP).
"""

import ml_collections

from configs import benchmark


def get_config() -> ml_collections.ConfigDict:
  config = benchmark.get_config()
  config.data.dataset = "gaicd"
  config.data.builder_config = ""
  config.data.manual_dir = "data/manual/gaicd"
  config.data.train_split = "train[:90%]"
  config.data.eval_split = "train[90%:]"  # Model selection never looks at the test split.
  config.data.max_boxes = 16  # The 16 best-scored candidates are the training targets.
  config.eval.best_benchmark = "gaicd_val"
  config.eval.best_metric = "acc5"
  config.eval.benchmarks.gaicd_val = dict(split="train[90%:]", protocols="proposal,ranking",
                                          max_boxes=128)
  config.eval.benchmarks.gaicd_test = dict(
      dataset="gaicd", builder_config="", split="test", manual_dir="data/manual/gaicd",
      protocols="proposal,ranking", max_boxes=128)
  return config
