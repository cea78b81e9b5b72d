"""Box conversions, IoU and GIoU on hand-computed cases."""

import numpy as np
import pytest

from procrop_jax import box_ops


def test_conversions_round_trip():
  xyxy = np.array([[0.1, 0.2, 0.5, 0.8], [0.0, 0.0, 1.0, 1.0]], np.float32)
  cxcywh = box_ops.xyxy_to_cxcywh(xyxy)
  np.testing.assert_allclose(cxcywh, [[0.3, 0.5, 0.4, 0.6], [0.5, 0.5, 1.0, 1.0]], atol=1e-6)
  np.testing.assert_allclose(box_ops.cxcywh_to_xyxy(cxcywh), xyxy, atol=1e-6)


def test_iou_and_giou_hand_cases():
  a = np.array([0.0, 0.0, 0.5, 0.5], np.float32)
  same = a
  half = np.array([0.25, 0.0, 0.75, 0.5], np.float32)  # Overlap 0.25 x 0.5 of two 0.25 areas.
  apart = np.array([0.75, 0.75, 1.0, 1.0], np.float32)  # Disjoint, enclosing box 1 x 1.
  np.testing.assert_allclose(box_ops.box_iou(a, same), 1.0)
  np.testing.assert_allclose(box_ops.box_iou(a, half), 0.125 / 0.375, rtol=1e-6)
  np.testing.assert_allclose(box_ops.box_iou(a, apart), 0.0)
  np.testing.assert_allclose(box_ops.generalized_box_iou(a, same), 1.0)
  # Enclosing box of a and half: 0.75 x 0.5 = 0.375 = union, so GIoU == IoU.
  np.testing.assert_allclose(box_ops.generalized_box_iou(a, half), 1 / 3, rtol=1e-6)
  union = 0.25 + 0.0625
  np.testing.assert_allclose(box_ops.generalized_box_iou(a, apart), 0.0 - (1.0 - union) / 1.0,
                             rtol=1e-6)


def test_degenerate_boxes_are_finite():
  point = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
  assert np.isfinite(box_ops.box_iou(point, point))
  assert np.isfinite(box_ops.generalized_box_iou(point, point))
  assert box_ops.box_area(np.array([0.5, 0.5, 0.4, 0.6])) == 0.0  # Inverted: empty.


@pytest.mark.parametrize("fn,pair_fn", [
    (box_ops.box_iou, box_ops.pairwise_box_iou),
    (box_ops.generalized_box_iou, box_ops.pairwise_generalized_box_iou),
])
def test_pairwise_matches_elementwise(fn, pair_fn):
  rng = np.random.default_rng(0)
  def boxes(n):
    xy = rng.uniform(0, 0.6, (2, n, 2))
    return np.concatenate([xy[0], xy[0] + rng.uniform(0.05, 0.4, (n, 2))], -1).astype(np.float32)
  a, b = boxes(5), boxes(3)
  pair = np.asarray(pair_fn(a[None], b[None]))[0]  # Leading batch dimension.
  assert pair.shape == (5, 3)
  for i in range(5):
    for j in range(3):
      np.testing.assert_allclose(pair[i, j], fn(a[i], b[j]), rtol=1e-6)
  assert np.all(pair <= 1.0 + 1e-6)
