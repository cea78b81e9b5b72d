r"""CAD pretraining for the FCDB CPU recipe: canvases out-painted around the training slice's
expert crops, the crop's frame as the pseudo-label (issue 12's experiment, experiments/cad/).

The professional compositions here are FCDB's expert crops of train[:85%] (never the validation
slice's), cut out once:

  python -m procrop_jax.retrieval.crop_regions --config=configs/fcdb_cpu.py \
      --split='train[:85%]' --out=data/manual/fcdb_crops

Pretraining generates the canvases on first use (data/manual/cad_fcdb), then trains the
configs/fcdb_cpu.py model on them, with its backbone frozen and cached, and reports FCDB's
validation slice (the weakly supervised figure: no FCDB box is trained on):

  python -m procrop_jax.main --config=configs/cad_fcdb_cpu.py --workdir=workdirs/cad_fcdb

and the recipe then fine-tunes from it:

  python -m procrop_jax.main --config=configs/fcdb_cpu.py --workdir=workdirs/cad_fcdb_ft \
      --config.train.init_from=workdirs/cad_fcdb
"""

import ml_collections

from configs import fcdb_cpu


def get_config() -> ml_collections.ConfigDict:
  config = fcdb_cpu.get_config()
  config.data.dataset = "procrop_cad"
  config.data.builder_config = "default"
  config.data.manual_dir = "data/manual/cad_fcdb"
  config.data.train_split = "train[:95%]"
  config.data.eval_split = "train[95%:]"  # Held-out canvases: the validation loss.
  config.cad.source = "data/manual/fcdb_crops"
  config.cad.variants_per_photo = 2
  # The expert crop covers 0.66 of an FCDB photo on average; the canvases keep that range.
  config.cad.min_area_fraction = 0.45
  config.cad.max_area_fraction = 0.85
  config.cad.max_side = 480  # Above the 320-px canvas the model sees; faster to generate.
  config.data.feature_cache.views = 4
  # CAD has no rated crop pairs: the given-box losses have nothing to train on.
  config.loss.rank_weight = 0.0
  config.loss.given_iou_weight = 0.0
  config.train.num_steps = 1000
  return config
