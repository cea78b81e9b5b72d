"""Tests for procrop_jax.metrics: hand-computed cases, then the real annotation files."""

import json
import math
import os
import pathlib

import numpy as np
import pytest
from scipy import stats

from procrop_jax import metrics

E = math.exp


# ----------------------------------------------------------------------------------------------
# IoU and BDE of predictions (the box geometry itself: test_box_geometry.py).
# ----------------------------------------------------------------------------------------------


def test_bde_normalises_x_by_width_and_y_by_height():
  # Image 100 high, 200 wide. Shifting x1 by 20 and y1 by 10: (20/200 + 10/100) / 4 = 0.05.
  # Swapped normalisers would give (20/100 + 10/200) / 4 = 0.0625.
  bde = metrics.boundary_displacement([20, 10, 200, 100], [0, 0, 200, 100], (100, 200))
  assert bde[0, 0] == pytest.approx(0.05, rel=1e-15)
  # All four edges, each with its own side.
  bde = metrics.boundary_displacement([10, 20, 150, 60], [0, 0, 200, 100], (100, 200))
  assert bde[0, 0] == pytest.approx((10 / 200 + 20 / 100 + 50 / 200 + 40 / 100) / 4, rel=1e-15)
  with pytest.raises(ValueError, match="image_size"):
    metrics.boundary_displacement([0, 0, 1, 1], [0, 0, 1, 1], (0, 10))


def test_bde_is_measured_against_the_best_iou_ground_truth():
  # Image 100 high, 400 wide; prediction [0, 0, 100, 100].
  # GT a = [0, 0, 100, 90]: IoU 0.9, BDE (10/100)/4 = 0.025 (best IoU).
  # GT b = [16, 0, 116, 100]: IoU 84/116, BDE (16/400 + 16/400)/4 = 0.02 (smaller BDE).
  gts = [[16, 0, 116, 100], [0, 0, 100, 90]]
  iou, bde, g = metrics.iou_and_bde([0, 0, 100, 100], gts, (100, 400))
  assert (iou, g) == (pytest.approx(0.9, rel=1e-15), 1)
  assert bde == pytest.approx(0.025, rel=1e-15)  # not the 0.02 of the closer GT
  # Swapping the normalisers would give (10/400)/4 for GT a.
  assert bde != pytest.approx(10 / 400 / 4)


def test_iou_tie_between_ground_truths_takes_the_smaller_bde():
  # Image 100 high, 200 wide; prediction [0, 0, 100, 100].
  # GT a = [0, 0, 100, 80]: IoU 0.8, BDE (20/100)/4 = 0.05.
  # GT b = [0, 0, 80, 100]: IoU 0.8, BDE (20/200)/4 = 0.025.
  iou, bde, g = metrics.iou_and_bde([0, 0, 100, 100], [[0, 0, 100, 80], [0, 0, 80, 100]],
                                    (100, 200))
  assert (iou, bde, g) == (pytest.approx(0.8), pytest.approx(0.025, rel=1e-15), 1)


def test_best_iou_top_k():
  preds = [[0, 0, 10, 10], [50, 50, 100, 100], [0, 0, 100, 100]]
  gts = [[0, 0, 100, 100]]
  assert metrics.best_iou_top_k(preds, gts, 1) == pytest.approx(0.01)
  assert metrics.best_iou_top_k(preds, gts, 2) == pytest.approx(0.25)
  assert metrics.best_iou_top_k(preds, gts, 5) == 1.0  # k beyond N uses all


def test_iou_protocol_means_and_ordering():
  protocol = metrics.IoUProtocol(top_ks=(2,))
  # Image 1 (100 x 200): predictions given with scores; the second has the higher score.
  r1 = protocol.add("a", [[0, 0, 10, 10], [20, 10, 200, 100]], [[0, 0, 200, 100]], (100, 200),
                    pred_scores=[0.1, 0.9])
  assert r1["iou"] == pytest.approx(180 * 90 / 20000)
  assert r1["bde"] == pytest.approx(0.05)
  assert r1["iou_top2"] == pytest.approx(180 * 90 / 20000)
  # Image 2: a perfect single box (a [4] box is accepted).
  protocol.add("b", [0, 0, 50, 50], [[0, 0, 50, 50], [0, 0, 10, 10]], (50, 60))
  result = protocol.result()
  assert result == {
      "iou": pytest.approx((0.81 + 1) / 2),
      "bde": pytest.approx(0.025),
      "iou_top2": pytest.approx((0.81 + 1) / 2),
      "num_images": 2,
  }
  with pytest.raises(ValueError, match="already added"):
    protocol.add("b", [0, 0, 50, 50], [0, 0, 50, 50], (50, 60))
  with pytest.raises(ValueError, match="before any add"):
    metrics.IoUProtocol().result()


