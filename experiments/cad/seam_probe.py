r"""The seam probe on CAD canvases made from scikit-image's photos, by each out-painter setting.

  python -m experiments.cad.seam_probe [--variants=12] [--max_side=256] [--seed=0]

Prints one JSON line per out-painter: the probe's mean IoU with the pseudo-label on canvases of
photos it was not fitted on (leave one photo out), the trivial baseline's (the mean training box),
and the probe's advantage over it. "earlier" is the out-painter as it was before matched noise
(film grain of one strength), "default" is `ReflectBlurOutPainter()`, "mirror" is the reflection
with no blur at all (no blur trace, but mirrored objects in full). The probe and the generation
are procrop_jax/cad/seam_probe.py; the figures are in experiments/cad/RESULTS.md.
"""

import json
import time

from absl import app
from absl import flags

from procrop_jax import photos
from procrop_jax.cad import outpaint
from procrop_jax.cad import seam_probe

_VARIANTS = flags.DEFINE_integer("variants", 12, "Canvases per photo.")
_MAX_SIDE = flags.DEFINE_integer("max_side", 256, "Photos are downscaled to this longer side.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the canvases.")

OUTPAINTERS = {
    "earlier": outpaint.ReflectBlurOutPainter(detail=False, grain=True),
    "default": outpaint.ReflectBlurOutPainter(),
    "mirror": outpaint.ReflectBlurOutPainter(blur_growth=(0.0, 0.0), max_blur=0.0, detail=False,
                                             colour_match=0.0),
}


def main(argv):
  del argv
  paths = photos.skimage_photo_paths()
  for name, outpainter in OUTPAINTERS.items():
    start = time.process_time()
    x, boxes, groups = seam_probe.generate_canvases(
        paths, variants=_VARIANTS.value, outpainter=outpainter, seed=_SEED.value,
        max_side=_MAX_SIDE.value)
    result = seam_probe.evaluate(x, boxes, groups)
    print(json.dumps({
        "outpainter": name, "probe_iou": round(result.probe_iou, 4),
        "baseline_iou": round(result.baseline_iou, 4), "advantage": round(result.advantage, 4),
        "canvases": result.canvases, "photos": result.photos, "max_side": _MAX_SIDE.value,
        "cpu_seconds": round(time.process_time() - start, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
