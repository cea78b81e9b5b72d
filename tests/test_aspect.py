"""Fixed-aspect crops: candidate geometry and the choice by the model's scores."""

import numpy as np
import pytest

from procrop_jax import aspect
from procrop_jax import box_geometry


def _ratio_ok(box, ratio):
  x1, y1, x2, y2 = box
  w, h = x2 - x1, y2 - y1
  # Within one pixel: the longer side is rounded from the shorter one.
  return abs(w - h * ratio) <= 1 or abs(h - w / ratio) <= 1


@pytest.mark.parametrize("ratio", [1.0, 16 / 9, 4 / 5, 3.0, 0.3])
def test_snapped_proposals_have_the_ratio_and_lie_inside_the_photo(ratio):
  rng = np.random.default_rng(0)
  for _ in range(50):
    size = tuple(int(v) for v in rng.integers(20, 1500, 2))
    corners = rng.uniform(-0.1, 1.1, (6, 2, 2)) * size
    proposals = np.concatenate([corners.min(1), corners.max(1) + 1], -1)
    boxes = aspect.proposal_candidates(proposals, ratio, size)
    assert boxes.shape == (12, 4)
    for box in boxes:
      assert 0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]
      assert _ratio_ok(box, ratio), (box, ratio, size)
    for box in aspect.refine_candidates(boxes[:2], ratio, size):
      assert 0 <= box[0] < box[2] <= size[0] and 0 <= box[1] < box[3] <= size[1]
      assert _ratio_ok(box, ratio)


def test_inner_and_outer_snaps_bracket_the_proposal():
  proposal = np.array([[100.0, 50.0, 300.0, 250.0]])  # 200 x 200 in a 1000 x 800 photo.
  inner, outer = aspect.proposal_candidates(proposal, 2.0, (1000, 800))
  np.testing.assert_array_equal(inner, [100, 100, 300, 200])  # 200 x 100, same centre.
  np.testing.assert_array_equal(outer, [0, 50, 400, 250])  # 400 x 200, same centre.


def test_choose_scores_fixed_counts_and_returns_the_best_first():
  sizes = [(640, 480), (300, 500)]
  proposals = [np.array([[100, 100, 400, 300], [0, 0, 640, 480]], np.float64),
               np.array([[10, 20, 200, 400], [50, 50, 250, 300]], np.float64)]
  target = np.array([0.3, 0.3, 0.7, 0.7])
  calls = []

  def score_fn(given):  # Higher for boxes closer to a fixed normalised target.
    calls.append(given.shape)
    return -np.abs(given - target).sum(-1)

  chosen = aspect.choose(score_fn, proposals, sizes, [[1.0, 16 / 9]] * 2)
  per_request = aspect.DENSE.first_pass_count(2)
  assert calls == [(2, 2 * per_request, 4), (2, 2 * aspect.DENSE.refine_count, 4)]
  for i, size in enumerate(sizes):
    for j, ratio in enumerate((1.0, 16 / 9)):
      boxes, scores = chosen[i][j]
      assert len(boxes) == len({tuple(b) for b in boxes.tolist()})  # Distinct.
      assert np.all(np.diff(scores) <= 0)  # Best first.
      assert all(_ratio_ok(b, ratio) for b in boxes)
      # The returned scores are the score function's for those boxes.
      norm = boxes / np.array(size * 2, np.float64)
      np.testing.assert_allclose(scores, -np.abs(norm - target).sum(-1))
  # Refinement can only help: the best is at least as good as without it.
  plain = aspect.choose(score_fn, proposals, sizes, [[1.0, 16 / 9]] * 2, refine=False)
  assert all(chosen[i][j][1][0] >= plain[i][j][1][0] for i in range(2) for j in range(2))


