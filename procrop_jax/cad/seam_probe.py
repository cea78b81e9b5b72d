"""A probe for out-painting traces: can low-level statistics alone find the pseudo-label?

A CAD canvas's pseudo-label is where the original photo sits. If the out-painted margin differs
from the photo in blur, grain, sharpness or colour spread, a crop model can find the frame from
those traces instead of learning composition. The probe measures how much such traces give away:
per-column and per-row profiles of low-level statistics of the canvas (`profiles`), and a ridge
regression from them to the box (`fit`), scored by IoU on canvases of photos it was not fitted on
(`evaluate`, leave one photo out), next to the trivial baseline that always answers the mean box
of the training canvases. A probe no better than the baseline finds nothing to exploit.

The probe sees statistics, not content: a network could still find traces it cannot (a mirrored
object at the frame, say). It bounds the cheap shortcuts, not every shortcut.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np
from PIL import Image

from procrop_jax import box_geometry
from procrop_jax import photos as photos_lib
from procrop_jax.cad import generate
from procrop_jax.cad import outpaint as outpaint_lib

BINS = 16  # Profile length: the canvas's width (height) is cut into this many strips.
RIDGE_PENALTIES = (0.1, 1.0, 10.0, 100.0, 1000.0)


def _strips(values: np.ndarray, axis: int) -> np.ndarray:
  """The mean of a [H, W] map over each of `BINS` strips along `axis` (1: columns, 0: rows)."""
  per_line = values.mean(axis=1 - axis)
  edges = np.linspace(0, len(per_line), BINS + 1).round().astype(int)
  return np.array([per_line[a:max(b, a + 1)].mean() for a, b in zip(edges[:-1], edges[1:])])


def profiles(canvas: np.ndarray) -> np.ndarray:
  """Low-level statistics of a uint8 [H, W, 3] canvas along x and along y: [2, 6, BINS].

  Per strip: gradient energy (structure), Laplacian energy (sharpness: a blurred fill has
  little), fine-scale residual (grain), the spread and mean brightness of colour (a
  colour-matched fill keeps the photo's), and gradient energy at 4 times the scale. Each profile
  is divided by its own mean, so a canvas's overall contrast does not matter, only where along
  the axis the statistics change.
  """
  image = canvas.astype(np.float32) / 255.0
  gray = image.mean(-1)
  gy, gx = np.gradient(gray)
  gradient = gx ** 2 + gy ** 2
  padded = np.pad(gray, 1, mode="edge")
  neighbours = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:])
  laplacian = (neighbours - 4 * gray) ** 2
  grain = np.abs(gray - (neighbours + gray) / 5)
  spread = image.std(-1) + np.abs(image - image.mean((0, 1))).mean(-1)
  # Structure at 4 times the scale: a fill that only fakes the finest detail still lacks it.
  h4, w4 = gray.shape[0] // 4 * 4, gray.shape[1] // 4 * 4
  coarse = gray[:h4, :w4].reshape(h4 // 4, 4, w4 // 4, 4).mean((1, 3))
  cy, cx = np.gradient(coarse)
  maps = (gradient, laplacian, grain, spread, gray, cx ** 2 + cy ** 2)
  out = np.array([[_strips(m, axis) for m in maps] for axis in (1, 0)])
  return out / (out.mean(-1, keepdims=True) + 1e-6)


def mirror_profiles(canvas: np.ndarray, *, window: float = 0.05,
                    candidates: int = 4 * BINS) -> np.ndarray:
  """How mirror-like the canvas is about lines across x and across y: [2, BINS].

  A reflected fill makes the canvas symmetric about the photo's frame. For `candidates` lines
  along each axis, the mean absolute difference between the `window` (a fraction of the side)
  of rows or columns before the line and their mirror images after it, divided by the same
  difference without the mirror (the rows or columns after the line in their own order); the
  least of each strip's candidates. Low values mark a mirror axis: where a reflected fill meets
  the photo.
  """
  gray = canvas.astype(np.float32).mean(-1) / 255.0
  out = np.ones((2, BINS), np.float32)
  for a, lines in enumerate((gray.T, gray)):  # Columns (lines across x), then rows.
    n = len(lines)
    width = max(2, int(window * n))
    positions = np.linspace(width, n - width, candidates).round().astype(int)
    scores = []
    for p in positions:
      before = lines[p - width:p][::-1]  # Nearest the line first.
      after = lines[p:p + width]
      plain = lines[p - width:p]
      scores.append(np.abs(before - after).mean() / (np.abs(plain - after).mean() + 1e-6))
    strip = np.minimum((positions * BINS) // n, BINS - 1)
    for b in range(BINS):
      if np.any(strip == b):
        out[a, b] = min(np.array(scores)[strip == b])
  return out


def features(canvas: np.ndarray, *, mirror: bool = False) -> np.ndarray:
  """The probe's input: the profiles, their steps from strip to strip, and the canvas's aspect;
  with `mirror`, also `mirror_profiles` (the trace of a reflected fill)."""
  p = np.log(profiles(canvas) + 1e-3)
  steps = np.diff(p, axis=-1)
  h, w = canvas.shape[:2]
  parts = [p.ravel(), steps.ravel(), [np.log(w / h)]]
  if mirror:
    parts.append(np.log(mirror_profiles(canvas) + 1e-3).ravel())
  return np.concatenate(parts)


@dataclasses.dataclass
class Ridge:
  """y = (x - mean) / scale @ weights + bias."""
  mean: np.ndarray
  scale: np.ndarray
  weights: np.ndarray
  bias: np.ndarray

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return (x - self.mean) / self.scale @ self.weights + self.bias


def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> Ridge:
  mean, scale = x.mean(0), x.std(0) + 1e-6
  z = (x - mean) / scale
  centred = y - y.mean(0)
  if len(z) < z.shape[1]:  # Fewer canvases than features: the same solution, a smaller system.
    weights = z.T @ np.linalg.solve(z @ z.T + penalty * np.eye(len(z)), centred)
  else:
    weights = np.linalg.solve(z.T @ z + penalty * np.eye(z.shape[1]), z.T @ centred)
  return Ridge(mean, scale, weights, y.mean(0))


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> Ridge:
  """A ridge regression whose penalty is chosen by leave-one-group-out squared error."""
  def cv_error(penalty):
    error = 0.0
    for g in np.unique(groups):
      held = groups == g
      error += ((fit_ridge(x[~held], y[~held], penalty)(x[held]) - y[held]) ** 2).sum()
    return error
  penalty = min(RIDGE_PENALTIES, key=cv_error) if len(np.unique(groups)) > 1 else 10.0
  return fit_ridge(x, y, penalty)


def as_box(y: np.ndarray) -> np.ndarray:
  """Regression outputs -> valid normalised x1y1x2y2 boxes (clipped, ordered, not empty)."""
  y = np.clip(y, 0.0, 1.0)
  x1, x2 = np.minimum(y[:, 0], y[:, 2]), np.maximum(y[:, 0], y[:, 2])
  y1, y2 = np.minimum(y[:, 1], y[:, 3]), np.maximum(y[:, 1], y[:, 3])
  return np.stack([x1, y1, np.maximum(x2, x1 + 1e-3), np.maximum(y2, y1 + 1e-3)], -1)


def mean_iou(pred: np.ndarray, true: np.ndarray) -> float:
  return float(np.mean([box_geometry.pairwise_box_iou(p, t)[0, 0] for p, t in zip(pred, true)]))


@dataclasses.dataclass
class ProbeResult:
  probe_iou: float  # The probe's mean IoU on held-out photos' canvases.
  baseline_iou: float  # The mean training box's.
  canvases: int
  photos: int

  @property
  def advantage(self) -> float:
    return self.probe_iou - self.baseline_iou


def evaluate(x: np.ndarray, boxes: np.ndarray, groups: Sequence[int]) -> ProbeResult:
  """Leave one photo out: fit on the other photos' canvases, score on this one's.

  Args:
    x: [N, D] `features` of N canvases.
    boxes: [N, 4] their pseudo-labels, x1y1x2y2 normalised by the canvas.
    groups: [N] the photo each canvas was made from.
  """
  groups = np.asarray(groups)
  probe, baseline = np.zeros_like(boxes), np.zeros_like(boxes)
  for g in np.unique(groups):
    held = groups == g
    probe[held] = fit(x[~held], boxes[~held], groups[~held])(x[held])
    baseline[held] = boxes[~held].mean(0)
  return ProbeResult(mean_iou(as_box(probe), boxes), mean_iou(as_box(baseline), boxes),
                     len(boxes), len(np.unique(groups)))


def generate_canvases(photo_paths: Sequence[str], *, variants: int,
                      outpainter: outpaint_lib.OutPainter | None = None, seed: int = 0,
                      max_side: int = 256, min_area_fraction: float = 0.3,
                      max_area_fraction: float = 0.8, mirror: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`variants` canvases of each photo, as the generator makes them (JPEG round trip included);
  `mirror` adds the mirror-symmetry profiles to the features.

  Returns:
    (features [N, D], pseudo-labels [N, 4] normalised x1y1x2y2, photo index [N]).
  """
  outpainter = outpainter or outpaint_lib.ReflectBlurOutPainter()
  x, boxes, groups = [], [], []
  for index, path in enumerate(photo_paths):
    photo = photos_lib.load_photo(path, max_side=max_side)
    for k in range(variants):
      canvas, plan = generate.make_canvas(
          photo, generate.variant_rng(seed, str(index), k), outpainter=outpainter,
          min_area_fraction=min_area_fraction, max_area_fraction=max_area_fraction)
      canvas = np.asarray(Image.open(io.BytesIO(generate.encode_jpeg(canvas))).convert("RGB"))
      top, left, bottom, right = plan.box_yxyx
      x.append(features(canvas, mirror=mirror))
      boxes.append([left / plan.canvas_w, top / plan.canvas_h, right / plan.canvas_w,
                    bottom / plan.canvas_h])
      groups.append(index)
  return np.array(x), np.array(boxes), np.array(groups)
