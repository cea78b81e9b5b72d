"""Keep regions: candidates moved and grown to contain them, with known answers."""

import numpy as np
import pytest

from procrop_jax import aspect
from procrop_jax import box_geometry
from procrop_jax import keep


def _ratio_ok(box, ratio):
  w, h = box[2] - box[0], box[3] - box[1]
  return abs(w - h * ratio) <= 1 if ratio >= 1 else abs(h - w / ratio) <= 1


def test_as_regions_rounds_outwards_and_clips_to_the_photo():
  regions = keep.as_regions([[10.4, 5.6, 20.2, 30.9], [-5, -5, 900, 10]], (100, 50))
  np.testing.assert_array_equal(regions, [[10, 5, 21, 31], [0, 0, 100, 10]])
  # Wholly outside the photo: no area, never keepable.
  assert not keep.valid(keep.as_regions([[200, 0, 300, 10]], (100, 50)))[0]


def test_contain_moves_a_box_the_least_to_cover_a_region():
  # A 100 x 100 box at the left; a region at x 150-180 needs the box moved right to x 80-180.
  assert keep.contain((0, 0, 100, 100), np.array([[150, 10, 180, 40]]), 1.0, (400, 200)) == (
      80, 0, 180, 100)
  # A region already inside: the box stays.
  assert keep.contain((0, 0, 100, 100), np.array([[10, 10, 20, 20]]), 1.0, (400, 200)) == (
      0, 0, 100, 100)


def test_contain_grows_the_box_keeping_its_ratio():
  # Two regions 300 px apart: a 16:9 box must be at least 300 wide.
  regions = np.array([[0, 50, 20, 70], [280, 50, 300, 70]])
  box = keep.contain((100, 50, 260, 140), regions, 16 / 9, (400, 300))
  assert box[0] <= 0 and box[2] >= 300 and _ratio_ok(box, 16 / 9)
  assert keep.contained(box, regions).all()


def test_a_region_no_box_of_the_ratio_can_contain_is_reported_not_kept():
  # The whole height of a 400 x 300 photo fits no 16:9 box inside it (at most 400 x 225).
  size, tall = (400, 300), np.array([[0, 0, 10, 300]])
  assert keep.contain((0, 0, 160, 90), tall, 16 / 9, size) is None
  assert keep.keepable_subset(tall, 16 / 9, size).tolist() == []
  # With a small region too, the small one is kept and the tall one left out.
  regions = np.array([[0, 0, 10, 300], [300, 100, 320, 120]])
  assert keep.keepable_subset(regions, 16 / 9, size).tolist() == [1]
  boxes = keep.constrain(np.array([[0, 0, 160, 90]]), regions, 16 / 9, size)
  assert keep.contained(boxes[0], regions).tolist() == [False, True]


def test_the_most_regions_are_kept_earlier_ones_first():
  # Three points along a 1000 px wide photo; a 1:1 box of the 400 px height holds two
  # neighbours only.
  size = (1000, 400)
  points = np.array([keep.focus_region(x, 200) for x in (50, 300, 900)])
  assert keep.keepable_subset(points, 1.0, size).tolist() == [0, 1]


def test_faces_too_tall_with_their_margins_are_kept_tight():
  # A 16:9 box of a 400 x 300 photo is at most 225 tall: the face (200 tall) fits, its margins
  # (290 tall) do not, so candidates contain the face as found.
  size = (400, 300)
  regions = keep.Regions(np.array([[100, 0, 300, 290]]), np.array([[120, 50, 280, 250]]))
  boxes = keep.constrain(np.array([[0, 0, 160, 90]]), regions, 16 / 9, size)
  assert keep.contained(boxes[0], regions.tight)[0] and _ratio_ok(boxes[0], 16 / 9)


def test_cut_is_between_five_and_ninety_five_percent():
  faces = np.array([[0, 0, 10, 10], [0, 0, 100, 100], [50, 50, 60, 60]])
  np.testing.assert_array_equal(keep.cut((0, 0, 50, 100), faces), [False, True, False])


def _oracle(size, target):
  def score(given):
    return box_geometry.pairwise_box_iou(given.reshape(-1, 4) * (size * 2), target[None]
                                         )[:, 0].reshape(given.shape[:2])
  return score


