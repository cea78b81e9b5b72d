"""Faces found offline, to become keep regions (keep.py) so that crops keep people whole.

The detector is BlazeFace's full-range network (face_net.py), whose weights ship inside the
package: nothing is downloaded at run time and no TensorFlow or OpenCV is needed. A photo is
resized to fit a canvas of `DETECT_SIDE` px on its long side (square, 384 x 288 for photos of
4:3 and longer, 384 x 256 for 3:2 and longer, either way round) at its top left, so all photos
run five compiled executables. Why this detector and side (experiments/README.md, "Faces", has
the figures, against OpenCV's Haar cascade at 1024 px):

- Small faces. At 384 px BlazeFace finds about half the faces of 2-5% of the photo's short side,
  three quarters of those of 5-10% and nearly all larger ones. At 192 px (its native input) it
  finds none of the small ones: `--face-side 192` is about 4x cheaper for photos of close faces.
- Cost: about 20 CPU-ms per photo at 384 px (11.5 ms of wall time on two CPU cores; 6.6 CPU-ms
  at 192), against 200-500 ms for the Haar cascade at 1024 px, which finds more of the smallest
  faces but only frontal ones. It is about as much as the crop itself: faces on, `procrop crop`
  runs at about 0.58x its `--no-faces` speed.
- It finds profiles and turned faces the cascade misses. Above the 0.5 score threshold it
  raised none on scikit-image's photos without faces; on FCDB its detections that the cascade
  lacks (0.24 per photo) mix false alarms with faces the cascade misses, not checked by eye.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Sequence

import jax
import numpy as np
from PIL import Image

from procrop_jax import exported_passes
from procrop_jax import face_net

DETECT_SIDE = 384  # The long side of the canvas the detector sees (see check_side).
SCORE_THRESHOLD = 0.5
MAX_FACES = 16
# Short sides of the detector's canvases, as fractions of its long side: 3:2 and longer photos,
# then 4:3 and longer; squarer photos go on a square canvas.
SHORT_FRACTIONS = (2 / 3, 3 / 4)
# A keep region is the face box grown by these fractions of its size: BlazeFace's box runs from
# the forehead to the chin; hair needs room above it, the chin a little below.
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_SIDES = 0.5, 0.15, 0.15
# Faces at least this fraction of the largest face's width are the photo's subjects, which every
# crop keeps; smaller ones (people in the background) may be left out whole, never cut.
MAIN_FACE_FRACTION = 0.5


class FaceDetector:
  """Faces of photos: `detect(image) -> [F, 4]` pixel boxes, largest first."""

  def __init__(self, *, detect_side: int = DETECT_SIDE, score_threshold: float = SCORE_THRESHOLD):
    check_side(detect_side)
    self.detect_side = detect_side
    self.score_threshold = score_threshold
    self._calls = exported_passes.OncePerKey()  # Canvas shape -> its prepared pass.

  @functools.cached_property
  def _net(self) -> face_net.FaceNet:
    # Loaded at the first photo: the cropper's start-up does not wait for it.
    return face_net.load("full")

  def _prepare(self, shape: tuple[int, int]) -> Callable:
    """The detector's pass for a canvas shape, a function of (images, valid). With JAX's
    persistent compilation cache on (the cropper turns it on), the lowered pass is kept beside
    it (exported_passes.py), so a later process neither traces nor compiles it."""
    net = self._net
    options = dict(k=MAX_FACES, score_threshold=self.score_threshold)
    step = face_net.batch_step(net, **options)
    folder = jax.config.jax_compilation_cache_dir
    if not folder:
      step = jax.jit(step, compiler_options=face_net.compiler_options())
      return lambda images, valid: step(net.params, {"images": images, "valid": valid})
    specs = exported_passes.leaf_specs(sorted(net.params.items()))
    passes = exported_passes.ExportedPasses(folder, {
        "model": "faces/full", "file": face_net.model_digest("full"), **options},
        options=face_net.compiler_options())
    batch = {"images": np.zeros((1, *shape, 3), np.uint8), "valid": np.zeros((1, 2), np.int32)}
    call = passes.get("detect", specs, batch, lambda: (step, net.params))
    leaves = [net.params[name] for name, _, _ in specs]
    return lambda images, valid: call(leaves, {"images": images, "valid": valid})

  def _run(self, canvas: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The detector on one canvas. A shape's first call prepares its pass (seconds) while
    threads decoding other photos of that shape wait for it, rather than preparing it again."""
    shape = canvas.shape[1:3]
    return self._calls.get_or_make(shape, lambda: self._prepare(shape))(canvas, valid)

  def canvas_shape(self, size: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) canvas a (width, height) photo is detected on: `detect_side` on its
    long side, and on its short side the first of `SHORT_FRACTIONS` of that (rounded up to 32)
    the photo fits at full scale. Five shapes to compile; on FCDB's mix of photos (40% are 4:3)
    they hold 18% fewer pixels on average than the three before (square, and 384 x 256 for 3:2
    and longer)."""
    side = self.detect_side
    width, height = size
    long_side, short_side = max(width, height), min(width, height)
    short, multiple = side, face_net.SIDE_MULTIPLE
    for fraction in SHORT_FRACTIONS:
      rows = -(-round(side * fraction) // multiple) * multiple
      if short_side * side <= rows * long_side:
        short = rows
        break
    return (short, side) if width >= height else (side, short)

  def canvas_shapes(self) -> list[tuple[int, int]]:
    """Every (height, width) canvas photos are detected on."""
    return sorted({self.canvas_shape(size) for size in ((3, 2), (4, 3), (1, 1), (3, 4), (2, 3))})

  def warm_up(self, progress: Callable[[str], None] | None = None,
              shapes: Sequence[tuple[int, int]] | None = None) -> None:
    """Prepares the pass of every canvas shape (compiled, or loaded from the compilation
    cache), so that no photo waits for one: `procrop serve` does this before it is ready.
    `shapes`: only these (height, width) canvases (`canvas_shape`). `progress` (e.g.
    `inference.progress_to_stderr`) is told before and after."""
    every = shapes is None
    shapes = self.canvas_shapes() if every else list(shapes)
    which = f"its {len(shapes)}" if every else f"{len(shapes)} of its"
    start = time.perf_counter()
    if progress is not None:
      cache = jax.config.jax_compilation_cache_dir
      progress(f"Preparing the face detector for {which} canvases: "
               + (f"compiled once, or loaded from {cache}" if cache else "compiled (no cache)"))
    for height, width in shapes:
      self._run(np.zeros((1, height, width, 3), np.uint8), np.array([[height, width]], np.int32))
    if progress is not None:
      progress(f"  ready in {time.perf_counter() - start:.1f} s")

  def detect(self, image: Image.Image) -> np.ndarray:
    """Faces [F, 4] ([x1, y1, x2, y2] float pixels of the upright photo), largest first."""
    canvas_height, canvas_width = self.canvas_shape(image.size)
    scale = min(canvas_width / image.width, canvas_height / image.height)
    width = max(min(round(image.width * scale), canvas_width), 1)
    height = max(min(round(image.height * scale), canvas_height), 1)
    canvas = np.zeros((1, canvas_height, canvas_width, 3), np.uint8)
    # reducing_gap: a 12 MP photo shrinks in 11 ms instead of 37 (photos.canvas does the same).
    canvas[0, :height, :width] = np.asarray(image.convert("RGB").resize(
        (width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))
    boxes, scores = self._run(canvas, np.array([[height, width]], np.int32))
    # On the host first: indexing the device arrays would compile a slicing op of its own.
    boxes, scores = np.asarray(boxes, np.float64)[0], np.asarray(scores)[0]
    sx, sy = width / image.width, height / image.height
    boxes = boxes[scores > 0] / [sx, sy, sx, sy]
    boxes = np.clip(boxes, 0, [image.width, image.height, image.width, image.height])
    return boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]), kind="stable")]


def check_side(side: int) -> None:
  """Raises ValueError unless `side` can be the detector's canvas side: a multiple of
  `face_net.SIDE_MULTIPLE` (32), at least 64."""
  if side < 64 or side % face_net.SIDE_MULTIPLE:
    raise ValueError(f"The face detector's side must be a multiple of {face_net.SIDE_MULTIPLE} "
                     f"and at least 64, got {side}.")


def main_faces(faces: np.ndarray) -> np.ndarray:
  """bool [F]: the faces a crop must keep, those of at least `MAIN_FACE_FRACTION` of the
  largest face's width."""
  faces = np.asarray(faces, np.float64).reshape(-1, 4)
  widths = faces[:, 2] - faces[:, 0]
  return widths >= MAIN_FACE_FRACTION * widths.max(initial=0.0)


def keep_regions(faces: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Faces [F, 4] grown by the margins for hair and chin, clipped to the (width, height) photo."""
  faces = np.asarray(faces, np.float64).reshape(-1, 4)
  w, h = faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1]
  grown = np.stack([faces[:, 0] - MARGIN_SIDES * w, faces[:, 1] - MARGIN_TOP * h,
                    faces[:, 2] + MARGIN_SIDES * w, faces[:, 3] + MARGIN_BOTTOM * h], axis=1)
  width, height = size
  return np.clip(grown, 0, [width, height, width, height])
