r"""Parameter counts and FLOPs per image of the ProCrop model; one JSON line per setting.

  python -m experiments.model_stats                        # configs/default.py at 320 px
  python -m experiments.model_stats --config=configs/testing.py --config.data.image_size=320

Settings: the config as given, the same with retrieval off (K = 0, the ablation), with the other
fusion, and scoring 90 given boxes instead of proposing. Nothing is computed or compiled: the
model is built abstractly (`nnx.eval_shape`) and FLOPs are XLA's cost analysis of the lowered
inference forward pass for one image (a multiply-add counts as 2 FLOPs; elementwise work, e.g.
normalisations and softmaxes, is included).
"""

import json

from absl import app
from ml_collections import config_flags
from flax import nnx

from procrop_jax.models import procrop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config.",
                                          lock_config=True)


def stats(config, name: str, *, num_query_boxes: int | None = None) -> dict:
  model = nnx.eval_shape(lambda: procrop.ProCrop.from_config(config, rngs=nnx.Rngs(0)))
  total = procrop.param_count(model)
  backbone = procrop.param_count(model.backbone)
  flops = procrop.flops_per_image(model, num_query_boxes=num_query_boxes)
  m = config.model
  return {
      "setting": name, "backbone": m.backbone, "image_size": config.data.image_size,
      "fusion": m.fusion if m.num_references else None, "num_references": m.num_references,
      "tokens_grid": config.retrieval.tokens_grid, "d_model": m.d_model,
      "num_queries": num_query_boxes or m.num_queries,
      "params_m": round(total / 1e6, 3), "backbone_params_m": round(backbone / 1e6, 3),
      "head_params_m": round((total - backbone) / 1e6, 3),
      "gflops_per_image": round(flops / 1e9, 3),
  }


def main(argv):
  del argv
  config = _CONFIG.value
  print(json.dumps(stats(config, "config")), flush=True)
  variants = config.copy_and_resolve_references()
  with variants.unlocked():
    variants.model.num_references = 0
  print(json.dumps(stats(variants, "no_retrieval")), flush=True)
  variants = config.copy_and_resolve_references()
  with variants.unlocked():
    other = {"concat_mlp": "cross_attention", "cross_attention": "concat_mlp"}
    variants.model.fusion = other[config.model.fusion]
  print(json.dumps(stats(variants, "other_fusion")), flush=True)
  print(json.dumps(stats(config, "score_given_boxes", num_query_boxes=90)), flush=True)


if __name__ == "__main__":
  app.run(main)
