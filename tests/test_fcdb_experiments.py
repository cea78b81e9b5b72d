"""experiments/fcdb's analyses of the rated crop pairs: the vote ceiling (how well an oracle of
the crowd's preferences can agree with five-vote majorities), scorers that know the expert's
crop, and the linear probe's parts."""

import collections

import numpy as np
import pytest
from scipy import stats

from experiments.fcdb import expert_agreement
from experiments.fcdb import expert_oracle
from experiments.fcdb import pair_probe
from experiments.fcdb import vote_ceiling
from procrop_jax import box_geometry


def _counts_of(p: float, pairs: int = 100_000) -> collections.Counter:
  """Expected split counts when every pair's better side is liked with probability p."""
  gets = [stats.binom.pmf(k, 5, p) for k in range(6)]
  return collections.Counter({k: round(pairs * (gets[k] + gets[5 - k])) for k in (3, 4, 5)})


def test_counts_by_winner_votes_skip_pairs_without_five_votes():
  votes = np.array([[5, 0], [1, 4], [2, 3], [3, 2], [2, 2], [0, 4]])
  assert vote_ceiling.winner_vote_counts(votes) == {5: 1, 4: 1, 3: 2}


def test_ranking_file_votes_reads_every_pair():
  annotations = [
      {"crops": [{"vote_for_0": 1, "vote_for_1": 4}, {"vote_for_0": 3, "vote_for_1": 2}]},
      {"crops": [{"vote_for_0": 0, "vote_for_1": 5}]}]
  np.testing.assert_array_equal(vote_ceiling.ranking_file_votes(annotations),
                                [[1, 4], [3, 2], [0, 5]])


def test_unanimous_votes_allow_a_perfect_scorer():
  low, high = vote_ceiling.oracle_accuracy_range(collections.Counter({5: 10}))
  assert abs(low - 1) < 1e-6 and abs(high - 1) < 1e-6


def test_one_known_preference_gives_its_majority_probability():
  # Splits as produced by p = 0.8 for every pair: the range holds the oracle's accuracy then,
  # P(at least 3 of 5 votes for the better side) = 0.942, and is a proper interval below 1.
  low, high = vote_ceiling.oracle_accuracy_range(_counts_of(0.8))
  expected = stats.binom.sf(2, 5, 0.8)
  assert low - 1e-3 <= expected <= high + 1e-3
  assert high < 1.0
  strong_low, strong_high = vote_ceiling.oracle_accuracy_range(_counts_of(0.8), strong_only=True)
  expected_strong = (stats.binom.pmf(4, 5, 0.8) + stats.binom.pmf(5, 5, 0.8)) / sum(
      stats.binom.pmf(k, 5, 0.8) for k in (0, 1, 4, 5))
  assert strong_low - 1e-3 <= expected_strong <= strong_high + 1e-3


def test_more_close_calls_lower_the_ceiling():
  _, high_clear = vote_ceiling.oracle_accuracy_range(_counts_of(0.9))
  _, high_close = vote_ceiling.oracle_accuracy_range(_counts_of(0.6))
  assert high_close < high_clear - 0.1


def test_mean_in_boxes_averages_the_map_inside_each_box():
  # A map whose value is the column's centre x: the mean inside a box is the box's centre x.
  w = 8
  fmap = np.broadcast_to(((np.arange(w) + 0.5) / w)[None, :, None], (4, w, 1)).astype(float)
  boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 1.0, 1.0]])
  np.testing.assert_allclose(pair_probe.mean_in_boxes(fmap, np.array([1.0, 1.0]), boxes),
                             (boxes[:, :1] + boxes[:, 2:3]) / 2, atol=1e-6)


def test_describe_separates_inside_and_outside_and_reads_only_the_photo():
  # The photo covers the canvas's left half: value 1 on its left half, 3 on its right half;
  # the padding holds 100, which no description may read.
  fmap = np.full((16, 16, 1), 100.0)
  fmap[:, :4], fmap[:, 4:8] = 1.0, 3.0  # Each sample falls on a column's centre.
  boxes = np.array([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]])
  described = pair_probe.describe(fmap, np.array([1.0, 0.5]), boxes)
  np.testing.assert_allclose(described["inside"], [[1.0], [3.0]], atol=1e-6)
  np.testing.assert_allclose(described["outside"], [[3.0], [1.0]], atol=1e-6)
  np.testing.assert_allclose(described["geometry"][0, :2], [0.5, np.sqrt(0.5)])


