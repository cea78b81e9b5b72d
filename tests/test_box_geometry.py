"""Tests for procrop_jax.box_geometry: hand-computed IoUs, degenerate and invalid boxes."""

import numpy as np
import pytest

from procrop_jax import box_geometry


def test_box_iou_hand_cases():
  ious = box_geometry.pairwise_box_iou(
      [[0, 0, 10, 10], [0, 0, 4, 2]],
      [[5, 5, 15, 15], [2, 0, 6, 2], [10, 0, 20, 10], [0, 0, 10, 10]])
  np.testing.assert_allclose(ious, [
      [25 / 175, 8 / 100, 0.0, 1.0],  # overlap, containment, touching edge, identical
      [0.0, 4 / 12, 0.0, 8 / 100],
  ], rtol=1e-15)


def test_box_iou_degenerate_and_invalid_boxes():
  assert box_geometry.pairwise_box_iou([3, 3, 3, 3], [3, 3, 3, 3])[0, 0] == 0.0  # empty union
  assert box_geometry.pairwise_box_iou([0, 0, 0, 10], [0, 0, 10, 10])[0, 0] == 0.0  # zero-area box
  with pytest.raises(ValueError, match="x2 >= x1"):
    box_geometry.pairwise_box_iou([5, 0, 1, 10], [0, 0, 10, 10])
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    box_geometry.pairwise_box_iou([0, 0, 1], [0, 0, 10, 10])
  with pytest.raises(ValueError, match="finite"):
    box_geometry.pairwise_box_iou([0, 0, np.nan, 1], [0, 0, 10, 10])


def test_xywh_to_xyxy():
  np.testing.assert_array_equal(box_geometry.xywh_to_xyxy([266, 6, 757, 399]), [266, 6, 1023, 405])
