r"""The score-dependent protocols of a trained run on the FCDB validation slice.

  python -m experiments.fcdb.score_protocols --workdir=workdirs/fcdb_cpu [--vote_iou=0.8] [--flip]

Restores the run's best checkpoint (chosen on the validation slice during training) and prints
one JSON line with the free crop's IoU / BDE / best-of-top-5 IoU, the pairwise accuracy of the
given-box scores on the slice's rated crop pairs (all pairs with a winner, and those won by 4 or
5 votes of 5, next to "prefer the larger crop"), and the aspect-conditioned IoU / BDE: the crop
asked for with the expert crop's aspect ratio, chosen as the Cropper chooses it (aspect.py).
"""

import json
import time

from absl import app
from absl import flags

from procrop_jax import inference
from procrop_jax import modes

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.", required=True)
_BEST = flags.DEFINE_bool("best", True, "Best checkpoint (else the latest).")
_VOTE_IOU = flags.DEFINE_float("vote_iou", None, "Box voting IoU (default: the run's own).")
_PROTOCOLS = flags.DEFINE_string("protocols", "iou,pairs,aspect", "Protocols to run.")
_FLIP = flags.DEFINE_bool("flip", None, "Test-time flip averaging (default: the run's own).")


def main(argv):
  del argv
  base = inference.Predictor.from_workdir(_WORKDIR.value, best=_BEST.value)
  config = base.config.copy_and_resolve_references()
  name = config.eval.best_benchmark
  config.eval.benchmarks = {name: config.eval.benchmarks[name]}
  config.eval.benchmarks[name]["protocols"] = _PROTOCOLS.value
  if _VOTE_IOU.value is not None:
    config.inference.vote_iou = _VOTE_IOU.value
  if _FLIP.value is not None:
    config.inference.flip = _FLIP.value
  predictor = inference.Predictor(base.model(), config, source=base.source, step=base.step)
  start = time.time()
  result = modes.run_benchmarks(predictor, None)[name]
  keys = ("iou", "bde", "iou_top5", "pair_acc", "pair_acc_strong", "larger_acc", "num_pairs",
          "aspect_iou", "aspect_bde", "aspect_iou_top5")
  print(json.dumps({"workdir": _WORKDIR.value, "step": base.step,
                    "vote_iou": config.inference.vote_iou, "flip": config.inference.flip,
                    **{k: round(result[k], 4) for k in keys if k in result},
                    "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
