r"""Test-time options of a trained run, measured on the FCDB validation slice.

  python -m experiments.fcdb.inference_variants --workdir=workdirs/fcdb_cpu

Restores the run's best checkpoint (chosen on the validation slice during training) once and
prints one JSON line per inference setting (config.inference: flip averaging, box voting,
re-ranking by the given-box path) with IoU, BDE, best-of-top-5 IoU and seconds. Only the
config's best_benchmark (the validation slice) is scored.
"""

import itertools
import json
import time

from absl import app
from absl import flags

from procrop_jax import inference
from procrop_jax import modes

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.", required=True)
_VOTE_IOUS = flags.DEFINE_list("vote_ious", ["0", "0.6", "0.7", "0.8"], "Box-voting IoUs.")
_RESCORE = flags.DEFINE_bool("rescore", True, "Also try re-ranking by the given-box path.")
_BEST = flags.DEFINE_bool("best", True, "Best checkpoint (else the latest).")


def main(argv):
  del argv
  base = inference.Predictor.from_workdir(_WORKDIR.value, best=_BEST.value)
  config = base.config.copy_and_resolve_references()
  name = config.eval.best_benchmark
  config.eval.benchmarks = {name: config.eval.benchmarks[name]}
  rescores = (False, True) if _RESCORE.value else (False,)
  for flip, vote_iou, rescore in itertools.product((False, True), _VOTE_IOUS.value, rescores):
    variant = config.copy_and_resolve_references()
    variant.inference.flip, variant.inference.vote_iou = flip, float(vote_iou)
    variant.inference.rescore = rescore
    predictor = inference.Predictor(base.model(), variant, source=base.source, step=base.step)
    start = time.time()
    result = modes.run_benchmarks(predictor, None)[name]
    print(json.dumps({"workdir": _WORKDIR.value, "step": base.step, "flip": flip,
                      "vote_iou": float(vote_iou), "rescore": rescore,
                      **{k: round(result[k], 4) for k in ("iou", "bde", "iou_top5")},
                      "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
