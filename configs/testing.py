r"""A tiny variant of the default for tests and smoke runs: small images, a small head, few steps.

  python -m procrop_jax.main --config=configs/testing.py --workdir=/tmp/procrop_testing
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.image_size = 128
  config.data.max_boxes = 4
  config.cad.variants_per_photo = 2
  config.model.pretrained = False  # Random backbone: no weight conversion in unit tests.
  config.model.d_model = 32
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.model.dropout = 0.0  # Dropout's random bits roughly double the step's compile time.
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 2
  config.model.num_queries = 8
  config.model.num_references = 2
  config.retrieval.tokens_grid = 2
  config.retrieval.embedding_grid = 2
  config.retrieval.batch_size = 8
  config.train.batch_size = 8
  config.train.num_steps = 6
  config.train.log_every = 1
  config.train.checkpoint_every = 3
  config.train.eval_every = 0  # No periodic evaluation.
  config.optim.warmup_steps = 2
  config.optim.backbone_learning_rate = 0.0  # Frozen backbone: no backbone backward pass.
  config.eval.batch_size = 8
  config.crop.after_training = False
  return config