def test_logistic_probe_learns_a_preference_and_is_antisymmetric():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 3))
  x[:, 0] = np.abs(x[:, 0]) + 0.1  # The preferred crop is always larger in feature 0.
  weights = pair_probe.fit_logistic(x, penalty=1e-3)
  assert np.all(x @ weights > 0) and np.all(-x @ weights < 0)
  assert abs(weights[0]) > 5 * np.abs(weights[1:]).max()


def test_mlp_ranking_head_learns_a_nonlinear_preference():
  # People prefer the crop whose feature 0 is nearer zero: no linear score of the difference
  # can tell, a per-crop MLP can.
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(600, 3)), rng.normal(size=(600, 3))
  nearer = np.abs(a[:, 0]) < np.abs(b[:, 0])
  preferred, other = np.where(nearer[:, None], a, b), np.where(nearer[:, None], b, a)
  score = pair_probe.fit_ranking_mlp(preferred[:400], other[:400], hidden=32, penalty=1e-4,
                                     steps=800)
  assert np.mean(score(preferred[400:]) > score(other[400:])) > 0.9
  linear = pair_probe.fit_logistic(preferred[:400] - other[:400], penalty=1e-3)
  assert np.mean((preferred[400:] - other[400:]) @ linear > 0) < 0.7



def test_expert_scorers_on_a_hand_counted_photo():
  expert = np.array([0.2, 0.2, 0.8, 0.8])
  inside = [0.3, 0.3, 0.7, 0.7]  # IoU 0.444, coverage 0.444, precision 1.
  whole = [0.0, 0.0, 1.0, 1.0]  # IoU 0.36, coverage 1, precision 0.36.
  # The raters, as the input pipeline hands their pairs over (preferred first, vote margin):
  # the whole photo 4:1, the whole photo 3:2, a tie (weight 0: skipped), the smaller crop 5:0.
  batch = {"boxes": expert[None, None], "valid": np.array([True]),
           "pair_boxes": np.array([[[whole, inside], [whole, inside], [inside, whole],
                                    [inside, whole]]]),
           "pair_weights": np.array([[0.6, 0.2, 0.0, 1.0]])}
  scores = expert_oracle.SCORERS["iou"](np.array([[inside, whole]]), expert)
  np.testing.assert_allclose(scores[0], [0.16 / 0.36, 0.36], rtol=1e-6)
  # IoU prefers the smaller crop: right on the last pair only.
  iou = expert_oracle.score_pairs([batch], expert_oracle.SCORERS["iou"])
  assert (iou["num_pairs"], iou["num_pairs_strong"]) == (3, 2)
  assert iou["pair_acc"] == 1 / 3 and iou["pair_acc_strong"] == 1 / 2
  # Coverage and area prefer the whole photo: right on the first two.
  for name in ("coverage", "area"):
    result = expert_oracle.score_pairs([batch], expert_oracle.SCORERS[name])
    assert result["pair_acc"] == 2 / 3 and result["pair_acc_strong"] == 1 / 2, name