# ----------------------------------------------------------------------------------------------
# Proposal protocol.
# ----------------------------------------------------------------------------------------------


def test_select_positive_crops():
  np.testing.assert_array_equal(metrics.select_positive_crops([4.2, 3.9, 4.0, 2.0]), [0, 2])
  # Nothing reaches 4.0: all crops tied for the best MOS.
  np.testing.assert_array_equal(metrics.select_positive_crops([3.5, 3.8, 3.8]), [1, 2])
  np.testing.assert_array_equal(
      metrics.select_positive_crops([3, 5, 5, 1], mos_threshold=None, top_k=2), [1, 2])
  # Ties at the cut keep annotation order.
  np.testing.assert_array_equal(
      metrics.select_positive_crops([5, 3, 3, 1], mos_threshold=None, top_k=2), [0, 1])
  with pytest.raises(ValueError, match="exactly one"):
    metrics.select_positive_crops([1.0], mos_threshold=4.0, top_k=2)


def test_best_crop_indices_ties():
  np.testing.assert_array_equal(metrics.best_crop_indices([4.5, 3, 4.5]), [0, 2])
  np.testing.assert_array_equal(metrics.best_crop_indices([4.5, 3, 4.5], ties="first"), [0])


def test_proposal_hit_k_and_inclusive_tau():
  best = [[0, 0, 100, 100]]
  far = [[500, 500, 600, 600]] * 5
  preds = far + [[0, 0, 100, 85]]  # sixth box: IoU exactly 0.85
  assert not metrics.proposal_hit(preds, best, k=5, tau=0.85)
  assert metrics.proposal_hit(preds, best, k=10, tau=0.85)  # IoU >= tau is inclusive
  assert not metrics.proposal_hit(preds, best, k=10, tau=0.90)
  assert not metrics.proposal_hit(np.zeros((0, 4)), best, k=5, tau=0.5)


def test_match_detections_follows_coco():
  # Each detection takes the highest-IoU free ground truth.
  np.testing.assert_array_equal(
      metrics.match_detections(np.array([[0.6, 0.9], [0.95, 0.0]]), [0.5]), [[True, True]])
  # A higher-scored detection can take the ground truth a later one needed.
  np.testing.assert_array_equal(
      metrics.match_detections(np.array([[0.9, 0.6], [0.95, 0.0]]), [0.5]), [[True, False]])
  # Exact IoU tie: pycocotools picks the later ground truth, which leaves g0 for detection 1.
  np.testing.assert_array_equal(
      metrics.match_detections(np.array([[0.8, 0.8], [0.8, 0.0]]), [0.5, 0.85]),
      [[True, True], [False, False]])
  assert metrics.match_detections(np.zeros((2, 0)), [0.5]).tolist() == [[False, False]]


def test_average_precision_hand_case():
  # Sorted detections: TP, FP, TP, TP with 3 ground truths. Precision 1, 1/2, 2/3, 3/4 at
  # recall 1/3, 1/3, 2/3, 1; interpolated 1, 3/4, 3/4, 3/4. Recall points 0.00..0.33 (34 of
  # them) get 1, points 0.34..1.00 (67) get 3/4: AP = (34 + 67 * 0.75) / 101.
  ap = metrics.average_precision(np.array([[True, True, False, True]]),
                                 np.array([0.9, 0.7, 0.8, 0.6]), 3)
  assert ap[0] == pytest.approx((34 + 67 * 0.75) / 101, rel=1e-15)
  assert np.isnan(metrics.average_precision(np.zeros((1, 0), bool), np.zeros(0), 0)[0])
  assert metrics.average_precision(np.zeros((1, 0), bool), np.zeros(0), 2)[0] == 0.0


