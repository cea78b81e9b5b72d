"""The `Cropper` API: scored crops of photos, free or of a fixed aspect ratio.

  from procrop_jax import Cropper
  cropper = Cropper.pretrained()                      # or Cropper.from_workdir(DIR, best=True)
  cropper.crop("photo.jpg", top_k=3)                  # free crops, best first
  cropper.crop(image, aspect="16:9")                  # crops of exactly that ratio
  cropper.score(image, [[0, 0, 640, 360]])            # scores of boxes you give
  cropper.crop_many(paths, aspect=1.0)                # batched
  cropper.crop(image, keep=[(x1, y1, x2, y2)], focus=(x, y))  # crops that contain these

Free crops are the model's proposals, best first, with greedy non-maximum suppression so that
the top-k differ. With an aspect ratio (`aspect="16:9"`, or a `parse_size` target, whose crops
the command line also resizes), candidate boxes of exactly that ratio (to within a pixel) come
from a grid of sizes and positions and from the model's own proposals snapped to the ratio, the
best are refined locally, and the model scores them all (its given-box decoder path; see
aspect.py): the score of such a crop is what `Cropper.score` gives for its box. A free crop's
score is its proposal's confidence; models trained with `loss.given_iou_weight` put both on the
same scale (the estimated IoU with an expert's crop).

Each photo's longer side is resized to the model's canvas size S (`canvas_size`; default the
model's config.crop.canvas_size, else the size it was trained at), and the photo is put on one of
a few canvases (`layout`, default the model's config.crop.canvas_layout, else "buckets"):
"buckets" pads the shorter side to the smallest of CANVAS_BUCKETS (9/16, 3/4 and all of S, in
multiples of 32) that holds it, so a 3:2 photo at S = 320 runs on 320 x 256 and a 16:9 one on
320 x 192 (fewest pixels, up to 5 shapes); "orientation" fits every photo inside S wide by 3/4 S
high, or that canvas turned upright for a portrait photo (2 shapes); "square" is S x S. Batches
are padded to `batch_size` photos (a call with fewer photos to the smallest power of two that
holds them, so `crop` and `score` run one photo alone, not a padded batch) and candidate lists
to a fixed count per aspect, so a process compiles its forward passes once per canvas shape and
batch size (a proposal pass and, for fixed aspects, the candidates' scoring passes). (A model
with retrieval keeps its S x S canvas.) The command line over files and folders is crop.py.

Keep regions (keep.py) are boxes every crop must contain: the user's (`keep`, `focus`) and,
unless `faces=False`, the main faces found in the photo (faces.py) grown for hair and chin; a
smaller face may instead be left out entirely (a background face an editor would crop away),
never cut. They shape the candidates themselves: fixed-aspect candidates are moved and grown
to contain them before they are scored; free proposals that leave one out are grown likewise
and scored by the given-box path (one more pass for a batch where some proposal grew, compiled
once per canvas shape), never above the proposal they grew from, the others keeping their
confidence. When no box of the shape can hold them all, crops keep the most of them; each
`Crop` names the regions it fails (`not_kept`) and the faces it cuts (`cut_faces`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np
from PIL import Image

from procrop_jax import aspect
from procrop_jax import box_geometry
from procrop_jax import faces as faces_lib
from procrop_jax import inference
from procrop_jax import keep as keep_lib
from procrop_jax import photos

CANVAS_MULTIPLE = 32  # The backbone's stride: canvas sides are multiples of it.
# The canvas's shorter side, as fractions of S: 16:9 photos, 4:3 and 3:2 ones, the rest. Few
# buckets: each compiles its own forward passes (seconds each on a CPU).
CANVAS_BUCKETS = (9 / 16, 3 / 4, 1.0)
CANVAS_LAYOUTS = ("buckets", "orientation", "square")  # See Cropper.__init__.
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


def as_target(aspect: Target | str | float | None) -> Target:
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
  # Keep regions it fails (a user's box, point or main face it does not contain, a smaller
  # face it cuts; keep.Regions.left_out), indexed as the user's boxes, then the focal point,
  # then the faces.
  not_kept: tuple[int, ...] = ()
  cut_faces: tuple[int, ...] = ()  # Faces (Prepared.faces) of which 5-95% is inside.

  def record(self) -> dict[str, Any]:
    """The crop's fields of results.jsonl and of the service's JSON."""
    return {"box": list(self.box), "score": round(self.score, 6), "aspect": self.aspect,
            "not_kept": list(self.not_kept), "cut_faces": list(self.cut_faces)}


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
class Prepared:
  """A photo on the model's canvas."""
  canvas: np.ndarray
  valid_hw: np.ndarray
  size: tuple[int, int]  # (width, height) of the upright photo.
  faces: np.ndarray = dataclasses.field(  # [F, 4] pixel boxes, largest first.
      default_factory=lambda: np.zeros((0, 4)))

  def face_records(self) -> list[list[float]]:
    """The faces as results.jsonl and the service write them (pixels, to 0.1)."""
    return [[round(float(v), 1) for v in face] for face in self.faces]

  def keep_regions(self, user: Sequence[Sequence[float]] | None = None) -> keep_lib.Regions:
    """The photo's keep regions: the user's, then its faces' (with their margins; tight: the
    faces as found). The main faces (`faces.main_faces`) must be kept; a smaller face is
    whole-or-out: a crop holds it whole or leaves it out."""
    user = keep_lib.as_regions(user, self.size)
    grown = keep_lib.as_regions(faces_lib.keep_regions(self.faces, self.size), self.size)
    whole_or_out = np.concatenate([np.zeros(len(user), bool),
                                   ~faces_lib.main_faces(self.faces)])
    return keep_lib.Regions(np.concatenate([user, grown]),
                            np.concatenate([user, keep_lib.as_regions(self.faces, self.size)]),
                            whole_or_out)