def test_expert_agreement_on_hand_counted_crops():
  # Three experts' crops of a 10 x 10 photo: the whole photo, its top half, its top 40%
  # (IoU whole-half 0.5, whole-40% 0.4, half-40% 0.8), and a zero-area box that is dropped.
  crops = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4], [5, 5, 5, 9]], np.float64)
  result = expert_agreement.agreement(crops)
  assert result["other_expert"] == pytest.approx((0.5 + 0.4 + 0.8) / 3)
  # Held out, each expert meets the others' medoid (ties: the first): the half (0.5), the
  # whole photo (0.5), the whole photo (0.4); and the closest other crop: 0.5, 0.8, 0.8.
  assert result["consensus"] == pytest.approx((0.5 + 0.5 + 0.4) / 3)
  assert result["best_other"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
  assert expert_agreement.agreement(crops[[0, 3]]) is None


def test_soup_is_the_mean_of_its_sources_and_names_a_mismatch():
  from experiments.fcdb import soup  # pylint: disable=import-outside-toplevel
  first = {"w": np.array([1.0, 2.0], np.float32), "b": np.array(0.5, np.float16)}
  second = {"w": np.array([3.0, 6.0], np.float32), "b": np.array(1.5, np.float16)}
  mean = soup.mean_params([first, second], ["a", "b"])
  np.testing.assert_array_equal(mean["w"], [2.0, 4.0])
  assert mean["b"].dtype == np.float16 and float(mean["b"]) == 1.0
  with pytest.raises(ValueError, match="other_run: 1 parameter shapes differ"):
    soup.mean_params([first, {"w": np.zeros(3), "b": np.array(1.0)}], ["a", "other_run"])
  with pytest.raises(ValueError, match="other_run: its parameters are not"):
    soup.mean_params([first, {"w": first["w"]}], ["a", "other_run"])
  with pytest.raises(ValueError, match="two or more"):
    soup.mean_params([first], ["a"])


def test_retrieval_diagnostics_read_box_layouts_and_choose_by_similarity():
  from experiments.fcdb import retrieval_diagnostics as rd  # pylint: disable=import-outside-toplevel
  # A 10 x 10 map whose one channel is the column index and the other the row index.
  rows, cols = np.meshgrid(np.arange(10.0), np.arange(10.0), indexing="ij")
  fmap = np.stack([cols, rows], -1)
  tokens = rd.box_tokens(fmap, np.array([1.0, 1.0]), np.array([[0.0, 0.0, 1.0, 1.0],
                                                               [0.5, 0.0, 1.0, 0.5]]), grid=2)
  assert tokens.shape == (2, 4, 2)
  # Whole photo: the left cells read smaller columns than the right ones, top rows than bottom.
  assert tokens[0, 0, 0] < tokens[0, 1, 0] and tokens[0, 0, 1] < tokens[0, 2, 1]
  # The top-right quarter reads columns right of the middle and rows above it.
  assert tokens[1, :, 0].min() > 4.0 and tokens[1, :, 1].max() < 5.0
  candidates = rd.candidate_boxes(step=0.1, max_margin=0.1)
  assert candidates.shape == (16, 4) and (candidates[0] == [0, 0, 1, 1]).all()
  np.testing.assert_allclose(box_geometry.pairwise_box_iou(np.array([[0, 0, 1, 1], [0, 0, 0.5, 1]]),
                                                     np.array([[0, 0, 0.5, 1]]))[:, 0],
                             [0.5, 1.0])
  keys = np.eye(3)
  np.testing.assert_array_equal(rd.nearest(np.array([[0.1, 0.9, 0.3]]), keys, 2), [[1, 2]])
  best, similarity = rd.layout_choice(np.eye(3), np.array([[0, 0.6, 0.8], [0, 0.8, 0.6]]))
  assert best in (1, 2) and similarity[0] == 0 and np.isclose(similarity[1], similarity[2])


def test_told_choice_keeps_the_proposals_near_the_expert_crop():
  from experiments.fcdb import selection_diagnostics  # pylint: disable=import-outside-toplevel
  # A photo 200 px high and 100 wide; the expert crop is its top half: 100 x 100 px, area 0.5,
  # centre (0.5, 0.25), log ratio 0.
  boxes = np.array([[[0.0, 0.0, 1.0, 1.0],    # area 1, centre (0.5, 0.5), log(100 / 200)
                     [0.1, 0.0, 0.9, 0.6],    # area 0.48, centre (0.5, 0.3), log(80 / 120)
                     [0.0, 0.3, 1.0, 0.8]]])  # area 0.5, centre (0.5, 0.55), log 1
  data = {"boxes": boxes, "scores": np.array([[0.9, 0.5, 0.4]]),
          "gt": np.array([[0.0, 0.0, 1.0, 0.5]]), "size": np.array([[200, 100]])}
  told = selection_diagnostics.told_choice
  np.testing.assert_allclose(told(data, "area", 0.05), [boxes[0, 1]])  # 0.48 and 0.5: the best
  np.testing.assert_allclose(told(data, "area", 0.01), [boxes[0, 2]])
  np.testing.assert_allclose(told(data, "centre", 0.1), [boxes[0, 1]])
  np.testing.assert_allclose(told(data, "centre", 0.01), [boxes[0, 0]])  # none near: the top-1
  np.testing.assert_allclose(told(data, "ratio", 0.1), [boxes[0, 2]])
  with pytest.raises(ValueError, match="use area, centre or ratio"):
    told(data, "height", 0.1)


def test_top1_choice_takes_the_best_scored_box_and_votes_with_its_neighbours():
  from experiments.fcdb import selection_diagnostics  # pylint: disable=import-outside-toplevel
  boxes = np.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.9, 0.9], [0.1, 0.1, 1.0, 1.0]]])
  scores = np.array([[0.2, 0.9, 0.9 - 1e-3]])
  np.testing.assert_allclose(selection_diagnostics.top1_choice(boxes, scores), [boxes[0, 1]])
  # At IoU 0.6 the two near-equal boxes (IoU 0.65) vote together; the whole photo (0.81 with
  # each) votes too.
  voted = selection_diagnostics.top1_choice(boxes, scores, vote_iou=0.6)[0]
  expected = (scores[0, :, None] * boxes[0]).sum(0) / scores[0].sum()
  np.testing.assert_allclose(voted, expected, rtol=1e-5)