def test_proposal_protocol_hand_case():
  protocol = metrics.ProposalProtocol()
  # Image A: crops g0 (MOS 4.5, the best), g1 (4.2), g2 (3.0, not positive).
  gts_a = [[0, 0, 100, 100], [0, 0, 50, 100], [200, 200, 300, 300]]
  preds_a = [[0, 0, 100, 100], [300, 0, 400, 100], [0, 0, 50, 100]]
  r = protocol.add("A", preds_a, [0.9, 0.8, 0.6], gts_a, [4.5, 4.2, 3.0])
  assert r["acc5_tau0.85"] == r["acc10_tau0.90"] == 1.0
  assert r["num_positives"] == 2
  # Image B: a single good crop, predicted with IoU 0.72 only.
  protocol.add("B", [[0, 0, 72, 100]], [0.7], [[0, 0, 100, 100]], [4.8])
  result = protocol.result()
  assert result["acc5"] == result["acc10"] == result["acc5_tau0.85"] == 0.5
  assert result["acc5_tau0.90"] == result["acc10_tau0.90"] == 0.5
  # Thresholds 0.50..0.70 (5): TP, FP, TP, TP -> AP (34 + 67 * 0.75) / 101 as above.
  # Thresholds 0.75..0.95 (5): TP, FP, FP, TP -> precision 1, 1/2, 1/3, 1/2 at recall
  # 1/3, 1/3, 1/3, 2/3; interpolated 1, 1/2, 1/2, 1/2; recall points 0.00..0.33 (34) get 1,
  # 0.34..0.66 (33) get 1/2, 0.67..1.00 (34) are never reached and get 0.
  ap_low = (34 + 67 * 0.75) / 101
  ap_high = (34 + 33 * 0.5) / 101
  assert result["map"] == pytest.approx((ap_low + ap_high) / 2, rel=1e-14)
  assert result["ap_tau0.85"] == result["ap_tau0.90"] == pytest.approx(ap_high, rel=1e-14)
  assert result["num_images"] == 2 and result["num_positives"] == 3


def test_proposal_protocol_tied_best_crops_and_max_detections():
  gts = [[0, 0, 100, 100], [0, 0, 50, 50]]
  preds = [[0, 0, 50, 50]]  # matches the second of two crops tied for the best MOS
  any_ = metrics.ProposalProtocol(best_ties="any")
  first = metrics.ProposalProtocol(best_ties="first")
  assert any_.add(0, preds, [1.0], gts, [4.5, 4.5])["acc5_tau0.85"] == 1.0
  assert first.add(0, preds, [1.0], gts, [4.5, 4.5])["acc5_tau0.85"] == 0.0
  # Without MOS all crops are positives and best; max_detections drops the lower-scored hit.
  capped = metrics.ProposalProtocol(max_detections=1)
  capped.add(0, [[500, 500, 600, 600], [0, 0, 100, 100]], [0.9, 0.1], gts)
  assert capped.result()["map"] == 0.0
  uncapped = metrics.ProposalProtocol(max_detections=None)
  uncapped.add(0, [[500, 500, 600, 600], [0, 0, 100, 100]], [0.9, 0.1], gts)
  # FP then TP with 2 ground truths: precision 1/2 up to recall 1/2 -> 51 points of 0.5.
  assert uncapped.result()["map"] == pytest.approx(51 * 0.5 / 101)


# ----------------------------------------------------------------------------------------------
# Ranking protocol.
# ----------------------------------------------------------------------------------------------