class Cropper:
  """Scored crops of photos with a trained model.

    from procrop_jax import Cropper
    cropper = Cropper.pretrained()                      # or Cropper.from_workdir(DIR, best=True)
    cropper.crop("photo.jpg", top_k=3)                  # free crops, best first
    cropper.crop(image, aspect="16:9")                  # crops of exactly that ratio
    cropper.score(image, [[0, 0, 640, 360]])            # scores of boxes you give
    cropper.crop_many(paths, aspect=1.0)                # batched
  """

  def __init__(self, predictor: inference.Predictor, *, nms_iou: float = 0.7,
               max_pixels: int = photos.DEFAULT_MAX_PIXELS, batch_size: int = 8,
               canvas_size: int | None = None, layout: str | None = None,
               aspect_candidates: aspect.Candidates = aspect.FAST,
               faces: bool | faces_lib.FaceDetector = True):
    """A cropper around a loaded model (see `pretrained` and `from_workdir`).

    `canvas_size` is the side S the photo's longer side is resized to (default: the model's
    `config.crop.canvas_size`, else its training size). `layout` (default: the model's
    `config.crop.canvas_layout`, else "buckets") chooses the canvases (`CANVAS_LAYOUTS`):
    "buckets", the shorter side the smallest of `CANVAS_BUCKETS` that holds the photo's (fewest
    pixels, up to 5 shapes); "orientation", two canvases, S wide by 3/4 S high and the same turned
    upright, the photo fitted inside (2 shapes: fewer compilations, a portrait photo a little
    smaller); "square", S x S. A model with retrieval (not `flexible_canvas`) keeps its
    training canvas, S x S.
    `aspect_candidates` are the boxes scored for a fixed-aspect crop (`aspect.FAST`, or
    `aspect.DENSE` as the aspect-conditioned evaluation scores them). With `faces` (True, or a
    `faces.FaceDetector` of other settings) the faces found in each photo are keep regions.
    `batch_size` is the most photos of one canvas the model runs at once (`crop_many`, folder
    runs); a call with fewer pads to the smallest power of two that holds them, so `crop` and
    `score` run one photo alone. Each batch size compiles its own passes.
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
    layout = layout or predictor.config.crop.get("canvas_layout", "") or "buckets"
    if layout not in CANVAS_LAYOUTS:
      raise ValueError(f"layout={layout!r}: use one of {', '.join(CANVAS_LAYOUTS)}")
    self.layout = layout if flexible else "square"
    self.face_detector = (faces if isinstance(faces, faces_lib.FaceDetector)
                          else faces_lib.FaceDetector() if faces else None)

  def _canvas_args(self, width: int, height: int) -> dict[str, Any]:
    """`photos.canvas` / `photos.canvas_shape` arguments for a width x height photo."""
    if self.layout == "buckets":
      return {"buckets": CANVAS_BUCKETS}
    if self.layout == "orientation":
      side = self.canvas_size
      short = min(side, -(-round(0.75 * side) // CANVAS_MULTIPLE) * CANVAS_MULTIPLE)
      return {"canvas_hw": (short, side) if width >= height else (side, short)}
    return {}

  def canvas_shape(self, width: int, height: int) -> tuple[int, int]:
    """(height, width) of the canvas a width x height photo is put on."""
    return photos.canvas_shape(width, height, self.canvas_size,
                               **self._canvas_args(width, height))[:2]

  @classmethod
  def pretrained(cls, name_or_path: str | os.PathLike[str] | None = None, *,
                 progress: Callable[[str], None] | None = None, **kwargs) -> "Cropper":
    """The shipped model (`model_zoo.DEFAULT_MODEL` unless named) or an exported folder.

    `progress` (e.g. `inference.progress_to_stderr`) is told of every compilation."""
    return cls(inference.Predictor.from_pretrained(name_or_path, progress=progress), **kwargs)

  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike[str], *, best: bool = False,
                   config: ml_collections.ConfigDict | None = None,
                   progress: Callable[[str], None] | None = None, **kwargs) -> "Cropper":
    """The latest (or best) checkpoint of a training run, with the run's own config."""
    return cls(inference.Predictor.from_workdir(workdir, best=best, config=config,
                                                progress=progress), **kwargs)

  # ------------------------------------------------------------------------------- public API
  def crop(self, image: ImageLike, aspect: Target | str | float | None = None,
           top_k: int = 3, *, keep: Sequence[Sequence[float]] | None = None,
           focus: tuple[float, float] | None = None) -> list[Crop]:
    """The top_k crops of one photo, best first; `aspect` (width / height, "16:9") fixes the
    ratio of every crop. Every crop contains the `keep` boxes ([x1, y1, x2, y2] pixels of the
    upright photo), the `focus` point (x, y) and the faces found, or the most of them a crop of
    the shape can (keep.py)."""
    return self.crop_many([image], aspect=aspect, top_k=top_k, keep=keep, focus=focus)[0]

  def crop_many(self, images: Iterable[ImageLike],
                aspect: Target | str | float | None = None, top_k: int = 3, *,
                keep: Sequence[Sequence[float]] | None = None,
                focus: tuple[float, float] | None = None) -> list[list[Crop]]:
    """`crop` for many photos, batched; `keep` and `focus` apply to every photo."""
    target = as_target(aspect)
    user = user_regions(keep, focus)
    prepared = [self.prepare(_to_pil(image, self.max_pixels)) for image in images]
    buckets: dict[tuple[int, ...], list[int]] = {}  # Canvas shape -> photos on it.
    for i, p in enumerate(prepared):
      buckets.setdefault(p.canvas.shape, []).append(i)
    out: list[list[Crop]] = [[] for _ in prepared]
    # Batches pad to batch_size photos, or to the power of two that holds a smaller call's
    # photos (as the command line does): a crop() loop runs each photo alone, not padded to 8.
    size = calls_batch_size(len(prepared), self.batch_size)
    for indices in buckets.values():
      for start in range(0, len(indices), size):
        chunk = indices[start:start + size]
        crops = self.crop_batch([prepared[i] for i in chunk], [target], top_k=top_k,
                                keep=[user] * len(chunk), batch_size=size)
        for i, c in zip(chunk, crops):
          out[i] = c[target.label]
    return out

  def score(self, image: ImageLike, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """The model's scores [N] in [0, 1] of pixel boxes [N, 4] ([x1, y1, x2, y2]) of a photo."""
    return self.score_prepared(self.prepare(_to_pil(image, self.max_pixels)), boxes)

  def score_prepared(self, prepared: Prepared, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """`score` of a photo already on its canvas (`prepare`; a server decodes in threads)."""
    width, height = prepared.size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
      return np.zeros((0,), np.float64)
    # A power of two given boxes, at least 16: a few compiled shapes whatever the count.
    padded = np.zeros((max(16, 1 << (len(boxes) - 1).bit_length()), 4))
    padded[:len(boxes)] = boxes / [width, height, width, height]
    padded[len(boxes):] = padded[0]
    scores = self._predict([prepared], padded[None], batch_size=1)["scores"][0]
    return np.asarray(scores[:len(boxes)], np.float64)

  def warm_up(self, canvas_hw: tuple[int, int], targets: Sequence[Target] = (FREE,), *,
              batch_size: int | None = None, keep: bool = False) -> None:
    """Prepares (compiles, or loads from the compilation cache) every pass that a batch of
    photos on a canvas_hw canvas needs for `targets`, on a blank batch padded to `batch_size`
    (default `self.batch_size`). `keep`: the photos come with keep regions of the user's
    (`crop_batch`'s `keep`), whose free proposals may grow as those with faces do.

    Thread-safe: a folder run warms each canvas up in the background as soon as its first
    photo is decoded, so compilation overlaps decoding and the other canvases' batches; a
    batch that needs a pass being prepared waits for it rather than preparing it again.
    """
    size = batch_size or self.batch_size
    blank = self._blank(canvas_hw)
    # A region at the blank's left edge, which most proposals leave out: free crops of it then
    # also run the pass that scores boxes grown to keep a region, as the photos will.
    regions = [[_edge_region(canvas_hw)]] if keep else None
    grows = ((self.face_detector is not None or keep) and self.predictor.reuses_encoding
             and any(t.ratio is None for t in targets))
    if not grows:
      self.crop_batch([blank], targets, top_k=1, batch_size=size, keep=regions)
      return
    # That pass is prepared beside the proposal pass rather than after it: the two compile at
    # once (experiments/README.md, "Start-up", session 24).
    with concurrent.futures.ThreadPoolExecutor(1) as side:
      grown = side.submit(self._warm_up_grown, blank, size)
      self.crop_batch([blank], targets, top_k=1, batch_size=size, keep=regions)
      grown.result()

  def _blank(self, canvas_hw: tuple[int, int]) -> Prepared:
    """A grey photo that fills a canvas_hw canvas; with a face detector, with a face at its
    left edge (`warm_up`)."""
    height, width = canvas_hw
    blank = Prepared(np.full((height, width, 3), 0.5, np.float32),
                     np.ones((2,), np.float32), (width, height))
    if self.face_detector is not None:
      blank.faces = np.array([_edge_region(canvas_hw)])
    return blank

  def _warm_up_grown(self, blank: Prepared, batch_size: int) -> None:
    """Prepares the pass that scores grown free proposals (`_free_crops`) of `blank`'s canvas,
    on an encoding of zeros of the proposal pass's shapes."""
    canvases, valid = self._padded([blank], batch_size)
    shapes = self.predictor.output_shapes(canvases, valid, keep_encoding=True)
    encoding = {k: np.zeros(v.shape, v.dtype) for k, v in shapes["encoding"].items()}
    boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (1, shapes["boxes"].shape[1], 1))
    self._predict([blank], boxes, encoding=encoding, batch_size=batch_size)

  def lower(self, canvas_hw: tuple[int, int], targets: Sequence[Target] = (FREE,), *,
            batch_size: int | None = None, keep: bool = False) -> None:
    """Traces and lowers (or reads back) the proposal pass of a canvas_hw canvas, without
    compiling it (`Predictor.output_shapes`); `keep` as for `warm_up`.

    A folder run calls it in a decoding thread before that thread looks for faces: tracing
    needs the interpreter, so the face detector's tracing would only slow the model's down,
    while the model's pass, the slowest to compile, can then start compiling sooner."""
    canvases, valid = self._padded([self._blank(canvas_hw)], batch_size or self.batch_size)
    self.predictor.output_shapes(canvases, valid,
                                 keep_encoding=self._keeps_encoding(targets, keep))

  def _keeps_encoding(self, targets: Sequence[Target], keeps_regions: bool) -> bool:
    """Whether a batch's proposal pass keeps its encoding for a scoring pass: for fixed
    ratios, and for free proposals that may grow to keep a region (always with a face
    detector, whether the batch's photos have faces or not: one proposal pass per canvas)."""
    may_grow = self.face_detector is not None or keeps_regions
    return ((any(t.ratio is not None for t in targets) or may_grow)
            and self.predictor.reuses_encoding)

  def warm_up_faces(self) -> None:
    """Prepares the face detector's pass on each of its canvases (none without a detector)."""
    if self.face_detector is not None:
      self.face_detector.warm_up(progress=self.predictor.progress)

  # ---------------------------------------------------------------------------------- batches
  def prepare(self, image: Image.Image,
              on_canvas: Callable[[tuple[int, ...]], Any] | None = None) -> Prepared:
    """An upright PIL photo on the model's canvas, with its faces (if the cropper finds them).

    `on_canvas(shape)` is called with the canvas's shape before the faces are looked for: a
    folder run starts preparing that canvas's passes then, so the model's compilation and the
    face detector's overlap."""
    canvas, valid_hw = photos.canvas(image, self.canvas_size, **self._canvas_args(*image.size))
    prepared = Prepared(canvas, valid_hw, image.size)
    if on_canvas is not None:
      on_canvas(canvas.shape)
    if self.face_detector is not None:
      prepared.faces = self.face_detector.detect(image)
    return prepared

  def detect_faces(self, image: ImageLike) -> np.ndarray:
    """The faces [F, 4] ([x1, y1, x2, y2] pixels) the cropper keeps in a photo, largest first."""
    if self.face_detector is None:
      return np.zeros((0, 4))
    return self.face_detector.detect(_to_pil(image, self.max_pixels))

  def _predict(self, batch: list[Prepared], boxes: np.ndarray | None = None, *,
               encoding: dict[str, np.ndarray] | None = None, keep_encoding: bool = False,
               batch_size: int | None = None) -> dict[str, Any]:
    """Predicts on a batch padded to batch_size (default `self.batch_size`), so that calls
    share a few shapes.

    The "encoding" it keeps stays padded, for the calls that reuse it."""
    n = len(batch)
    canvases, valid = self._padded(batch, batch_size or self.batch_size)
    if boxes is not None:
      boxes = np.concatenate([boxes, np.repeat(boxes[:1], len(canvases) - n, 0)])
    if encoding is not None:
      canvases = None
    outputs = self.predictor.predict(canvases, valid, boxes, encoding=encoding,
                                     keep_encoding=keep_encoding)
    return {k: v if k == "encoding" else v[:n] for k, v in outputs.items()}

  @staticmethod
  def _padded(batch: list[Prepared], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    shapes = {p.canvas.shape[:2] for p in batch}
    if len(shapes) > 1:
      raise ValueError(f"one batch holds canvases of several shapes {sorted(shapes)}: batch "
                       "photos of the same Cropper.canvas_shape")
    size = max(batch_size, len(batch))
    pad = [batch[0]] * (size - len(batch))
    return (np.stack([p.canvas for p in batch + pad]),
            np.stack([p.valid_hw for p in batch + pad]))

  def crop_batch(self, batch: list[Prepared], targets: Sequence[Target], *, top_k: int,
                 keep: Sequence[Sequence[Sequence[float]] | None] | None = None,
                 batch_size: int | None = None) -> list[dict[str, list[Crop]]]:
    """For each photo, target label -> its top_k crops, best first.

    `keep` holds each photo's own keep regions (pixel boxes); its faces are added to them.
    The model runs on the batch padded to `batch_size` photos (default `self.batch_size`):
    each size is its own compiled shape."""
    size = batch_size or self.batch_size
    results: list[dict[str, list[Crop]]] = [{} for _ in batch]
    regions = [p.keep_regions(keep[i] if keep is not None else None)
               for i, p in enumerate(batch)]
    ratios = [t for t in targets if t.ratio is not None]
    # Free proposals: the free crops, and (snapped) candidates of every fixed ratio. Fixed
    # ratios, and free proposals grown to keep a region, are then scored on the same photos:
    # the backbone, the encoder and the learned queries' decoder rows run once, in this pass.
    reuse = self._keeps_encoding(targets, any(len(r) for r in regions))
    proposals = self._predict(batch, keep_encoding=reuse, batch_size=size)
    encoding = proposals.get("encoding")
    proposals_px = [proposals["boxes"][i].astype(np.float64) * (p.size * 2)
                    for i, p in enumerate(batch)]
    if any(t.ratio is None for t in targets):
      free = self._free_crops(batch, proposals, proposals_px, regions, encoding, size)
      for i, (boxes, scores) in enumerate(free):
        results[i]["free"] = self._top(boxes, scores, top_k, "free", batch[i], regions[i])
    if ratios:
      score = lambda given: self._predict(batch, given, encoding=encoding,
                                          batch_size=size)["scores"]
      chosen = aspect.choose(
          score, proposals_px, [p.size for p in batch], [[t.ratio for t in ratios]] * len(batch),
          candidates=self.aspect_candidates, proposal_scores=list(proposals["scores"]),
          keep=regions)
      for i in range(len(batch)):
        for j, t in enumerate(ratios):
          boxes, scores = chosen[i][j]
          results[i][t.label] = self._top(boxes.astype(np.float64), scores, top_k, t.label,
                                          batch[i], regions[i])
    return results

  def _free_crops(self, batch: list[Prepared], proposals: dict[str, Any],
                  proposals_px: list[np.ndarray], regions: list[keep_lib.Regions],
                  encoding: dict[str, np.ndarray] | None, batch_size: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per photo, free candidate boxes [M, 4] and their scores.

    The proposals that contain the keep regions keep their confidence; the others are grown to
    contain them (keep.constrain_each; a free box always fits the keepable regions) and scored
    by the given-box path (one pass for the batch, only when some photo needs it), capped by
    the best proposal each grew from. Both estimate the IoU with an expert's crop for a model
    trained with `loss.given_iou_weight`, as the shipped one is."""
    out: list[dict[tuple[int, ...], float | None]] = []  # Box -> score, None: to be scored.
    # A grown box's score is capped by the best proposal it was grown from: moving a crop to
    # keep a region never ranks it above the model's own crop (the given-box scores run on a
    # scale of their own, and uncapped they outranked the proposals that already kept the
    # faces: out-of-fold free IoU fell 0.015 on the photos with faces).
    caps: list[dict[tuple[int, ...], float]] = []
    for i, p in enumerate(batch):
      out.append({})
      caps.append({})
      snapped_boxes = [aspect.snap_box(box, p.size) for box in proposals_px[i]]
      grown_boxes = keep_lib.constrain_each(np.array(snapped_boxes), regions[i], None, p.size)
      for snapped, grown, score in zip(snapped_boxes, grown_boxes, proposals["scores"][i]):
        if grown == snapped:
          out[i][snapped] = max(float(score), out[i].get(snapped) or -np.inf)
        else:
          out[i].setdefault(grown, None)
          caps[i][grown] = max(float(score), caps[i].get(grown, -np.inf))
    if any(None in o.values() for o in out):
      count = len(proposals_px[0])  # Never more grown boxes than proposals.
      pending = [[b for b, s in o.items() if s is None] or [next(iter(o))] for o in out]
      given = np.stack([np.resize(np.array(b, np.float64), (count, 4)) / (p.size * 2)
                        for b, p in zip(pending, batch)])
      scores = self._predict(batch, given, encoding=encoding, batch_size=batch_size)["scores"]
      for i, boxes in enumerate(pending):
        for box, score in zip(boxes, scores[i]):
          if out[i][box] is None:
            out[i][box] = min(float(score), caps[i][box])
    return [(np.array(list(o), np.float64).reshape(-1, 4), np.array(list(o.values()), np.float64))
            for o in out]

  def _top(self, boxes: np.ndarray, scores: np.ndarray, top_k: int, label: str,
           prepared: Prepared, regions: keep_lib.Regions) -> list[Crop]:
    scores = np.asarray(scores, np.float64)
    chosen = non_max_suppression(boxes, scores, iou_threshold=self.nms_iou, top_k=top_k)
    crops = []
    for i in chosen:
      box = tuple(int(v) for v in boxes[i])
      not_kept = np.nonzero(regions.left_out(box))[0]
      cut = np.nonzero(keep_lib.cut(box, prepared.faces))[0]
      crops.append(Crop(box, float(scores[i]), label, tuple(int(k) for k in not_kept),
                        tuple(int(k) for k in cut)))
    return crops


def _edge_region(canvas_hw: tuple[int, int]) -> list[float]:
  """A box at the left edge of a canvas_hw photo, which most proposals leave out."""
  height, width = canvas_hw
  return [0.0, 0.4 * height, 0.1 * width, 0.6 * height]


def calls_batch_size(photos_in_call: int, batch_size: int) -> int:
  """The batch a call of this many photos pads to: batch_size, or the smallest power of two
  that holds the photos if that is smaller (1 for a single photo)."""
  return min(batch_size, 1 << max(photos_in_call - 1, 0).bit_length())


def user_regions(keep: Sequence[Sequence[float]] | None = None,
                 focus: tuple[float, float] | None = None) -> list[tuple[float, ...]]:
  """A user's keep boxes and focal point as keep regions (pixel boxes), boxes first."""
  regions = [tuple(float(v) for v in box) for box in (keep or ())]
  if any(len(box) != 4 for box in regions):
    raise ValueError(f"keep: expected [x1, y1, x2, y2] boxes, got {keep}")
  if focus is not None:
    regions.append(keep_lib.focus_region(*focus))
  return regions
