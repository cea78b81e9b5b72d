r"""Cropping photos: the `Cropper` API, the `procrop crop` command and `main --mode=crop`.

  procrop crop PATH... [--out DIR] [--aspect W:H ...] [--size WxH ...] [--top-k K]
                       [--workdir DIR [--best] | --model NAME_OR_PATH] [--batch-size B]
                       [--canvas-size S] [--compile-cache DIR]
                       [--format keep|jpg|png|webp]

(`python -m procrop_jax.crop ...` is the same.) PATH is any mix of files, folders (recursive),
globs and `-` (one image on stdin). Without --workdir the shipped model is used. Under OUT
(default `crops`) it writes, mirroring the input tree so that no two inputs collide:

  <relative path>/<stem>_<aspect>_<rank>.<ext>  the crops, best first (rank 1), in the input's
                                                format with its ICC profile and EXIF
  results.jsonl                                 one line per input: path, status ("ok" or
                                                "error"), error, width, height, and per crop
                                                box [x1, y1, x2, y2] in pixels, score, aspect,
                                                file
  index.html                                    a contact sheet: each photo with its crop boxes
                                                drawn over it and the crops beside it

Exit status: 0 all inputs cropped, 1 some failed (the others are still written), 2 usage error.

Free crops are the model's proposals, best first, with greedy non-maximum suppression so that
the top-k differ. With an aspect ratio (`--aspect 16:9`, or `--size 1080x1080`, which also
resizes the crops), candidate boxes of exactly that ratio (to within a pixel) come from a grid of
sizes and positions and from the model's own proposals snapped to the ratio, the best are refined
locally, and the model scores them all (its given-box decoder path; see aspect.py): the score of
such a crop is what `Cropper.score` gives for its box. A free crop's score is its proposal's
confidence; models trained with `loss.given_iou_weight` put both on the same scale (the
estimated IoU with an expert's crop).

Photos are decoded in threads while the model runs, and crops are written while the model runs
on the next batch. Each photo's longer side is resized to the model's canvas size S
(--canvas-size; default the model's config.crop.canvas_size, else the size it was trained at),
and its shorter side is padded to the
smallest of a few canvas buckets that holds it (CANVAS_BUCKETS: 9/16, 3/4 and all of S, in
multiples of 32), not always to S: a 3:2 photo at S = 320 runs on 320 x 256, a 16:9 one on
320 x 192. Batches are formed per bucket and padded to --batch-size, candidate lists to a fixed
count per aspect, so a run compiles its forward passes once per bucket; --compile-cache keeps
the compiled passes for the next run. (A model with retrieval keeps its S x S canvas.)
results.jsonl lists the inputs in the order they finish.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import html
import json
import os
import pathlib
import re
import sys
import time
from typing import Any, Iterable, Iterator, Sequence

import ml_collections
import numpy as np
from PIL import Image
import tqdm

from procrop_jax import aspect
from procrop_jax import box_geometry
from procrop_jax import html_pages
from procrop_jax import photos

DEFAULT_OUT = "crops"
CANVAS_MULTIPLE = 32  # The backbone's stride: canvas sides are multiples of it.
# The canvas's shorter side, as fractions of S: 16:9 photos, 4:3 and 3:2 ones, the rest. Few
# buckets: each compiles its own forward passes (seconds each on a CPU).
CANVAS_BUCKETS = (9 / 16, 3 / 4, 1.0)
_ASPECT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


# ------------------------------------------------------------------------------------- targets
@dataclasses.dataclass(frozen=True)
class Target:
  """What a user asked crops of: free, an aspect ratio, or an exact output size."""
  label: str  # "free", "16x9", "1.5", "1080x1080": names the output files and the crops.
  ratio: float | None = None  # width / height; None: free crops.
  size: tuple[int, int] | None = None  # (width, height) the crops are resized to.


FREE = Target("free")


def parse_aspect(text: str | float) -> Target:
  """`16:9`, `16x9`, `4/5`, `1.5` or a float -> a Target; raises ValueError naming the problem."""
  if isinstance(text, (int, float)):
    ratio, label = float(text), f"{float(text):g}"
  else:
    match = _ASPECT_RE.match(text)
    if match:
      w, h = float(match[1]), float(match[2])
      if h == 0:
        raise ValueError(f"aspect {text!r}: the height is 0")
      ratio, label = w / h, f"{match[1]}x{match[2]}"
    else:
      try:
        ratio = float(text)
      except ValueError:
        raise ValueError(f"aspect {text!r}: use W:H (16:9) or a number (1.5)") from None
      label = text.strip()
  if not np.isfinite(ratio) or ratio <= 0:
    raise ValueError(f"aspect {text!r}: width / height must be a positive number")
  if not 0.01 <= ratio <= 100:
    raise ValueError(f"aspect {text!r}: width / height must be between 1:100 and 100:1")
  return Target(label, ratio)


def parse_size(text: str) -> Target:
  """`1080x1080` -> a Target of that ratio whose crops are resized to exactly that size."""
  match = _SIZE_RE.match(text)
  if not match or int(match[1]) < 1 or int(match[2]) < 1:
    raise ValueError(f"size {text!r}: use WIDTHxHEIGHT in pixels, e.g. 1080x1080")
  w, h = int(match[1]), int(match[2])
  return Target(f"{w}x{h}", w / h, (w, h))


def _as_target(aspect: Target | str | float | None) -> Target:
  if aspect is None:
    return FREE
  return aspect if isinstance(aspect, Target) else parse_aspect(aspect)


# ----------------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class Crop:
  """A crop of the upright photo: [x1, y1, x2, y2] in whole pixels, its score in [0, 1], and
  the aspect it was asked for ("free" for a free crop)."""
  box: tuple[int, int, int, int]
  score: float
  aspect: str = "free"


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float,
                        top_k: int) -> np.ndarray:
  """Indices of up to top_k boxes, best first, none overlapping a kept one above the threshold."""
  order = np.argsort(-scores, kind="stable")
  ious = box_geometry.pairwise_box_iou(boxes, boxes)
  kept: list[int] = []
  for i in order:
    if all(ious[i, j] <= iou_threshold for j in kept):
      kept.append(int(i))
      if len(kept) == top_k:
        break
  return np.array(kept, np.int64)


# ------------------------------------------------------------------------------------ cropper
ImageLike = Any  # A path, a PIL image, or an uint8 [H, W, 3] / [H, W] array.


def _to_pil(image: ImageLike, max_pixels: int) -> Image.Image:
  if isinstance(image, Image.Image):
    return image
  if isinstance(image, (str, os.PathLike)):
    return photos.read_photo(str(image), max_pixels=max_pixels).image
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
      array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
    raise ValueError(f"expected an uint8 [H, W], [H, W, 3] or [H, W, 4] array, got "
                     f"{array.dtype} {array.shape}")
  return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


@dataclasses.dataclass
class _Prepared:
  """A photo on the model's canvas."""
  canvas: np.ndarray
  valid_hw: np.ndarray
  size: tuple[int, int]  # (width, height) of the upright photo.