# 11 crops with distinct MOS; MOS rank (0-based) of crop i is i.
_MOS = [5, 4, 3, 2, 1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
# Predicted order: crop 2, crop 0, crop 7, crop 4, then the rest.
_PRED = [9, 0.1, 10, 0.2, 7, 0.3, 0.4, 8, 0.5, 0.6, 0.7]


@pytest.mark.parametrize("k,n,acc,wacc", [
    (1, 5, 1, E(-0.4)),
    (2, 5, 1, (1 + E(-0.2)) / 2),
    (3, 5, 2 / 3, (1 + E(-0.2)) / 3),
    (4, 5, 3 / 4, (1 + E(-0.2) + E(-0.4)) / 4),
    (1, 10, 1, E(-0.2)),
    (2, 10, 1, (1 + E(-0.1)) / 2),
    (3, 10, 1, (1 + E(-0.1) + E(-0.5)) / 3),
    (4, 10, 1, (1 + E(-0.1) + E(-0.2) + E(-0.4)) / 4),
])
def test_ranking_accuracy_hand_cases(k, n, acc, wacc):
  assert metrics.ranking_accuracy(_PRED, _MOS, k=k, n=n) == pytest.approx(acc, rel=1e-15)
  assert metrics.weighted_ranking_accuracy(_PRED, _MOS, k=k, n=n) == pytest.approx(wacc,
                                                                                    rel=1e-15)


def test_ranking_accuracy_ties():
  # Crop 5 ties with the 5th-best MOS (crop 4): in the top 5 for Acc (MOS >= 5th MOS), but its
  # rank is 5 (ties in annotation order), so wAcc does not count it, as in the GAIC code.
  mos = [5, 4, 3, 2, 1, 1, 0.5, 0.4, 0.3, 0.2]
  pred = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
  assert metrics.ranking_accuracy(pred, mos, k=1, n=5) == 1.0
  assert metrics.weighted_ranking_accuracy(pred, mos, k=1, n=5) == 0.0
  # Tied predictions resolve in annotation order: the first of crops 1 and 2 is returned.
  mos = [0.1, 5, 0.05, 4, 3, 2, 1, 0.5, 0.4, 0.3]
  assert metrics.ranking_accuracy([0, 1, 1, 0, 0, 0, 0, 0, 0, 0], mos, k=1, n=5) == 1.0
  mos_swapped = [0.1, 0.05, 5, 4, 3, 2, 1, 0.5, 0.4, 0.3]
  assert metrics.ranking_accuracy([0, 1, 1, 0, 0, 0, 0, 0, 0, 0], mos_swapped, k=1, n=5) == 0.0
  with pytest.raises(ValueError, match="K <= N"):
    metrics.ranking_accuracy([1, 2, 3], [1, 2, 3], k=1, n=5)


def test_spearman_and_pearson_hand_cases():
  # Average ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; their Pearson with [1, 2, 3, 4] is
  # 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
  assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), rel=1e-14)
  assert metrics.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84), rel=1e-14)
  assert metrics.spearman([3, 2, 1], [1, 5, 9]) == pytest.approx(-1.0)
  assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
  assert math.isnan(metrics.pearson([1, 2, 3], [2, 2, 2]))
  np.testing.assert_array_equal(metrics.average_ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])


def test_spearman_and_pearson_match_scipy_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(20):
    x = rng.integers(0, 5, size=30).astype(float)  # many ties
    y = x + rng.integers(0, 3, size=30)
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-12)
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-12)
    np.testing.assert_allclose(metrics.average_ranks(x), stats.rankdata(x), rtol=0)


def test_ranking_protocol_result_and_undefined_correlations():
  protocol = metrics.RankingProtocol()
  protocol.add("a", _PRED, _MOS)
  protocol.add("b", [1.0] * 11, _MOS)  # constant predictions: SRCC and PCC undefined
  result = protocol.result()
  # Image a: predicted ranks (ascending) 10, 1, 11, 2, 8, 3, 4, 9, 5, 6, 7 against MOS ranks
  # 11, 10, ..., 1: d = -1, -9, 2, -6, 1, -3, -1, 5, 2, 4, 6, sum d^2 = 214, and
  # SRCC = 1 - 6 * 214 / (11 * 120) = 3 / 110. Image b is left out (undefined).
  assert result["srcc"] == pytest.approx(3 / 110, rel=1e-12)
  assert result["pcc"] == pytest.approx(stats.pearsonr(_PRED, _MOS)[0], rel=1e-12)
  assert result["num_undefined_srcc"] == result["num_undefined_pcc"] == 1
  # Constant predictions return crops 0..3 (annotation order), the four best by MOS: every
  # accuracy of image b is 1; image a's are the hand cases above.
  assert result["acc_4_5"] == pytest.approx((3 / 4 + 1) / 2)
  assert result["wacc_1_5"] == pytest.approx((E(-0.4) + 1) / 2)
  assert result["acc_mean_5"] == pytest.approx((1 + 1 + (2 / 3 + 1) / 2 + (3 / 4 + 1) / 2) / 4,
                                               rel=1e-12)
  wacc_a = [E(-0.4), (1 + E(-0.2)) / 2, (1 + E(-0.2)) / 3, (1 + E(-0.2) + E(-0.4)) / 4]
  assert result["wacc_mean_5"] == pytest.approx(sum((w + 1) / 2 for w in wacc_a) / 4, rel=1e-12)
  assert result["acc_mean_10"] == 1.0
  expected_keys = {"srcc", "pcc", "num_images", "num_undefined_srcc", "num_undefined_pcc"}
  expected_keys |= {f"{p}_{k}_{n}" for p in ("acc", "wacc") for k in range(1, 5) for n in (5, 10)}
  expected_keys |= {f"{p}_mean_{n}" for p in ("acc", "wacc") for n in (5, 10)}
  assert set(result) == expected_keys
  zero = metrics.RankingProtocol(undefined_correlation="zero")
  zero.add("a", _PRED, _MOS)
  zero.add("b", [1.0] * 11, _MOS)
  assert zero.result()["srcc"] == pytest.approx(3 / 110 / 2, rel=1e-12)  # Image b counts 0.


