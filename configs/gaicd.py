r"""GAICD: trained on its 1036 training images, evaluated with the proposal and ranking protocols.

Put the data in data/manual/gaicd (see data/README.md), then:

  python -m procrop_jax.main --config=configs/gaicd.py --workdir=workdirs/gaicd
  python -m procrop_jax.main --config=configs/gaicd.py --workdir=workdirs/gaicd --mode=eval

Training targets are the best-scored candidates (mean opinion scores as box scores, so the
soft-label rule applies); evaluation scores all ~90 annotated candidates per image (ranking:
Acc_K/N, wAcc, SRCC, PCC) and proposes crops (Acc5/Acc10, mAP).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.dataset = "gaicd"
  config.data.builder_config = ""
  config.data.manual_dir = "data/manual/gaicd"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.max_boxes = 16  # The 16 best-scored candidates are the training targets.
  config.cad.source = ""
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
  config.eval.best_benchmark = "gaicd_test"
  config.eval.best_metric = "acc5"
  config.eval.benchmarks = ml_collections.ConfigDict()
  config.eval.benchmarks.gaicd_test = dict(
      dataset="gaicd", builder_config="", split="test", manual_dir="data/manual/gaicd",
      protocols="proposal,ranking", max_boxes=128)
  return config
