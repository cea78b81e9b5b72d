r"""A cross-validated recipe, run through the Cropper at the canvas sizes it can ship with.

  python -m experiments.fcdb.cv_canvas --cv_workdir=workdirs/cv/cad_pro \
      [--sizes=320,256,224,192,192:orientation] [--reference=workdirs/cv/reference]

`cross_validate` scores each fold's final checkpoint with the training pipeline's square
canvas (data.image_size). A shipped model answers through `Cropper` instead: the photo's longer
side resized to S, the shorter side padded only to the next bucket. This scores every fold's
final checkpoint that way, on the fold's own held-out photos (nothing is chosen on them), at
each setting of --sizes (SIZE, or SIZE:LAYOUT with a `Cropper` canvas layout; buckets by
default), and pools the folds. So the default canvas is chosen by the same protocol
as the recipe, and the speed a smaller canvas buys is paid for in figures measured on photos
that chose nothing.

Writes CV_WORKDIR/canvas_<S>[_<LAYOUT>]/per_image.json and summary.json, and prints one JSON line per
size: the pooled IoU / BDE with standard errors, the margin over a centred 90% crop, the paired
difference against the recipe's own square-canvas figure (cross_validate's per_image.json) and,
with --reference (another cross-validation workdir, run through this script at the same
sizes first), against that recipe at the same size. Needs FCDB built (data/README.md).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)
from experiments.fcdb import cross_validate
from procrop_jax import cropper as cropper_lib
from procrop_jax import metrics
from procrop_jax import workdir as workdir_lib

_CV_WORKDIR = flags.DEFINE_string("cv_workdir", None, "A cross_validate workdir (fold_<k>/).")
_SIZES = flags.DEFINE_list("sizes", ["320", "256", "224", "192"], "Canvas settings: SIZE or "
                           "SIZE:LAYOUT (buckets, orientation, square).")
_REFERENCE = flags.DEFINE_string("reference", "", "Another cross-validation workdir already "
                                 "scored by this script at the same sizes, to pair against.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_samples", 10_000, "Bootstrap resamples.")


def fold_workdirs(cv_workdir: str) -> list[tuple[int, str]]:
  """(fold, workdir) of every fold that has a checkpoint, in fold order."""
  found = []
  for name in sorted(os.listdir(cv_workdir)):
    if name.startswith("fold_") and workdir_lib.has_checkpoints(os.path.join(cv_workdir, name)):
      found.append((int(name.split("_")[1]), os.path.join(cv_workdir, name)))
  if not found:
    raise FileNotFoundError(f"--cv_workdir={cv_workdir}: no fold_<k>/ with a checkpoint; run "
                            "experiments.fcdb.cross_validate first")
  return sorted(found)


def parse_setting(text: str) -> tuple[int, str]:
  """"192" -> (192, "buckets"); "192:orientation" -> (192, "orientation")."""
  size, _, layout = text.strip().partition(":")
  layout = layout or "buckets"
  if not size.isdigit() or layout not in cropper_lib.CANVAS_LAYOUTS:
    raise ValueError(f"--sizes: {text!r} is not SIZE or SIZE:LAYOUT with a layout of "
                     f"{', '.join(cropper_lib.CANVAS_LAYOUTS)}")
  return int(size), layout


def setting_name(setting: tuple[int, str]) -> str:
  size, layout = setting
  return str(size) if layout == "buckets" else f"{size}_{layout}"


def score_fold(fold_workdir: str, sizes: Sequence[tuple[int, str]]
               ) -> tuple[dict[Any, dict[str, dict[str, float]]], dict[Any, float]]:
  """Per-photo values of the fold's final checkpoint on its held-out photos, at each size."""
  # The latest: the fixed final step. No faces: this measures the model (issue 31's keep
  # regions are measured by experiments/faces_benchmark.py).
  base = cropper_lib.Cropper.from_workdir(fold_workdir, faces=False)
  config = base.predictor.config
  steps = int(config.train.num_steps)
  if base.predictor.step != steps:
    raise RuntimeError(f"{fold_workdir}: its latest checkpoint is step {base.predictor.step}, "
                       f"not the schedule's final step {steps}; finish the fold first")
  source = tfds.builder(config.data.dataset, data_dir=config.data.data_dir).as_data_source(
      config.data.eval_split)
  examples = [source[i] for i in range(len(source))]
  images = [Image.fromarray(ex["image"]) for ex in examples]
  values, seconds = {}, {}
  for size in sizes:
    cropper = cropper_lib.Cropper(base.predictor, canvas_size=size[0], layout=size[1], faces=False)
    protocol = metrics.IoUProtocol(top_ks=(5,))
    start = time.perf_counter()
    for ex, found in zip(examples, cropper.crop_many(images, top_k=5)):
      protocol.add(ex["image_id"].decode(), np.array([c.box for c in found], np.float64),
                   ex["boxes_px"], [int(v) for v in ex["image_size"]])
    seconds[size] = time.perf_counter() - start
    values[size] = protocol.per_image
  return values, seconds


def score_canvases(cv_workdir: str, sizes: Sequence[tuple[int, str]], *, reference: str = "",
                   samples: int = 10_000) -> list[dict[str, Any]]:
  """Scores every fold at every size, writes CV_WORKDIR/canvas_<S>/, returns the summaries."""
  pooled: dict[tuple[int, str], dict[str, dict[str, float]]] = {s: {} for s in sizes}
  fold_of: dict[str, int] = {}
  seconds = {s: 0.0 for s in sizes}
  config = None
  for fold, fold_workdir in fold_workdirs(cv_workdir):
    values, fold_seconds = score_fold(fold_workdir, sizes)
    for size in sizes:
      pooled[size].update(values[size])
      fold_of.update({i: fold for i in values[size]})
      seconds[size] += fold_seconds[size]
    config = config or workdir_lib.read_config(fold_workdir)
  builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir)
  baselines = cross_validate.baseline_per_image(builder, config.data.train_split.split("[")[0])
  with open(os.path.join(cv_workdir, "per_image.json")) as f:
    square = json.load(f)
  summaries = []
  for size in sizes:
    summary: dict[str, Any] = cross_validate.summarize(pooled[size], baselines, fold_of, square,
                                                       samples=samples)
    # The pairing above is against the recipe's own square canvas; name it so.
    summary["square canvas iou"] = summary.pop("reference iou")
    summary["difference vs square canvas"] = summary.pop("difference")
    summary.pop("bde difference")
    if reference:
      with open(os.path.join(reference, f"canvas_{setting_name(size)}", "per_image.json")) as f:
        other = json.load(f)
      versus = cross_validate.summarize(pooled[size], baselines, fold_of, other, samples=samples)
      summary.update({k: versus[k] for k in ("reference iou", "difference", "bde difference")})
      summary["reference"] = reference
    summary.update(canvas=size[0], layout=size[1], seconds=seconds[size])
    out_dir = os.path.join(cv_workdir, f"canvas_{setting_name(size)}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "per_image.json"), "w") as f:
      json.dump(pooled[size], f)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    print(json.dumps(summary), flush=True)
    summaries.append(summary)
  return summaries


def main(argv: Sequence[str]) -> None:
  del argv
  score_canvases(_CV_WORKDIR.value, [parse_setting(s) for s in _SIZES.value],
                 reference=_REFERENCE.value, samples=_BOOTSTRAP.value)


if __name__ == "__main__":
  flags.mark_flag_as_required("cv_workdir")
  app.run(main)
