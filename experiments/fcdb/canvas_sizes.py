r"""Crop quality of a model at the canvas sizes and shapes the Cropper can run it at.

  python -m experiments.fcdb.canvas_sizes [--model NAME_OR_PATH | --workdir DIR]
      [--sizes=320,256,224,192] [--layout=buckets|orientation|square] [--aspect [--candidates=fast,dense,1/0.8:3:1]] [--nosquare]

Runs the Cropper itself (decode, canvas, batched model, voting, non-maximum suppression) on the
FCDB validation slice train[85%:] and prints one JSON line per setting: the top-1 free crop's IoU
and BDE, the best of the top 5, and with --aspect the crop asked for with the expert crop's
aspect ratio (the aspect-conditioned protocol, through `Cropper.crop(aspect=...)`), once per
candidate set of --candidates (`aspect.FAST`, `aspect.DENSE`, or
SCALES:POSITIONS:REFINE_TOP[:PROPOSALS[:MOVES]] with the grid's scales separated by "/" and
MOVES the refinement's neighbourhood, cube or square), with the boxes
each scores per request. Settings:
the S x S canvas the model was trained on, then the --layout canvases (`Cropper(layout=...)`:
buckets pad the shorter side only to the next bucket) at each size of --sizes. The seconds are
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
from procrop_jax import aspect
from procrop_jax import cropper as cropper_lib
from procrop_jax import metrics

_MODEL = flags.DEFINE_string("model", None, "A shipped model's name or folder (default: the "
                             "default shipped model).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run (its best checkpoint) instead.")
_SIZES = flags.DEFINE_list("sizes", ["320", "256", "224", "192"], "Canvas sizes with buckets.")
_LAYOUT = flags.DEFINE_enum("layout", "buckets", list(cropper_lib.CANVAS_LAYOUTS),
                            "The Cropper's canvas layout at --sizes.")
_ASPECT = flags.DEFINE_bool("aspect", False, "Also the aspect-conditioned protocol.")
_CANDIDATES = flags.DEFINE_list("candidates", ["fast"], "Fixed-aspect candidate sets: fast, "
                                "dense, or SCALES:POSITIONS:REFINE_TOP[:PROPOSALS[:MOVES]], "
                                "e.g. 1/0.8:3:1:10:square.")
_SQUARE = flags.DEFINE_bool("square", True, "Also the S x S canvas the model was trained on.")
_SPLIT = flags.DEFINE_string("split", "train[85%:]", "Never the test split while tuning.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")


MOVES = {"cube": aspect.CUBE_MOVES, "square": aspect.SQUARE_MOVES}


def parse_candidates(text: str) -> aspect.Candidates:
  """fast | dense | SCALES:POSITIONS:REFINE_TOP[:PROPOSALS[:MOVES]] (scales separated by "/";
  PROPOSALS "all" or a count; MOVES cube or square)."""
  if text in ("fast", "dense"):
    return aspect.FAST if text == "fast" else aspect.DENSE
  scales, positions, refine_top, *rest = text.split(":")
  proposals = rest[0] if rest else "all"
  moves = MOVES[rest[1]] if len(rest) > 1 else aspect.CUBE_MOVES
  return aspect.Candidates(tuple(float(v) for v in scales.split("/")), int(positions),
                           int(refine_top), None if proposals == "all" else int(proposals),
                           moves)


def _free(cropper: cropper_lib.Cropper, examples, images) -> dict[str, float]:
  free = metrics.IoUProtocol()
  start = time.perf_counter()
  for ex, found in zip(examples, cropper.crop_many(images, top_k=5)):
    h, w = (int(v) for v in ex["image_size"])
    free.add(ex["image_id"], np.array([c.box for c in found], np.float64), ex["boxes_px"], (h, w))
  result = free.result()
  return {"iou": result["iou"], "bde": result["bde"], "iou_top5": result["iou_top5"],
          "seconds": time.perf_counter() - start}


def _told(cropper: cropper_lib.Cropper, examples, images, candidates: aspect.Candidates
          ) -> dict[str, float]:
  told = metrics.IoUProtocol()
  # Each photo asks for its own ratio: one photo per call, not one padded to a batch.
  one_by_one = cropper_lib.Cropper(cropper.predictor, canvas_size=cropper.canvas_size,
                            layout=cropper.layout, batch_size=1, aspect_candidates=candidates,
                            faces=False)
  start = time.perf_counter()
  for ex, image in zip(examples, images):
    h, w = (int(v) for v in ex["image_size"])
    gt = ex["boxes_px"][0]
    ratio = float(gt[2] - gt[0]) / max(float(gt[3] - gt[1]), 1e-9)
    found = one_by_one.crop(image, aspect=ratio, top_k=1)
    told.add(ex["image_id"], np.array([c.box for c in found], np.float64), ex["boxes_px"],
             (h, w))
  result = told.result()
  num_queries = cropper.predictor.config.model.num_queries
  return {"aspect_iou": result["iou"], "aspect_bde": result["bde"],
          "boxes_scored": candidates.first_pass_count(num_queries) + candidates.refine_count,
          "proposals_snapped": candidates.snapped_count(num_queries),
          "aspect_seconds": time.perf_counter() - start}


def main(argv):
  del argv
  if _WORKDIR.value:
    base = cropper_lib.Cropper.from_workdir(_WORKDIR.value, best=True, faces=False)
  else:
    base = cropper_lib.Cropper.pretrained(_MODEL.value, faces=False)
  source = tfds.builder("fcdb", data_dir=_DATA_DIR.value).as_data_source(_SPLIT.value)
  examples = [source[i] for i in range(len(source))]
  images = [Image.fromarray(ex["image"]) for ex in examples]
  settings = [("square", base.predictor.image_size)] if _SQUARE.value else []
  settings += [(_LAYOUT.value, int(size)) for size in _SIZES.value]
  for name, size in settings:
    # No faces: this measures the model (faces: experiments/faces_benchmark.py).
    cropper = cropper_lib.Cropper(base.predictor, canvas_size=size, layout=name, faces=False)
    shapes = {cropper.canvas_shape(ex["image"].shape[1], ex["image"].shape[0]) for ex in examples}
    line = {"canvas": name, "size": size, "photos": len(examples), "buckets": len(shapes),
            **_free(cropper, examples, images)}
    # One line per candidate set with --aspect (the free figures repeated), else one line.
    for text in _CANDIDATES.value if _ASPECT.value else [None]:
      if text is not None:
        line = {**line, "candidates": text,
                **_told(cropper, examples, images, parse_candidates(text))}
      print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                        for k, v in line.items()}), flush=True)


if __name__ == "__main__":
  app.run(main)