def test_choose_finds_the_ground_truth_with_an_oracle_score():
  size, gt = (800, 600), np.array([120.0, 90.0, 620.0, 465.0])  # 500 x 375: 4:3.
  proposals = [np.array([[100, 80, 640, 470], [0, 0, 800, 600]], np.float64)]

  def oracle(given):
    return box_geometry.pairwise_box_iou(given[0] * (size * 2), gt[None])[:, 0][None]

  boxes, _ = aspect.choose(oracle, proposals, [size], [[4 / 3]])[0][0]
  assert box_geometry.pairwise_box_iou(boxes[:1].astype(float), gt[None])[0, 0] > 0.95


def test_fast_candidates_snap_only_the_best_scored_proposals():
  size = (640, 480)
  proposals = np.array([[0, 0, 640, 480], [100, 100, 300, 250], [20, 40, 500, 400]], np.float64)
  scores = np.array([0.2, 0.9, 0.5])
  seen = []

  def score_fn(given):
    seen.append(given.copy())
    return np.zeros(given.shape[:2])

  candidates = aspect.Candidates(grid_scales=(1.0,), grid_positions=1, refine_top=1,
                                 proposals=2)
  aspect.choose(score_fn, [proposals], [size], [[1.0]], candidates=candidates,
                proposal_scores=[scores])
  assert [s.shape[1] for s in seen] == [candidates.first_pass_count(3),
                                        candidates.refine_count]
  scored = {tuple(b) for b in (seen[0][0] * np.array(size * 2)).round().astype(int).tolist()}
  boxes = lambda a: {tuple(b) for b in a.tolist()}
  grid = boxes(aspect.grid_candidates(1.0, size, scales=(1.0,), positions=1))
  assert scored == grid | boxes(aspect.proposal_candidates(proposals[[1, 2]], 1.0, size))
  assert scored != grid | boxes(aspect.proposal_candidates(proposals[[0, 2]], 1.0, size))
  with pytest.raises(ValueError, match="proposal_scores"):
    aspect.choose(score_fn, [proposals], [size], [[1.0]], candidates=candidates)


@pytest.mark.parametrize("candidates", [aspect.FAST, aspect.DENSE], ids=["fast", "dense"])
def test_the_grid_never_exceeds_its_count(candidates):
  # The first pass's length is fixed per request: more distinct grid boxes than grid_count
  # would be cut; the ratio's largest box spans a side and moves along the other only.
  rng = np.random.default_rng(2)
  for _ in range(300):
    size = tuple(int(v) for v in rng.integers(1, 3000, 2))
    ratio = float(np.exp(rng.uniform(-3, 3)))
    grid = aspect.grid_candidates(ratio, size, scales=candidates.grid_scales,
                                  positions=candidates.grid_positions)
    assert 1 <= len(grid) <= candidates.grid_count, (size, ratio)
  assert aspect.FAST.grid_count == 3  # One scale (1.0) at three places.
  # A photo wider than the ratio: the three places spread along its width.
  xs = aspect.grid_candidates(1.0, (900, 300), scales=(1.0,), positions=3)[:, 0]
  np.testing.assert_array_equal(xs, [0, 300, 600])


@pytest.mark.parametrize("moves, count", [(aspect.CUBE_MOVES, 26), (aspect.SQUARE_MOVES, 10)])
def test_refinement_moves_each_box_once_per_move(moves, count):
  assert len(moves) == len(set(moves)) == count
  assert (1.0, 0.0, 0.0) not in moves  # The box itself is already scored.
  size, box = (1000, 800), np.array([[300, 200, 700, 500]])  # 400 x 300, 4:3, centre (500, 350).
  near = aspect.refine_candidates(box, 4 / 3, size, moves)
  assert near.shape == (count, 4)
  for (scale, dx, dy), (x1, y1, x2, y2) in zip(moves, near):
    assert abs((x2 - x1) - 400 * scale) <= 1 and _ratio_ok((x1, y1, x2, y2), 4 / 3)
    assert abs((x1 + x2) / 2 - (500 + 400 * dx)) <= 1
    assert abs((y1 + y2) / 2 - (350 + 300 * dy)) <= 1
  candidates = aspect.Candidates(refine_top=2, refine_moves=moves)
  assert candidates.refine_count == 2 * count
