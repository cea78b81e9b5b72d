r"""CAD pretraining on professional photographs (the paper's weak supervision) for the FCDB CPU
recipe: each photo is out-painted to two wider canvases, its frame the pseudo-label.

The photos: any folder of well-composed photographs, linked or copied to
data/manual/professional (the development set is ../shared/data/professional/images, 1,286
photos; see data/README.md). None of FCDB's photos is used, so a model pretrained here can start
every cross-validation fold (experiments/fcdb/cross_validate.py) without leaking the photos a
fold is scored on. Pretraining runs the fixed schedule to its end and keeps its final step (no
benchmark picks a checkpoint), and the recipe fine-tunes from it:

  python -m procrop_jax.main --config=configs/cad_pro_cpu.py --workdir=workdirs/cad_pro
  python -m experiments.fcdb.cross_validate --config=configs/fcdb_cpu.py \
      --workdir=workdirs/cv/cad_pro --config.train.init_from=workdirs/cad_pro
"""

import ml_collections

from configs import cad_fcdb_cpu


def get_config() -> ml_collections.ConfigDict:
  config = cad_fcdb_cpu.get_config()
  config.data.manual_dir = "data/manual/cad_pro"
  config.cad.source = "data/manual/professional"
  # Two cached views of 2 x 1,286 canvases: the cache takes 4 min on 2 CPU cores.
  config.data.feature_cache.views = 2
  # No FCDB benchmark: choosing a checkpoint on FCDB photos would leak into the folds that
  # score them. `train.init_from` then takes the final step.
  config.eval.benchmarks = {}
  config.eval.best_benchmark = ""
  config.train.eval_every = 0
  config.train.checkpoint_every = 500
  return config
