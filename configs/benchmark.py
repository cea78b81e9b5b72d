r"""Full-scale settings shared by the benchmark configs (fcdb, gaicd, cad), from the default.

Not run on its own: configs/fcdb.py, configs/gaicd.py and configs/cad.py start from it and add
their data and benchmarks. What it sets: 320 px, a fine-tuned backbone, K = 10 references from a
professional-photo database, and a GPU/TPU-sized schedule.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.cad.source = ""  # Real or released labels: nothing to generate.
  config.crop.after_training = False
  config.data.image_size = 320
  config.model.num_references = 10  # As in the paper.
  # The professional-photo database (e.g. AVA's or Unsplash's photos; see data/README.md).
  # Build it once with --mode=build_index and set retrieval.index_dir to skip re-embedding.
  config.retrieval.database_config = "default"
  config.retrieval.database_manual_dir = "data/manual/professional_photos"
  config.optim.backbone_learning_rate = 1e-5  # Fine-tune the backbone.
  config.optim.warmup_steps = 500
  config.train.num_steps = 20_000
  config.train.batch_size = 16
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.eval_every = 1000
  config.eval.benchmarks = ml_collections.ConfigDict()
  return config