# ----------------------------------------------------------------------------------------------
# Real annotation files in ../shared/data.
# ----------------------------------------------------------------------------------------------

_PLACEHOLDER_BYTES = 5946  # Flickr's "photo is no longer available" image in fcdb/data.


def _plain_iou(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _plain_bde(a, b, height, width):
  return (abs(a[0] - b[0]) / width + abs(a[2] - b[2]) / width
          + abs(a[1] - b[1]) / height + abs(a[3] - b[3]) / height) / 4


def _plain_iou_bde(pred, gts, height, width):
  best = None
  for g in gts:
    iou, bde = _plain_iou(pred, g), _plain_bde(pred, g, height, width)
    if best is None or iou > best[0] or (iou == best[0] and bde < best[1]):
      best = (iou, bde)
  return best


def _fcdb(shared_data: pathlib.Path):
  """(name, crop xyxy, (height, width)) of the FCDB images that are real photos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  entries = json.loads((shared_data / "fcdb" / "cropping_training_set.json").read_text())
  out = []
  for e in entries:
    path = shared_data / "fcdb" / "data" / os.path.basename(e["url"])
    if not path.is_file() or path.stat().st_size == _PLACEHOLDER_BYTES:
      continue
    with Image.open(path) as im:
      width, height = im.size
    x, y, w, h = e["crop"]
    out.append((path.name, [x, y, x + w, y + h], (height, width)))
  return out


def _size_from_extents(boxes):
  """GAICD / FLMS ship no images here: the image is taken to end at the farthest box edge."""
  boxes = np.asarray(boxes, dtype=float)
  return float(boxes[:, 3].max()), float(boxes[:, 2].max())


def test_fcdb_ground_truth_and_whole_image(shared_data):
  images = _fcdb(shared_data)
  assert len(images) > 1300
  perfect, whole = metrics.IoUProtocol(), metrics.IoUProtocol()
  plain = []
  for name, crop, (height, width) in images:
    perfect.add(name, crop, [crop], (height, width))
    whole_box = [0, 0, width, height]
    whole.add(name, whole_box, [crop], (height, width))
    plain.append(_plain_iou_bde(whole_box, [crop], height, width))
  result = perfect.result()
  assert result["iou"] == 1.0 and result["bde"] == 0.0 and result["iou_top5"] == 1.0
  result = whole.result()
  assert result["num_images"] == len(images)
  assert result["iou"] == pytest.approx(np.mean([p[0] for p in plain]), rel=1e-12)
  assert result["bde"] == pytest.approx(np.mean([p[1] for p in plain]), rel=1e-12)
  assert 0.3 < result["iou"] < 0.9 and 0.02 < result["bde"] < 0.3  # sanity


def _flms(shared_data: pathlib.Path):
  annotations = json.loads((shared_data / "annotations" / "flms" / "image_crop.json").read_text())
  # Two annotation rows of the released file have x2 < x1 or y2 < y1 (465190454_Large.jpg,
  # 693687448_Large.jpg); the metrics reject such boxes, so the reader has to drop them.
  cleaned, dropped = {}, 0
  for name, boxes in annotations.items():
    good = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    dropped += len(boxes) - len(good)
    cleaned[name] = good
  return cleaned, dropped


def test_flms_ground_truth_and_whole_image(shared_data):
  annotations, dropped = _flms(shared_data)
  assert len(annotations) == 500 and dropped == 2
  perfect, whole = metrics.IoUProtocol(), metrics.IoUProtocol()
  plain = []
  for name, gts in annotations.items():
    height, width = _size_from_extents(gts)
    for g, gt in enumerate(gts):  # each expert crop, predicted, is perfect
      perfect.add((name, g), gt, gts, (height, width))
    whole_box = [0, 0, width, height]
    whole.add(name, whole_box, gts, (height, width))
    plain.append(_plain_iou_bde(whole_box, gts, height, width))
  result = perfect.result()
  assert result["iou"] == 1.0 and result["bde"] == 0.0
  result = whole.result()
  assert result["iou"] == pytest.approx(np.mean([p[0] for p in plain]), rel=1e-12)
  assert result["bde"] == pytest.approx(np.mean([p[1] for p in plain]), rel=1e-12)


def test_flms_malformed_rows_are_rejected(shared_data):
  raw = json.loads((shared_data / "annotations" / "flms" / "image_crop.json").read_text())
  with pytest.raises(ValueError, match="x2 >= x1"):
    metrics.IoUProtocol().add("x", [0, 0, 10, 10], raw["465190454_Large.jpg"], (1024, 768))


def _gaicd(shared_data: pathlib.Path):
  return json.loads((shared_data / "annotations" / "gaicd" / "image_crop.json").read_text())


def _plain_coco_ap(per_image, num_gt, threshold):
  """Straightforward pycocotools-style AP: per_image is [(score, [iou with each positive])]."""
  detections = []
  for dets in per_image:
    taken = set()
    for score, ious in sorted(dets, key=lambda d: -d[0]):
      best, best_iou = None, min(threshold, 1 - 1e-10)
      for g, iou in enumerate(ious):
        if g not in taken and iou >= best_iou:
          best, best_iou = g, iou
      if best is not None:
        taken.add(best)
      detections.append((score, best is not None))
  detections.sort(key=lambda d: -d[0])
  tp = fp = 0
  precision, recall = [], []
  for _, hit in detections:
    tp, fp = tp + hit, fp + (not hit)
    precision.append(tp / (tp + fp))
    recall.append(tp / num_gt)
  for i in range(len(precision) - 2, -1, -1):
    precision[i] = max(precision[i], precision[i + 1])
  total = 0.0
  for r in np.linspace(0.0, 1.0, 101):  # pycocotools' recall points
    total += next((p for p, rc in zip(precision, recall) if rc >= r), 0.0)
  return total / 101


def test_gaicd_proposal_ground_truth_and_whole_image(shared_data):
  annotations = _gaicd(shared_data)
  assert len(annotations) == 1236
  perfect, whole = metrics.ProposalProtocol(), metrics.ProposalProtocol()
  hits = {(k, tau): [] for k in (5, 10) for tau in (0.85, 0.90)}
  plain_dets, num_pos = [], 0
  for i, (name, entry) in enumerate(annotations.items()):
    boxes, mos = np.asarray(entry["bbox"], float), np.asarray(entry["score"], float)
    positives = metrics.select_positive_crops(mos)
    assert mos[positives].min() >= 4.0 or len(set(mos[positives])) == 1
    perfect.add(name, boxes[positives], mos[positives], boxes, mos)

    height, width = _size_from_extents(boxes)
    whole_box = [0.0, 0.0, width, height]
    score = (i * 7919 % 97) / 97  # deterministic, with ties across images
    whole.add(name, [whole_box], [score], boxes, mos)
    best_iou = max(_plain_iou(whole_box, b) for b, m in zip(boxes, mos) if m == mos.max())
    for (k, tau), values in hits.items():
      values.append(best_iou >= tau)
    plain_dets.append([(score, [_plain_iou(whole_box, b) for b in boxes[positives]])])
    num_pos += len(positives)

  result = perfect.result()
  for key in ("acc5", "acc10", "acc5_tau0.90", "acc10_tau0.90", "map", "ap_tau0.85",
              "ap_tau0.90"):
    assert result[key] == 1.0, key

  result = whole.result()
  assert result["num_positives"] == num_pos
  for (k, tau), values in hits.items():
    assert result[f"acc{k}_tau{tau:.2f}"] == pytest.approx(np.mean(values), rel=1e-12)
  assert result["acc5"] == result["acc5_tau0.85"]
  expected_map = np.mean([_plain_coco_ap(plain_dets, num_pos, t)
                          for t in metrics.COCO_IOU_THRESHOLDS])
  assert result["map"] == pytest.approx(expected_map, rel=1e-12)
  assert result["ap_tau0.85"] == pytest.approx(_plain_coco_ap(plain_dets, num_pos, 0.85),
                                               rel=1e-12)


def _plain_gaic_accuracy(pred, mos):
  """The GAIC reference loop (TrainModel.py `test`), transcribed for one image."""
  id_mos = sorted(range(len(mos)), key=lambda k: mos[k], reverse=True)
  id_out = sorted(range(len(pred)), key=lambda k: pred[k], reverse=True)
  rank_of_returned = [id_mos.index(id_out[k]) for k in range(4)]
  out = {}
  for k in range(4):
    out[f"acc_{k + 1}_5"] = sum(mos[id_out[j]] >= mos[id_mos[4]] for j in range(k + 1)) / (k + 1)
    out[f"acc_{k + 1}_10"] = sum(mos[id_out[j]] >= mos[id_mos[9]] for j in range(k + 1)) / (k + 1)
    ranks = sorted(rank_of_returned[:k + 1])
    out[f"wacc_{k + 1}_5"] = sum(math.exp(-0.2 * (ranks[j] - j))
                                 for j in range(k + 1) if ranks[j] <= 4) / (k + 1)
    out[f"wacc_{k + 1}_10"] = sum(math.exp(-0.1 * (ranks[j] - j))
                                  for j in range(k + 1) if ranks[j] <= 9) / (k + 1)
  return out


def test_gaicd_ranking_mos_as_scores_and_against_reference_loop(shared_data):
  annotations = _gaicd(shared_data)
  oracle, by_area = metrics.RankingProtocol(), metrics.RankingProtocol()
  plain = {"srcc": [], "pcc": []}
  for name, entry in annotations.items():
    boxes, mos = np.asarray(entry["bbox"], float), list(entry["score"])
    oracle.add(name, mos, mos)
    # A "prefer the largest crop" scorer, rounded so that its scores tie.
    area = np.round((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), -4).tolist()
    by_area.add(name, area, mos)
    for key, value in _plain_gaic_accuracy(area, mos).items():
      plain.setdefault(key, []).append(value)
    plain["srcc"].append(stats.spearmanr(mos, area)[0])
    plain["pcc"].append(stats.pearsonr(mos, area)[0])

  result = oracle.result()
  assert result["srcc"] == pytest.approx(1.0, abs=1e-12)
  assert result["pcc"] == pytest.approx(1.0, abs=1e-12)
  for key, value in result.items():
    if key.startswith(("acc", "wacc")):
      assert value == 1.0, key
  assert result["num_images"] == 1236 and result["num_undefined_srcc"] == 0

  result = by_area.result()
  for key, values in plain.items():
    assert result[key] == pytest.approx(np.nanmean(values), rel=1e-12), key


def test_pairwise_protocol_matches_a_hand_count():
  protocol = metrics.PairwiseProtocol()
  # Image a: 3 pairs; margins 1.0 (strong, right), 0.2 (wrong), 0 (tie: skipped).
  protocol.add("a", [0.9, 0.1, 0.5], [0.2, 0.3, 0.9], [1.0, 0.2, 0.0],
               preferred_boxes_px=[[0, 0, 10, 10], [0, 0, 5, 5], [0, 0, 1, 1]],
               other_boxes_px=[[0, 0, 5, 5], [0, 0, 8, 8], [0, 0, 9, 9]])
  # Image b: equal scores count half; margin 0.6 is strong (4 of 5 votes); equal areas half.
  protocol.add("b", [0.4, 0.7], [0.4, 0.1], [0.6, 0.2],
               preferred_boxes_px=[[0, 0, 4, 4], [0, 0, 2, 8]],
               other_boxes_px=[[1, 1, 5, 5], [0, 0, 3, 3]])
  result = protocol.result()
  assert result["num_pairs"] == 4 and result["num_pairs_strong"] == 2
  assert result["pair_acc"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
  assert result["pair_acc_strong"] == pytest.approx((1 + 0.5) / 2)
  # Larger preferred: a1 yes, a2 no, b1 equal (half), b2 16 > 9 yes.
  assert result["larger_acc"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
