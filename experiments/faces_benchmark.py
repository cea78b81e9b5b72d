r"""Faces kept whole (issue 31): cut rates, free-crop IoU and photos/s with faces on and off.

  python -m experiments.faces_benchmark --cv-workdir workdirs/cv/cad_pro_1200 [--throughput 48]
  python -m experiments.faces_benchmark [--scan 300] [--start 0.85] [--throughput 48]
      [--face-side 384]

With `--cv-workdir` (the protocol): every FCDB training photo, cropped by the cross-validation
fold's model that did not train on it (experiments/fcdb/cross_validate.py). Without: FCDB
training photos (../shared/data/fcdb, never the test split) from `--start` (a fraction of
cropping_training_set.json's order) for up to `--scan` photos, cropped by the shipped model,
which trained on all of them (a quick look, not a result). Either way it keeps the photos where
the detector (procrop_jax/faces.py) finds a face and takes the top-1 crop, free and 1:1, 16:9,
4:5, with faces on and off (the same photos, the same pass otherwise).
A crop cuts a face when it holds more than 5% and less than 95% of the face's box. Prints JSON
lines:

  {"what": "detector", ...}   photos scanned, with a face, faces found, seconds per photo
  {"what": "cut", "aspect": A, "faces": "on"|"off", ...}
      cut_rate_all: photos whose top-1 crop cuts a face, over every photo with a face;
      cut_rate_keepable: the same over photos where some box of that shape holds every face;
      expert_cut_rate (free only): the expert's own crop, for the issue's "+ 2 points" target
  {"what": "free_iou", ...}   free top-1 IoU with the expert's crop, faces on minus off, paired
                              bootstrap interval over the photos with a face
  {"what": "pairs", ...}      FCDB's rated crop pairs of those photos where one crop cuts a face
                              and the other keeps it whole: how often the raters and the
                              model's given-box score (`Cropper.score`) prefer the one that keeps
                              it (a check of "scores that know it"; the score is unchanged)
  {"what": "throughput", ...} steady `procrop crop` photos/s (free crops, --top-k 1, after a
                              pass that compiled; the shipped model) on the first
                              `--throughput` photos of the --start slice (0: skip),
                              faces on and off, the median of 2 rounds each, alternated
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from experiments.fcdb import cv_canvas
from experiments.fcdb.cross_validate import paired_interval
from procrop_jax import box_geometry
from procrop_jax import crop as crop_lib
from procrop_jax import cropper as cropper_lib
from procrop_jax import faces
from procrop_jax import keep
from procrop_jax import photos
from procrop_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FCDB = REPO.parent / "shared" / "data" / "fcdb"
TARGETS = (cropper_lib.FREE, cropper_lib.parse_aspect("1:1"), cropper_lib.parse_aspect("16:9"),
           cropper_lib.parse_aspect("4:5"))


def fcdb_entries(start: float, count: int) -> list[tuple[pathlib.Path, np.ndarray, list]]:
  """(photo path, expert crop [x1, y1, x2, y2], rated pairs) of FCDB training entries from
  `start`."""
  entries = json.loads((FCDB / "cropping_training_set.json").read_text())
  pairs = {e["url"]: e["crops"] for e in
           json.loads((FCDB / "ranking_annotation_train.json").read_text())}
  out = []
  for entry in entries[int(start * len(entries)):]:
    path = FCDB / "data" / entry["url"].rsplit("/", 1)[-1]
    if path.exists() and path.stat().st_size != 5946:  # Flickr's "no longer available".
      out.append((path, box_geometry.xywh_to_xyxy(np.array(entry["crop"], np.float64)),
                  pairs.get(entry["url"], [])))
    if len(out) == count:
      break
  return out


def _top1(cropper, prepared, faces_on: bool) -> list[dict[str, tuple[int, ...]]]:
  batch = [p if faces_on else dataclasses.replace(p, faces=np.zeros((0, 4))) for p in prepared]
  crops = cropper.crop_batch(batch, TARGETS, top_k=1)
  return [{t.label: c[t.label][0].box for t in TARGETS} for c in crops]


def _throughput(cropper, paths: list[pathlib.Path], out: pathlib.Path) -> float:
  inputs, _ = photos.list_inputs([str(p) for p in paths])
  summary = crop_lib.run(inputs, cropper, out_dir=out, top_k=1, progress=False)
  return summary.photos_per_second


@dataclasses.dataclass
class Found:
  """The photos with a face, their top-1 boxes faces on and off, and the rated-pair counts."""
  prepared: list = dataclasses.field(default_factory=list)
  experts: list = dataclasses.field(default_factory=list)
  top: dict = dataclasses.field(default_factory=lambda: {"on": [], "off": []})
  pairs: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.int64))
  scanned: int = 0
  seconds: float = 0.0


def measure(on: cropper_lib.Cropper, items, found: Found) -> None:
  """Adds one model's photos (image, expert box [4], rated pairs) to `found`: faces, top-1
  crops of every target with faces on and off, and the rated pairs where one crop cuts a face."""
  off = cropper_lib.Cropper(on.predictor, batch_size=8, faces=False)
  start = time.perf_counter()
  prepared, experts, rated, images = [], [], [], []
  for image, expert, pairs in items:
    found.scanned += 1
    p = on.prepare(image)
    if len(p.faces):
      prepared.append(p)
      experts.append(np.asarray(expert, np.float64).reshape(4))
      rated.append(pairs)
      images.append(image)
  found.seconds += time.perf_counter() - start
  # Batches of one canvas shape, as the cropper forms them.
  by_shape: dict[tuple[int, ...], list[int]] = {}
  for i, p in enumerate(prepared):
    by_shape.setdefault(p.canvas.shape, []).append(i)
  top = {"on": [None] * len(prepared), "off": [None] * len(prepared)}
  for indices in by_shape.values():
    for s in range(0, len(indices), 8):
      chunk = indices[s:s + 8]
      for name, flag in (("on", True), ("off", False)):
        for i, boxes in zip(chunk, _top1(on, [prepared[i] for i in chunk], flag)):
          top[name][i] = boxes
  for image, p, pairs in zip(images, prepared, rated):
    for pair in pairs:
      boxes = [box_geometry.xywh_to_xyxy(np.array(pair[k], np.float64)) for k in ("crop_0",
                                                                                 "crop_1")]
      cuts = [keep.cut(b, p.faces).any() for b in boxes]
      votes = (pair["vote_for_0"], pair["vote_for_1"])
      if cuts[0] == cuts[1] or votes[0] == votes[1]:
        continue
      whole = cuts.index(False)
      scores = off.score(image, boxes)
      found.pairs += [1, votes[whole] > votes[1 - whole], scores[whole] > scores[1 - whole]]
  found.prepared += prepared
  found.experts += experts
  for name in top:
    found.top[name] += top[name]


def fold_items(fold_workdir: str, rated: dict[str, list]):
  """(image, expert box, rated pairs) of a cross-validation fold's held-out photos, as the
  fold's evaluation reads them (its config's eval_split)."""
  config = workdir_lib.read_config(fold_workdir)
  source = tfds.builder(config.data.dataset, data_dir=config.data.data_dir).as_data_source(
      config.data.eval_split)
  for i in range(len(source)):
    ex = source[i]
    name = ex["image_id"].decode()
    yield (Image.fromarray(ex["image"]), np.asarray(ex["boxes_px"]).reshape(-1, 4)[0],
           rated.get(name, []))


def report_quality(found: Found, note: str) -> None:
  """Prints the cut, free_iou and pairs lines."""
  prepared, experts, top = found.prepared, found.experts, found.top
  for t in TARGETS:
    keepable = np.array([keep.fits(keep.as_regions(p.faces, p.size), t.ratio, p.size)
                         for p in prepared])
    for name in ("on", "off"):
      cuts = np.array([keep.cut(top[name][i][t.label], p.faces).any()
                       for i, p in enumerate(prepared)])
      line = {"what": "cut", "aspect": t.label, "faces": name, "photos": len(prepared),
              "keepable": int(keepable.sum()),
              "cut_rate_all": round(float(cuts.mean()), 4),
              "cut_rate_keepable": round(float(cuts[keepable].mean()), 4)
              if keepable.any() else None}
      if t.ratio is None:
        line["expert_cut_rate"] = round(float(np.mean(
            [keep.cut(e, p.faces).any() for e, p in zip(experts, prepared)])), 4)
      print(json.dumps(line))

  iou = {name: np.array([box_geometry.pairwise_box_iou(np.array(top[name][i]["free"], float),
                                                       experts[i])[0, 0]
                         for i in range(len(prepared))]) for name in ("on", "off")}
  print(json.dumps({"what": "free_iou", "on": round(float(iou["on"].mean()), 4),
                    "off": round(float(iou["off"].mean()), 4),
                    "on_minus_off": {k: round(v, 4) if isinstance(v, float) else v
                                     for k, v in paired_interval(iou["on"] - iou["off"]).items()},
                    "note": note}))
  count, raters, model = (int(v) for v in found.pairs)
  print(json.dumps({"what": "pairs", "pairs": count,
                    "raters_prefer_whole_face": round(raters / max(count, 1), 4),
                    "model_prefers_whole_face": round(model / max(count, 1), 4)}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--scan", type=int, default=300,
                      help="photos to scan (1 with --throughput: the speed alone)")
  parser.add_argument("--start", type=float, default=0.85)
  parser.add_argument("--cv-workdir", default="",
                      help="a cross_validate workdir: each fold's model on its own held-out "
                      "photos (all of FCDB's training photos; --scan and --start are ignored)")
  parser.add_argument("--folds", default="",
                      help="with --cv-workdir: only these folds, e.g. 0,1 (default: all)")
  parser.add_argument("--margins", default="",
                      help="TOP,BOTTOM,SIDES: the faces' margins as fractions of their size "
                      "(default: faces.py's)")
  parser.add_argument("--throughput", type=int, default=48)
  parser.add_argument("--face-side", type=int, default=faces.DETECT_SIDE,
                      help="the long side of the canvas the face detector sees a photo on")
  args = parser.parse_args()
  if not FCDB.exists():
    raise SystemExit(f"{FCDB} is absent: this benchmark needs FCDB's training photos")

  if args.margins:
    faces.MARGIN_TOP, faces.MARGIN_BOTTOM, faces.MARGIN_SIDES = (
        float(v) for v in args.margins.split(","))
  margins = [faces.MARGIN_TOP, faces.MARGIN_BOTTOM, faces.MARGIN_SIDES]
  detector = faces.FaceDetector(detect_side=args.face_side)
  found = Found()
  if args.cv_workdir:
    rated = {e["url"].rsplit("/", 1)[-1]: e["crops"] for e in
             json.loads((FCDB / "ranking_annotation_train.json").read_text())}
    only = {int(k) for k in args.folds.split(",") if k}
    for fold, fold_workdir in cv_canvas.fold_workdirs(args.cv_workdir):
      if only and fold not in only:
        continue
      fold_cropper = cropper_lib.Cropper.from_workdir(fold_workdir, batch_size=8,
                                                      faces=detector)
      measure(fold_cropper, fold_items(fold_workdir, rated), found)
      print(f"fold {fold}: {found.scanned} photos scanned, {len(found.prepared)} with a face",
            file=sys.stderr, flush=True)
    note = (f"each fold's model of {args.cv_workdir} on its held-out photos"
            + (f" (folds {args.folds})" if args.folds else ""))
  else:
    entries = fcdb_entries(args.start, args.scan)
    measure(cropper_lib.Cropper.pretrained(batch_size=8, faces=detector),
            ((photos.read_photo(str(path)).image, expert, pairs)
             for path, expert, pairs in entries), found)
    note = "shipped model, FCDB train slice from --start"
  prepared = found.prepared
  print(json.dumps({"what": "detector", "face_side": args.face_side, "margins": margins,
                    "scanned": found.scanned,
                    "with_face": len(prepared),
                    "faces": int(sum(len(p.faces) for p in prepared)),
                    "seconds_per_photo_prepare_and_detect": round(
                        found.seconds / max(found.scanned, 1), 4)}))

  if prepared:  # --scan 1 --throughput N: the speed alone.
    report_quality(found, note)

  if not args.throughput:
    return
  entries = fcdb_entries(args.start, args.throughput)
  on = cropper_lib.Cropper.pretrained(batch_size=8, faces=detector)
  off = cropper_lib.Cropper(on.predictor, batch_size=8, faces=False)
  paths = [path for path, _, _ in entries[:args.throughput]]
  rates: dict[str, list[float]] = {"on": [], "off": []}
  with tempfile.TemporaryDirectory() as tmp:
    for cropper in (off, on):  # A first pass compiles every canvas bucket.
      _throughput(cropper, paths, pathlib.Path(tmp) / "warm")
    for round_ in range(2):
      for name, cropper in (("off", off), ("on", on)):
        out = pathlib.Path(tmp) / f"{name}{round_}"
        rates[name].append(_throughput(cropper, paths, out))
        shutil.rmtree(out)
  median = {k: float(np.median(v)) for k, v in rates.items()}
  print(json.dumps({"what": "throughput", "photos": len(paths),
                    "on_photos_per_s": round(median["on"], 2),
                    "off_photos_per_s": round(median["off"], 2),
                    "on_over_off": round(median["on"] / median["off"], 3)}))


if __name__ == "__main__":
  main()