@pytest.mark.parametrize("ratio", [1.0, 16 / 9, 4 / 5])
def test_fixed_aspect_crops_contain_the_region_even_where_the_model_prefers_elsewhere(ratio):
  size = (900, 600)
  preferred = np.array([0.0, 0.0, 300.0, 300.0])  # The model likes the top-left corner ...
  face = np.array([[700, 400, 760, 470]])  # ... and a face sits at the bottom right.
  proposals = [np.array([preferred, [0, 0, 900, 600]])]
  chosen = aspect.choose(_oracle(size, preferred), proposals, [size], [[ratio]], keep=[face])
  boxes, scores = chosen[0][0]
  assert len(boxes) and all(keep.contained(b, face)[0] for b in boxes)
  assert all(_ratio_ok(b, ratio) for b in boxes)
  # The best is the smallest box of the ratio nearest the preferred one that holds the face.
  assert scores[0] == scores.max()


def test_a_focal_point_at_a_corner_is_kept():
  size = (640, 480)
  corner = np.array([keep.focus_region(639, 479)])
  preferred = np.array([100.0, 100.0, 300.0, 300.0])
  for ratio in (1.0, 16 / 9, 4 / 5):
    boxes, _ = aspect.choose(_oracle(size, preferred), [np.array([preferred])], [size],
                             [[ratio]], keep=[corner])[0][0]
    assert boxes[0][2] == 640 and boxes[0][3] == 480 and _ratio_ok(boxes[0], ratio)


def test_without_regions_choose_is_unchanged():
  size = (800, 600)
  preferred = np.array([120.0, 90.0, 620.0, 465.0])
  proposals = [np.array([[100, 80, 640, 470], [0, 0, 800, 600]], np.float64)]
  plain = aspect.choose(_oracle(size, preferred), proposals, [size], [[4 / 3]])
  empty = aspect.choose(_oracle(size, preferred), proposals, [size], [[4 / 3]],
                        keep=[np.zeros((0, 4), np.int64)])
  np.testing.assert_array_equal(plain[0][0][0], empty[0][0][0])


def test_a_whole_or_out_region_is_left_out_or_held_whole_never_cut():
  size = (400, 300)
  face = np.array([[20, 100, 80, 160]])  # On the left.
  regions = keep.Regions(face, face, np.array([True]))
  apart = keep.constrain(np.array([[150, 50, 390, 290]]), regions, None, size)
  assert apart.tolist() == [[150, 50, 390, 290]]  # Far from the face: left as it is.
  across = keep.constrain(np.array([[50, 50, 300, 290]]), regions, None, size)
  assert keep.contained(across[0], face)[0]  # Through the face: grown to hold it whole.
  assert not regions.left_out(apart[0])[0] and not regions.left_out(across[0])[0]
  # The same box as a required region must be contained either way.
  required = keep.constrain(np.array([[150, 50, 390, 290]]), face, None, size)
  assert keep.contained(required[0], face)[0]


def test_growing_for_one_face_takes_in_the_next_it_reaches():
  size = (600, 300)
  faces = np.array([[100, 100, 160, 160], [40, 100, 105, 160]])  # Side by side, touching.
  regions = keep.Regions(faces, faces, np.array([True, True]))
  # The box cuts the first face only; moved to hold it (left edge at x 100) it would hold 5 of
  # the second's 65 px, a cut, so it moves on to hold that one too.
  (box,) = keep.constrain(np.array([[120, 40, 500, 260]]), regions, None, size)
  assert box.tolist() == [40, 40, 420, 260]
  assert keep.contained(box, faces).all()


def test_small_faces_never_displace_a_main_one():
  # A tall photo: the main face at the top left, two small faces at the bottom right. A 16:9
  # box can hold the main face or the two small ones, not all three; the main one is kept.
  size = (400, 900)
  main = [20, 40, 120, 140]
  small = [[300, 800, 330, 830], [340, 800, 370, 830]]
  faces = np.array([main, *small], float)
  regions = keep.Regions(faces, faces, np.array([False, True, True]))
  boxes = keep.constrain(np.array([[0, 600, 400, 825], [0, 300, 400, 525]]), regions, 16 / 9,
                         size)
  assert len(boxes) and all(keep.contained(b, faces[:1])[0] for b in boxes)
  assert all(not regions.left_out(b)[0] for b in boxes)
