"""Box geometry in numpy: boxes `[x1, y1, x2, y2]` in continuous coordinates, checked once.

Shared by the metrics' protocols, the dataset builders, CAD refinement and the cropper (the JAX
counterparts the model and its losses use are in box_ops.py). Width = x2 - x1, with no
MATLAB-style "+ 1"; a box with x2 < x1 or y2 < y1 is an error (ValueError), a zero-area box is
allowed and has IoU 0 with everything.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def as_boxes(boxes: ArrayLike, name: str) -> np.ndarray:
  """Checks and returns float64 boxes [N, 4]; a single box [4] becomes [1, 4]."""
  b = np.asarray(boxes, dtype=np.float64)
  if b.ndim == 1:
    b = b[None]
  if b.ndim != 2 or b.shape[1] != 4:
    raise ValueError(f"{name}: expected boxes of shape [N, 4] or [4], got {np.shape(boxes)}")
  if not np.all(np.isfinite(b)):
    raise ValueError(f"{name}: boxes must be finite, got {b[~np.isfinite(b).all(1)][:3]}")
  bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
  if np.any(bad):
    raise ValueError(f"{name}: boxes must have x2 >= x1 and y2 >= y1 ([x1, y1, x2, y2]); "
                     f"offending rows {np.nonzero(bad)[0].tolist()}: {b[bad][:3].tolist()}")
  return b


def xywh_to_xyxy(boxes: ArrayLike) -> np.ndarray:
  """`[x, y, w, h]` (FCDB's `crop` field) to `[x1, y1, x2, y2]`, same units, float64."""
  b = np.asarray(boxes, dtype=np.float64)
  return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def pairwise_intersection(boxes1_px: ArrayLike, boxes2_px: ArrayLike) -> np.ndarray:
  """[N, M] areas of every box of the first set intersected with every box of the second."""
  return _intersection(as_boxes(boxes1_px, "boxes1_px")[:, None, :],
                       as_boxes(boxes2_px, "boxes2_px")[None, :, :])


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection areas of checked boxes broadcast against each other ([..., 4] each)."""
  iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0)
  ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0)
  return iw * ih


def pairwise_box_iou(boxes1_px: ArrayLike, boxes2_px: ArrayLike) -> np.ndarray:
  """Pairwise intersection over union (every box of the first set with every box of the second).

  IoU(a, b) = |a ∩ b| / (|a| + |b| - |a ∩ b|), areas in continuous coordinates. A pair whose
  union is empty (two zero-area boxes) has IoU 0.

  Args:
    boxes1_px: [N, 4] (or [4]) boxes `[x1, y1, x2, y2]`, pixels.
    boxes2_px: [M, 4] (or [4]) boxes, same frame.

  Returns:
    [N, M] float64.
  """
  a = as_boxes(boxes1_px, "boxes1_px")[:, None, :]
  b = as_boxes(boxes2_px, "boxes2_px")[None, :, :]
  inter = _intersection(a, b)
  union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
           + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter)
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