class Cropper:
  """Scored crops of photos with a trained model.

    from procrop_jax import Cropper
    cropper = Cropper.pretrained()                      # or Cropper.from_workdir(DIR, best=True)
    cropper.crop("photo.jpg", top_k=3)                  # free crops, best first
    cropper.crop(image, aspect="16:9")                  # crops of exactly that ratio
    cropper.score(image, [[0, 0, 640, 360]])            # scores of boxes you give
    cropper.crop_many(paths, aspect=1.0)                # batched
  """

  def __init__(self, predictor, *, nms_iou: float = 0.7,
               max_pixels: int = photos.DEFAULT_MAX_PIXELS, batch_size: int = 8,
               canvas_size: int | None = None, buckets: bool = True,
               aspect_candidates: aspect.Candidates = aspect.FAST):
    """`predictor` is an `inference.Predictor`.

    `canvas_size` is the side S the photo's longer side is resized to (default: the model's
    `config.crop.canvas_size`, else its training size); with `buckets` the canvas's shorter side is the smallest of
    `CANVAS_BUCKETS` that holds the photo's instead of S: fewer pixels, the same crops within
    noise (experiments/README.md). Both need a model without retrieval (`flexible_canvas`).
    `aspect_candidates` are the boxes scored for a fixed-aspect crop (`aspect.FAST`, or
    `aspect.DENSE` as the aspect-conditioned evaluation scores them).
    """
    self.predictor = predictor
    self.aspect_candidates = aspect_candidates
    self.nms_iou = nms_iou
    self.max_pixels = max_pixels
    self.batch_size = batch_size
    if canvas_size is not None and (canvas_size <= 0 or canvas_size % CANVAS_MULTIPLE):
      raise ValueError(f"canvas_size={canvas_size}: use a positive multiple of "
                       f"{CANVAS_MULTIPLE}")
    configured = int(predictor.config.crop.get("canvas_size", 0) or 0)
    self.canvas_size = int(canvas_size or configured or predictor.image_size)
    flexible = predictor.flexible_canvas
    if self.canvas_size != predictor.image_size and not flexible:
      raise ValueError(
          f"canvas_size={self.canvas_size}: this model uses retrieval, whose fusion was built "
          f"for its training canvas ({predictor.image_size} px); leave canvas_size (and "
          "config.crop.canvas_size) unset")
    self.buckets = bool(buckets) and flexible

  def canvas_shape(self, width: int, height: int) -> tuple[int, int]:
    """(height, width) of the canvas a width x height photo is put on: its bucket."""
    return photos.canvas_shape(width, height, self.canvas_size,
                               CANVAS_BUCKETS if self.buckets else None)[:2]

  @classmethod
  def pretrained(cls, name_or_path: str | os.PathLike[str] | None = None, **kwargs
                 ) -> "Cropper":
    """The shipped model (`model_zoo.DEFAULT_MODEL` unless named) or an exported folder."""
    from procrop_jax import inference  # pylint: disable=g-import-not-at-top  (imports JAX)
    return cls(inference.Predictor.from_pretrained(name_or_path), **kwargs)

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike[str], *, best: bool = False,
                   config: ml_collections.ConfigDict | None = None, **kwargs) -> "Cropper":
    """The latest (or best) checkpoint of a training run, with the run's own config."""
    from procrop_jax import inference  # pylint: disable=g-import-not-at-top  (imports JAX)
    return cls(inference.Predictor.from_workdir(workdir, best=best, config=config), **kwargs)

  # ------------------------------------------------------------------------------- public API
  def crop(self, image: ImageLike, aspect: Target | str | float | None = None,
           top_k: int = 3) -> list[Crop]:
    """The top_k crops of one photo, best first; `aspect` (width / height, "16:9") fixes the
    ratio of every crop."""
    return self.crop_many([image], aspect=aspect, top_k=top_k)[0]

  def crop_many(self, images: Iterable[ImageLike],
                aspect: Target | str | float | None = None, top_k: int = 3
                ) -> list[list[Crop]]:
    """`crop` for many photos, batched."""
    target = _as_target(aspect)
    prepared = [self.prepare(_to_pil(image, self.max_pixels)) for image in images]
    buckets: dict[tuple[int, ...], list[int]] = {}  # Canvas shape -> photos on it.
    for i, p in enumerate(prepared):
      buckets.setdefault(p.canvas.shape, []).append(i)
    out: list[list[Crop]] = [[] for _ in prepared]
    for indices in buckets.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        crops = self.crop_batch([prepared[i] for i in chunk], [target], top_k=top_k)
        for i, c in zip(chunk, crops):
          out[i] = c[target.label]
    return out

  def score(self, image: ImageLike, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """The model's scores [N] in [0, 1] of pixel boxes [N, 4] ([x1, y1, x2, y2]) of a photo."""
    prepared = self.prepare(_to_pil(image, self.max_pixels))
    width, height = prepared.size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
      return np.zeros((0,), np.float64)
    # A multiple of 16 given boxes: a few compiled shapes whatever the count.
    padded = np.zeros((-(-len(boxes) // 16) * 16, 4))
    padded[:len(boxes)] = boxes / [width, height, width, height]
    padded[len(boxes):] = padded[0]
    scores = self._predict([prepared], padded[None])["scores"][0]
    return np.asarray(scores[:len(boxes)], np.float64)

  # ---------------------------------------------------------------------------------- batches
  def prepare(self, image: Image.Image) -> _Prepared:
    """An upright PIL photo on the model's canvas."""
    canvas, valid_hw = photos.canvas(image, self.canvas_size,
                                     CANVAS_BUCKETS if self.buckets else None)
    return _Prepared(canvas, valid_hw, image.size)

  def _predict(self, batch: list[_Prepared], boxes: np.ndarray | None = None, *,
               encoding: dict[str, np.ndarray] | None = None, keep_encoding: bool = False
               ) -> dict[str, Any]:
    """Predicts on a batch padded to batch_size, so that every call has the same shapes.

    The "encoding" it keeps stays padded, for the calls that reuse it."""
    n = len(batch)
    canvases, valid = self._padded(batch)
    if boxes is not None:
      boxes = np.concatenate([boxes, np.repeat(boxes[:1], len(canvases) - n, 0)])
    if encoding is not None:
      canvases = None
    outputs = self.predictor.predict(canvases, valid, boxes, encoding=encoding,
                                     keep_encoding=keep_encoding)
    return {k: v if k == "encoding" else v[:n] for k, v in outputs.items()}

  def _padded(self, batch: list[_Prepared]) -> tuple[np.ndarray, np.ndarray]:
    shapes = {p.canvas.shape[:2] for p in batch}
    if len(shapes) > 1:
      raise ValueError(f"one batch holds canvases of several shapes {sorted(shapes)}: batch "
                       "photos of the same Cropper.canvas_shape")
    size = max(self.batch_size, len(batch))
    pad = [batch[0]] * (size - len(batch))
    return (np.stack([p.canvas for p in batch + pad]),
            np.stack([p.valid_hw for p in batch + pad]))

  def crop_batch(self, batch: list[_Prepared], targets: Sequence[Target], *, top_k: int
                 ) -> list[dict[str, list[Crop]]]:
    """For each photo, target label -> its top_k crops, best first."""
    results: list[dict[str, list[Crop]]] = [{} for _ in batch]
    ratios = [t for t in targets if t.ratio is not None]
    # Free proposals: the free crops, and (snapped) candidates of every fixed ratio. Fixed
    # ratios then score candidates on the same photos: the backbone, the encoder and the
    # learned queries' decoder rows run once, in this pass.
    reuse = bool(ratios) and self.predictor.reuses_encoding
    proposals = self._predict(batch, keep_encoding=reuse)
    encoding = proposals.get("encoding")
    proposals_px = [proposals["boxes"][i].astype(np.float64) * (p.size * 2)
                    for i, p in enumerate(batch)]
    if any(t.ratio is None for t in targets):
      for i, p in enumerate(batch):
        boxes = np.array([aspect.snap_box(b, p.size) for b in proposals_px[i]], np.float64)
        results[i]["free"] = self._top(boxes, proposals["scores"][i], top_k, "free")
    if ratios:
      chosen = aspect.choose(
          lambda given: self._predict(batch, given, encoding=encoding)["scores"], proposals_px,
          [p.size for p in batch], [[t.ratio for t in ratios]] * len(batch),
          candidates=self.aspect_candidates, proposal_scores=list(proposals["scores"]))
      for i in range(len(batch)):
        for j, t in enumerate(ratios):
          boxes, scores = chosen[i][j]
          results[i][t.label] = self._top(boxes.astype(np.float64), scores, top_k, t.label)
    return results

  def _top(self, boxes: np.ndarray, scores: np.ndarray, top_k: int, label: str) -> list[Crop]:
    scores = np.asarray(scores, np.float64)
    keep = non_max_suppression(boxes, scores, iou_threshold=self.nms_iou, top_k=top_k)
    return [Crop(tuple(int(v) for v in boxes[i]), float(scores[i]), label) for i in keep]


# -------------------------------------------------------------------------------- the command
@dataclasses.dataclass
class RunSummary:
  total: int
  ok: int
  failed: int
  out_dir: pathlib.Path
  seconds: float

  @property
  def photos_per_second(self) -> float:
    return self.total / max(self.seconds, 1e-9)


def _output_bases(inputs: Sequence[photos.Input]) -> list[pathlib.PurePath]:
  """OUT-relative '<dir>/<stem>' per input, distinct (IMG.jpg and IMG.png -> IMG, IMG_png)."""
  bases, taken = [], set()
  for item in inputs:
    rel = item.relative
    base = rel.parent / (rel.stem or "photo")
    if str(base).lower() in taken:
      base = rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower() or 'file'}"
    n, candidate = 2, base
    while str(candidate).lower() in taken:  # Case-insensitive file systems too.
      candidate, n = base.parent / f"{base.name}-{n}", n + 1
    taken.add(str(candidate).lower())
    bases.append(candidate)
  return bases


def _decode(item: photos.Input, max_pixels: int, cropper: Cropper):
  """(Photo, prepared) or a PhotoError; runs in a worker thread."""
  try:
    photo = photos.read_photo(item.source, max_pixels=max_pixels)
    return photo, cropper.prepare(photo.image)
  except photos.PhotoError as e:
    return e
  except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop the run)
    return photos.PhotoError(f"cannot decode ({type(e).__name__}: {e})")


def _ordered(executor, fn, items: Sequence[Any], lookahead: int) -> Iterator[Any]:
  """executor.map with at most `lookahead` results pending: memory stays bounded."""
  pending = []
  items = iter(items)
  for item in items:
    pending.append(executor.submit(fn, item))
    if len(pending) >= lookahead:
      yield pending.pop(0).result()
  for future in pending:
    yield future.result()


def run(inputs: Sequence[photos.Input], cropper: Cropper, *, out_dir: str | os.PathLike[str],
        targets: Sequence[Target] = (FREE,), top_k: int = 3, fmt: str = "keep",
        quality: int = 92, problems: Sequence[tuple[str, str]] = (), workers: int = 2,
        progress: bool = True) -> RunSummary:
  """Crops `inputs` into `out_dir` (crops, results.jsonl, index.html); see the module docstring.

  `problems` are (argument, reason) pairs from `photos.list_inputs`, reported as errors.
  """
  start = time.perf_counter()
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  bases = _output_bases(inputs)
  results_path = out / "results.jsonl"
  records: list[dict[str, Any]] = []
  ok = failed = 0
  bar = tqdm.tqdm(total=len(inputs), unit="photo", desc="Cropping", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True)

  with open(results_path, "w") as results, \
      concurrent.futures.ThreadPoolExecutor(workers) as decoder, \
      concurrent.futures.ThreadPoolExecutor(workers) as writer:

    def emit(record: dict[str, Any]) -> None:
      results.write(json.dumps(record) + "\n")
      results.flush()
      records.append(record)

    for arg, reason in problems:
      emit({"path": arg, "status": "error", "error": reason, "width": None, "height": None,
            "crops": []})
      failed += 1

    Decoded = tuple[int, photos.Photo, _Prepared]  # (input index, photo, its canvas)
    written: list[tuple[list[Decoded], dict[int, dict[str, Any]], list]] = []

    def finish(batch: list[Decoded]) -> None:
      """Crops one batch (one canvas bucket) and starts writing its crops; the records of the
      previous batch are emitted once its writes are done, so writing overlaps the next
      batch's model pass."""
      crops = cropper.crop_batch([p for _, _, p in batch], targets, top_k=top_k)
      records, writes = {}, []
      for (index, photo, prepared), by_target in zip(batch, crops):
        item, base = inputs[index], bases[index]
        fmt_name = photos.output_format(photo, fmt)
        record_crops = []
        for target in targets:
          for rank, c in enumerate(by_target[target.label], 1):
            rel = base.parent / f"{base.name}_{target.label}_{rank}{photos.suffix(fmt_name)}"
            record_crops.append({"box": list(c.box), "score": round(c.score, 6),
                                 "aspect": target.label, "file": rel.as_posix()})
            writes.append((writer.submit(photos.save_crop, photo, c.box, out / rel,
                                         fmt=fmt_name, size=target.size, quality=quality),
                           index))
        preview = out / "index_files" / f"{base.as_posix()}.jpg"
        writes.append((writer.submit(_save_preview, prepared, preview), index))
        width, height = photo.size
        records[index] = {"path": item.source, "status": "ok", "error": None,
                          "width": width, "height": height, "crops": record_crops,
                          "preview": preview.relative_to(out).as_posix()}
      written.append((batch, records, writes))
      if len(written) > 1:
        settle(*written.pop(0))

    def settle(batch: list[Decoded], records: dict[int, dict[str, Any]], writes: list) -> None:
      """Waits for a batch's writes and emits its records (an error where a write failed)."""
      nonlocal ok, failed
      write_errors = {}
      for future, index in writes:
        try:
          future.result()
        except (OSError, ValueError) as e:
          write_errors.setdefault(index, f"cannot write a crop ({type(e).__name__}: {e})")
      for index, _, _ in batch:
        record = records[index]
        if index in write_errors:
          record.update(status="error", error=write_errors[index])
          failed += 1
        else:
          ok += 1
        emit(record)
      bar.update(len(batch))

    # Decoded photos wait in their canvas bucket until it fills a batch. At most
    # `max_waiting` wait in all (the fullest bucket goes as a partial batch beyond that), so
    # memory stays bounded however the photos' shapes are mixed.
    buckets: dict[tuple[int, ...], list[Decoded]] = {}
    max_waiting = 3 * cropper.batch_size
    decoded = _ordered(decoder, lambda i: (i, _decode(inputs[i], cropper.max_pixels, cropper)),
                       range(len(inputs)), lookahead=2 * cropper.batch_size)
    for index, result in decoded:
      if isinstance(result, photos.PhotoError):
        emit({"path": inputs[index].source, "status": "error", "error": str(result),
              "width": None, "height": None, "crops": []})
        failed += 1
        bar.update(1)
        continue
      bucket = buckets.setdefault(result[1].canvas.shape, [])
      bucket.append((index, *result))
      if len(bucket) == cropper.batch_size:
        finish(buckets.pop(result[1].canvas.shape))
      elif sum(len(b) for b in buckets.values()) > max_waiting:
        finish(buckets.pop(max(buckets, key=lambda k: len(buckets[k]))))
    for shape in list(buckets):
      finish(buckets.pop(shape))
    while written:
      settle(*written.pop(0))
  bar.close()
  write_index(out, records)
  return RunSummary(len(inputs) + len(problems), ok, failed, out, time.perf_counter() - start)


def _save_preview(prepared: _Prepared, path: pathlib.Path) -> None:
  """The photo as the model saw it (its canvas, unpadded): a light image for the contact sheet."""
  pixels = photos.from_canvas(prepared.canvas, prepared.valid_hw)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, quality=85)


# ----------------------------------------------------------------------------- contact sheet
def write_index(out: pathlib.Path, records: Sequence[dict[str, Any]]) -> pathlib.Path:
  """OUT/index.html: every photo with its crop boxes drawn over it and its crops beside it."""
  ok = [r for r in records if r["status"] == "ok"]
  parts = [f"<h1>procrop crops: {len(ok)} of {len(records)} inputs cropped</h1>"]
  for r in records:
    path = html.escape(str(r["path"]))
    if r["status"] != "ok":
      parts.append(f"<div class=item><div class=path>{path}</div>"
                   f"<div class=error>error: {html.escape(str(r['error']))}</div></div>")
      continue
    width, height = r["width"], r["height"]
    boxes = []
    crops = []
    for n, c in enumerate(r["crops"]):
      colour = html_pages.COLOURS[n % len(html_pages.COLOURS)]
      x1, y1, x2, y2 = c["box"]
      label = f"{c['aspect']} #{n + 1} {c['score']:.2f}"
      boxes.append(html_pages.box(c["box"], (width, height), colour, label))
      link = html_pages.url(c["file"])
      crops.append(f"<figure><a href='{link}'><img loading=lazy src='{link}' "
                   f"style='border-color:{colour}'></a><figcaption>{html.escape(label)}<br>"
                   f"{x2 - x1}x{y2 - y1}</figcaption></figure>")
    parts.append(f"<div class=item><div class=path>{path} ({width}x{height})</div>"
                 f"{html_pages.photo(html_pages.url(r['preview']), boxes)}"
                 f"<div class=crops>{''.join(crops)}</div></div>")
  index = out / "index.html"
  index.write_text(html_pages.page(f"procrop: {len(ok)} photos", parts))
  return index


# ------------------------------------------------------------------------ command-line parsing
class _Parser(argparse.ArgumentParser):
  """argparse that reports a usage error in one line (exit status 2)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _target_arg(parse):
  def convert(text: str) -> Target:
    try:
      return parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from e
  return convert


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
  return value


def build_parser(prog: str = "procrop crop") -> argparse.ArgumentParser:
  from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top  (imports JAX: not at the CLI's start)
  parser = _Parser(prog=prog, description="Crops photos with a ProCrop model (see "
                   "procrop_jax/crop.py).")
  parser.add_argument("paths", nargs="*", metavar="PATH",
                      help="files, folders (recursive), globs, or - for one image on stdin")
  parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
  parser.add_argument("--aspect", action="append", type=_target_arg(parse_aspect), default=[],
                      help="width:height (16:9) or a number (1.5) of every crop; repeatable; "
                      "default: free crops")
  parser.add_argument("--size", action="append", type=_target_arg(parse_size), default=[],
                      help="WIDTHxHEIGHT: crops of that ratio resized to exactly that size; "
                      "repeatable")
  parser.add_argument("--top-k", type=_positive_int, default=3,
                      help="crops per photo and aspect (default: %(default)s)")
  parser.add_argument("--workdir", help="a training run's folder: its latest checkpoint")
  parser.add_argument("--best", action="store_true",
                      help="with --workdir: its best checkpoint (checkpoints_best)")
  parser.add_argument("--model", default=None,
                      help="a shipped model's name or an exported model folder (default: "
                      f"{model_zoo.DEFAULT_MODEL})")
  parser.add_argument("--batch-size", type=_positive_int, default=8,
                      help="photos per model call (default: %(default)s)")
  parser.add_argument("--canvas-size", type=_positive_int, default=None,
                      help="pixels of the photo's longer side as the model sees it, a multiple "
                      "of 32 (default: the model's config.crop.canvas_size, else its "
                      "training size); smaller is faster "
                      "(experiments/README.md measures speed and quality)")
  parser.add_argument("--format", choices=photos.FORMAT_CHOICES, default="keep",
                      help="format of the crops (default: the input's)")
  parser.add_argument("--quality", type=int, default=92, choices=range(1, 101),
                      metavar="1..100", help="JPEG/WebP quality (default: %(default)s)")
  parser.add_argument("--nms-iou", type=float, default=0.7,
                      help="crops overlapping a better one more than this are dropped")
  parser.add_argument("--max-pixels", type=_positive_int, default=photos.DEFAULT_MAX_PIXELS,
                      help="photos with more pixels are refused unread (default: %(default)s)")
  parser.add_argument("--workers", type=_positive_int, default=2,
                      help="threads decoding and writing photos (default: %(default)s)")
  parser.add_argument("--compile-cache", default=_default_compile_cache(),
                      help="folder of JAX's persistent compilation cache: later runs load the "
                      "compiled model instead of compiling it; '' turns it off (default: "
                      "%(default)s)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def _default_compile_cache() -> str:
  """$JAX_COMPILATION_CACHE_DIR where it is set (empty: no cache), else the user's cache."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "procrop_jax", "jax")


def _use_compile_cache(folder: str) -> None:
  """Keeps compiled passes on disk: each canvas bucket costs seconds of compilation on a CPU,
  which a later run over photos of the same buckets then skips."""
  if not folder:
    return
  import jax  # pylint: disable=g-import-not-at-top  (not at the CLI's start)
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _load_cropper(args: argparse.Namespace) -> Cropper:
  """The cropper the flags ask for; a problem is one line and exit status 2."""
  from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top  (imports JAX)
  kwargs = dict(nms_iou=args.nms_iou, max_pixels=args.max_pixels, batch_size=args.batch_size,
                canvas_size=args.canvas_size)
  try:
    if args.workdir:
      return Cropper.from_workdir(args.workdir, best=args.best, **kwargs)
    name = args.model or model_zoo.DEFAULT_MODEL
    if args.model is None and name not in model_zoo.available():
      raise FileNotFoundError(
          f"the default model {name!r} is not installed (models in this installation: "
          f"{', '.join(model_zoo.available()) or 'none'}); pass --workdir DIR (a training run) "
          "or --model PATH (an exported model)")
    return Cropper.pretrained(name, **kwargs)
  except (FileNotFoundError, ValueError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise _UsageError(message) from e


class _UsageError(Exception):
  pass


def main(argv: Sequence[str] | None = None, *, prog: str = "procrop crop") -> int:
  """`procrop crop ...`; returns the exit status (0 ok, 1 some inputs failed, 2 usage)."""
  parser = build_parser(prog)
  args = parser.parse_args(argv)
  if not args.paths:
    parser.error("no inputs: give photos, folders, globs or - (stdin)")
  if args.best and not args.workdir:
    parser.error("--best needs --workdir")
  if args.workdir and args.model:
    parser.error("give --workdir or --model, not both")
  if args.canvas_size is not None and args.canvas_size % CANVAS_MULTIPLE:
    parser.error(f"--canvas-size {args.canvas_size}: use a multiple of {CANVAS_MULTIPLE}")
  if not 0 <= args.nms_iou <= 1:
    parser.error(f"--nms-iou {args.nms_iou}: use a value in [0, 1]")
  if args.paths.count(photos.STDIN) > 1:
    parser.error("- (stdin) can be given once")
  targets = [*args.aspect, *args.size] or [FREE]
  if len({t.label for t in targets}) != len(targets):
    parser.error("the same --aspect or --size is given twice")
  _hide_gpus_from_tensorflow()
  _use_compile_cache(args.compile_cache)
  inputs, problems = photos.list_inputs(args.paths, exclude=args.out)
  try:
    cropper = _load_cropper(args)
  except _UsageError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  summary = run(inputs, cropper, out_dir=args.out, targets=targets, top_k=args.top_k,
                fmt=args.format, quality=args.quality, problems=problems,
                workers=args.workers, progress=not args.quiet)
  print(f"Cropped {summary.ok} of {summary.total} inputs into {summary.out_dir} "
        f"({summary.photos_per_second:.2f} photos/s)"
        + (f"; {summary.failed} failed (see {summary.out_dir / 'results.jsonl'})"
           if summary.failed else "") + f". Contact sheet: {summary.out_dir / 'index.html'}",
        file=sys.stderr)
  return 1 if summary.failed else 0


def _hide_gpus_from_tensorflow() -> None:
  # TensorFlow (imported for retrieval and the input pipeline) would reserve all GPU memory.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except  (no TF, or devices already initialised)
    pass


# ------------------------------------------------------------------------------ main --mode=crop
def crop_folder(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`main --mode=crop`: crops config.crop.input_dir (default: scikit-image's photos) into
  config.crop.output_dir (default WORKDIR/crops) with the run's latest checkpoint, as
  `procrop crop` would."""
  crop_config = config.crop
  if crop_config.input_dir:
    if not os.path.isdir(crop_config.input_dir):
      raise FileNotFoundError(f"config.crop.input_dir={crop_config.input_dir!r} is not a "
                              "directory.")
    args = [crop_config.input_dir]
  else:
    args = [str(p) for p in photos.skimage_photo_paths()]
  output_dir = crop_config.output_dir or os.path.join(workdir, "crops")
  inputs, problems = photos.list_inputs(args, exclude=output_dir)
  if not inputs:
    raise FileNotFoundError(f"No images ({', '.join(photos.IMAGE_SUFFIXES)}) in {args}.")
  cropper = Cropper.from_workdir(workdir, config=config, nms_iou=crop_config.nms_iou)
  targets = [parse_aspect(crop_config.aspect_ratio)] if crop_config.aspect_ratio else [FREE]
  summary = run(inputs, cropper, out_dir=output_dir, targets=targets, top_k=crop_config.top_k,
                problems=problems)
  failed = {}
  with open(summary.out_dir / "results.jsonl") as f:
    for line in f:
      record = json.loads(line)
      if record["status"] != "ok":
        failed[record["path"]] = record["error"]
  print(f"Cropped {summary.ok} of {summary.total} photos into {summary.out_dir}"
        + (f"; {summary.failed} failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
           if failed else "") + f". Contact sheet: {summary.out_dir / 'index.html'}",
        flush=True)
  return {"cropped": summary.ok, "failed": failed, "output_dir": str(summary.out_dir)}


if __name__ == "__main__":
  sys.exit(main(prog="python -m procrop_jax.crop"))
