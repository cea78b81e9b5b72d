r"""Crop quality of a model at the canvas sizes and shapes the Cropper can run it at.

  python -m experiments.fcdb.canvas_sizes [--model NAME_OR_PATH | --workdir DIR]
      [--sizes=320,256,224,192] [--aspect]

Runs the Cropper itself (decode, canvas, batched model, voting, non-maximum suppression) on the
FCDB validation slice train[85%:] and prints one JSON line per setting: the top-1 free crop's IoU
and BDE, the best of the top 5, and with --aspect the crop asked for with the expert crop's
aspect ratio (the aspect-conditioned protocol, through `Cropper.crop(aspect=...)`). Settings:
the S x S canvas the model was trained on, then canvas buckets (`Cropper(buckets=True)`: the
shorter side padded only to the next multiple of 32) at each size of --sizes. The seconds are
the whole pass, compilations included. Needs FCDB built (data/README.md).
"""

import json
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)
from procrop_jax import crop
from procrop_jax import metrics

_MODEL = flags.DEFINE_string("model", None, "A shipped model's name or folder (default: the "
                             "default shipped model).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run (its best checkpoint) instead.")
_SIZES = flags.DEFINE_list("sizes", ["320", "256", "224", "192"], "Canvas sizes with buckets.")
_ASPECT = flags.DEFINE_bool("aspect", False, "Also the aspect-conditioned protocol.")
_SPLIT = flags.DEFINE_string("split", "train[85%:]", "Never the test split while tuning.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")


def _score(cropper: crop.Cropper, examples, with_aspect: bool) -> dict[str, float]:
  free = metrics.IoUProtocol()
  told = metrics.IoUProtocol()
  images = [Image.fromarray(ex["image"]) for ex in examples]
  # Each photo asks for its own ratio: one photo per call, not one padded to a batch.
  one_by_one = crop.Cropper(cropper.predictor, canvas_size=cropper.canvas_size,
                            buckets=cropper.buckets, batch_size=1)
  start = time.perf_counter()
  crops = cropper.crop_many(images, top_k=5)
  for ex, image, found in zip(examples, images, crops):
    h, w = (int(v) for v in ex["image_size"])
    free.add(ex["image_id"], np.array([c.box for c in found], np.float64), ex["boxes_px"], (h, w))
    if with_aspect:
      gt = ex["boxes_px"][0]
      ratio = float(gt[2] - gt[0]) / max(float(gt[3] - gt[1]), 1e-9)
      found = one_by_one.crop(image, aspect=ratio, top_k=1)
      told.add(ex["image_id"], np.array([c.box for c in found], np.float64), ex["boxes_px"],
               (h, w))
  result = free.result()
  figures = {"iou": result["iou"], "bde": result["bde"], "iou_top5": result["iou_top5"]}
  if with_aspect:
    result = told.result()
    figures.update(aspect_iou=result["iou"], aspect_bde=result["bde"])
  figures["seconds"] = time.perf_counter() - start
  return {k: round(v, 4) for k, v in figures.items()}


def main(argv):
  del argv
  if _WORKDIR.value:
    base = crop.Cropper.from_workdir(_WORKDIR.value, best=True)
  else:
    base = crop.Cropper.pretrained(_MODEL.value)
  source = tfds.builder("fcdb", data_dir=_DATA_DIR.value).as_data_source(_SPLIT.value)
  examples = [source[i] for i in range(len(source))]
  settings = [("square", base.predictor.image_size, False)]
  settings += [("buckets", int(size), True) for size in _SIZES.value]
  for name, size, buckets in settings:
    cropper = crop.Cropper(base.predictor, canvas_size=size, buckets=buckets)
    shapes = {cropper.canvas_shape(ex["image"].shape[1], ex["image"].shape[0]) for ex in examples}
    print(json.dumps({"canvas": name, "size": size, "photos": len(examples),
                      "buckets": len(shapes), **_score(cropper, examples, _ASPECT.value)}),
          flush=True)


if __name__ == "__main__":
  app.run(main)
