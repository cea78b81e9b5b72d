r"""The seam probe on CAD canvases made from scikit-image's photos, by each out-painter setting.

  python -m experiments.cad.seam_probe [--variants=12] [--max_side=256] [--seed=0] \
      [--source=FOLDER --photos=N] [--min_area_fraction=0.3 --max_area_fraction=0.8] [--mirror]

Prints one JSON line per out-painter: the probe's mean IoU with the pseudo-label on canvases of
photos it was not fitted on (leave one photo out), the trivial baseline's (the mean training box),
and the probe's advantage over it. "earlier" is the out-painter as it was before matched noise
(film grain of one strength), "default" is `ReflectBlurOutPainter()`, "mirror" is the reflection
with no blur at all (no blur trace, but mirrored objects in full). The probe and the generation
are procrop_jax/cad/seam_probe.py; the figures are in experiments/cad/RESULTS.md.

`--source` probes the canvases of a folder of photos instead (every k-th of its sorted photos,
`--photos` of them), e.g. the professional photos of configs/cad_pro_cpu.py with its area range;
`--mirror` adds the mirror-symmetry profiles (`seam_probe.mirror_profiles`): the trace a
reflected fill leaves at the frame, which the low-level statistics alone do not see.
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
_SOURCE = flags.DEFINE_string("source", "", "A folder of photos (default: scikit-image's).")
_PHOTOS = flags.DEFINE_integer("photos", 60, "With --source: how many of its photos.")
_MIN_AREA = flags.DEFINE_float("min_area_fraction", 0.3, "Smallest share of the canvas.")
_MAX_AREA = flags.DEFINE_float("max_area_fraction", 0.8, "Largest share of the canvas.")
_MIRROR = flags.DEFINE_bool("mirror", False, "Add the mirror-symmetry profiles.")

OUTPAINTERS = {
    "earlier": outpaint.ReflectBlurOutPainter(detail=False, grain=True),
    "default": outpaint.ReflectBlurOutPainter(),
    "mirror": outpaint.ReflectBlurOutPainter(blur_growth=(0.0, 0.0), max_blur=0.0, detail=False,
                                             colour_match=0.0),
}


def main(argv):
  del argv
  if _SOURCE.value:
    every = sorted(photos.list_photos(_SOURCE.value))
    paths = every[::max(1, len(every) // _PHOTOS.value)][:_PHOTOS.value]
  else:
    paths = photos.skimage_photo_paths()
  for name, outpainter in OUTPAINTERS.items():
    start = time.process_time()
    x, boxes, groups = seam_probe.generate_canvases(
        paths, variants=_VARIANTS.value, outpainter=outpainter, seed=_SEED.value,
        max_side=_MAX_SIDE.value, min_area_fraction=_MIN_AREA.value,
        max_area_fraction=_MAX_AREA.value, mirror=_MIRROR.value)
    result = seam_probe.evaluate(x, boxes, groups)
    print(json.dumps({
        "outpainter": name, "probe_iou": round(result.probe_iou, 4),
        "baseline_iou": round(result.baseline_iou, 4), "advantage": round(result.advantage, 4),
        "canvases": result.canvases, "photos": result.photos, "max_side": _MAX_SIDE.value,
        "source": _SOURCE.value or "skimage", "mirror": _MIRROR.value,
        "cpu_seconds": round(time.process_time() - start, 1)}), flush=True)


if __name__ == "__main__":
  app.run(main)
