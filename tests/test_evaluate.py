"""evaluate.py: every protocol against an independent count; where the results go (a latest
file per dataset config and split, a history, and the HTML report)."""

import base64
import io
import json
import math
import os
import re

import numpy as np
from PIL import Image
import pytest

from procrop_jax import evaluate


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  area = lambda z: (z[2] - z[0]) * (z[3] - z[1])
  return inter / (area(a) + area(b) - inter)


GT = np.array([[0.1, 0.2, 0.7, 0.8], [0.0, 0.1, 0.5, 0.9]])  # Normalised, one per photo.
SIZES = np.array([[400, 600], [300, 300]])  # (height, width).


def _batch():
  b = 3  # The third example is padding.
  boxes = np.zeros((b, 2, 4), np.float32)
  boxes[:2, 0] = GT
  pairs = np.zeros((b, 2, 2, 4), np.float32)
  pairs[0, 0] = [GT[0], [0.0, 0.0, 1.0, 1.0]]  # Preferred: the expert crop itself.
  pairs[0, 1] = [[0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.6, 0.8]]  # Preferred overlaps GT less.
  pairs[1, 0] = [GT[1], [0.4, 0.0, 1.0, 0.5]]
  return {
      "image": np.zeros((b, 8, 8, 3), np.float32),
      "image_valid_hw": np.ones((b, 2), np.float32),
      "image_size": np.concatenate([SIZES, [[1, 1]]]).astype(np.int32),
      "boxes": boxes, "box_scores": np.full((b, 2), 5.0, np.float32),
      "box_mask": np.array([[True, False], [True, False], [False, False]]),
      "pair_boxes": pairs,
      "pair_weights": np.array([[1.0, 0.6], [0.2, 0.0], [0.0, 0.0]], np.float32),
      "valid": np.array([True, True, False]),
      "image_id": np.array([b"a", b"b", b"pad"]),
  }


PROPOSALS = np.array([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.25, 0.7, 0.8], [0.2, 0.2, 0.4, 0.4]],
                      [[0.0, 0.1, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.9, 0.9]],
                      [[0.0, 0.0, 1.0, 1.0]] * 3], np.float32)
SCORES = np.array([[0.5, 0.9, 0.1], [0.8, 0.7, 0.2], [0.1, 0.1, 0.1]], np.float32)


def _predict(batch, score_given):
  """Proposals as above; a given box scores its IoU with its photo's expert crop."""
  if not score_given:
    return {"boxes": PROPOSALS, "scores": SCORES}
  given = np.asarray(batch["boxes"])
  scores = np.array([[_iou(box, GT[min(i, 1)]) for box in boxes]
                     for i, boxes in enumerate(given)], np.float32)
  return {"boxes": given, "scores": scores}


def test_every_protocol_against_an_independent_count():
  result = evaluate.evaluate_benchmark(_predict, iter([_batch()]), lambda b: b,
                                       ("iou", "pairs", "aspect"))
  # iou: the top-scored proposal of each photo.
  top1 = [PROPOSALS[0, 1], PROPOSALS[1, 0]]
  assert result["num_images"] == 2
  assert result["iou"] == pytest.approx(np.mean([_iou(t, g) for t, g in zip(top1, GT)]))
  bde = [np.mean(np.abs(t - g)) for t, g in zip(top1, GT)]
  assert result["bde"] == pytest.approx(np.mean(bde), abs=1e-6)
  # pairs: photo a's first pair right (IoU 1 > IoU of the whole image), second wrong; photo b's
  # first right; the weight-0 pair and the padding example are skipped.
  assert result["num_pairs"] == 3 and result["pair_acc"] == pytest.approx(2 / 3)
  assert result["num_pairs_strong"] == 2 and result["pair_acc_strong"] == pytest.approx(0.5)
  # aspect: with an oracle score the crop of the expert crop's ratio lands on the expert crop.
  assert result["aspect_iou"] > 0.9
  assert result["aspect_bde"] < 0.02


def test_the_report_shows_the_results_and_the_collected_photos(tmp_path):
  examples = []
  result = evaluate.evaluate_benchmark(_predict, iter([_batch()]), lambda b: b, ("iou",),
                                       examples=examples, max_examples=1)
  # Collected in the metrics' own pass: the first photo, its top-1 crop and that crop's IoU.
  assert [e.image_id for e in examples] == ["a"]
  (height, width), example = SIZES[0], examples[0]
  to_px = [width, height, width, height]
  np.testing.assert_allclose(example.prediction, PROPOSALS[0, 1] * to_px, rtol=1e-6)
  np.testing.assert_allclose(example.truth, GT[0] * to_px, rtol=1e-6)
  assert example.iou == pytest.approx(_iou(PROPOSALS[0, 1], GT[0]), rel=1e-5)
  assert example.pixels.dtype == np.uint8 and example.pixels.shape == (8, 8, 3)

  result.update(dataset="fcdb", builder_config="", split="test", step=7, skipped={})
  path = evaluate.write_report(str(tmp_path), {"fcdb_test": result}, examples,
                               examples_of="fcdb_test")
  assert path == str(tmp_path / evaluate.REPORT_FILE)
  page = open(path).read()
  for key in ("iou", "bde", "iou_top5"):
    assert f"<td>{key}</td><td>{result[key]:.4f}</td>" in page
  assert "step 7" in page and "IoU" in page and "a: IoU" in page
  assert len(embedded_images(page)) == 1


def embedded_images(page):
  """The report's images, decoded (each must be an embedded JPEG that opens)."""
  sources = re.findall(r"src='([^']*)'", page)
  images = []
  for src in sources:
    assert src.startswith("data:image/jpeg;base64,"), src[:40]
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    image.load()
    images.append(image)
  return images


# A GAICD-like photo (100 high, 200 wide) with 10 annotated candidates, best MOS first;
# candidate c spans x1..x1 + 0.5 and y 0.1..0.9.
X1 = np.array([0.20, 0.45, 0.40, 0.05, 0.35, 0.30, 0.25, 0.15, 0.10, 0.00], np.float32)
CANDIDATES = np.stack([X1, np.full(10, 0.1), X1 + 0.5, np.full(10, 0.9)], -1).astype(np.float32)
MOS = np.array([4.6, 4.2, 3.9, 3.5, 3.1, 2.8, 2.5, 2.2, 1.9, 1.5], np.float32)
# Proposals by descending score: candidate 0 narrowed to IoU 0.44 / 0.5 = 0.88 with it,
# candidate 1 itself, a box far from every candidate.
GAICD_PROPOSALS = np.array([[[0.2, 0.1, 0.64, 0.9], [0.45, 0.1, 0.95, 0.9],
                             [0.0, 0.92, 0.05, 1.0]]] * 2, np.float32)
GAICD_SCORES = np.array([[0.9, 0.5, 0.1]] * 2, np.float32)


def _gaicd_batch():
  boxes = np.zeros((2, 10, 4), np.float32)  # The second example is padding.
  boxes[0] = CANDIDATES
  return {
      "image": np.zeros((2, 8, 8, 3), np.float32),
      "image_valid_hw": np.ones((2, 2), np.float32),
      "image_size": np.array([[100, 200], [1, 1]], np.int32),
      "boxes": boxes, "box_scores": np.stack([MOS, np.zeros(10, np.float32)]),
      "box_mask": np.array([[True] * 10, [False] * 10]),
      "valid": np.array([True, False]),
      "image_id": np.array([b"photo", b"pad"]),
  }


def _predict_gaicd(batch, score_given):
  """The proposals above; a given box scores its x1."""
  if score_given:
    return {"boxes": batch["boxes"], "scores": np.asarray(batch["boxes"])[..., 0]}
  return {"boxes": GAICD_PROPOSALS, "scores": GAICD_SCORES}


def test_proposal_ranking_and_iou_protocols_against_hand_computed_values():
  result = evaluate.evaluate_benchmark(_predict_gaicd, iter([_gaicd_batch()]), lambda b: b,
                                       ("iou", "proposal", "ranking"))
  assert result["num_images"] == 1  # The padding example is skipped.
  # iou: the top proposal against its best candidate (0): IoU 0.88; only its x2 moves, by 0.06
  # of the width: BDE 0.06 / 4. The second proposal is candidate 1 itself.
  assert result["iou"] == pytest.approx(0.88, abs=1e-6)
  assert result["bde"] == pytest.approx(0.015, abs=1e-6)
  assert result["iou_top5"] == 1.0
  # proposal: positives are candidates 0 and 1 (MOS >= 4), the best is 0. The top proposal
  # reaches IoU 0.88 with it: a hit at tau 0.85, not at 0.90.
  assert result["acc5_tau0.85"] == result["acc10_tau0.85"] == 1.0
  assert result["acc5_tau0.90"] == result["acc10_tau0.90"] == 0.0
  assert result["num_positives"] == 2
  # AP at IoU 0.50..0.85 (8 thresholds): TP, TP, FP -> 1. At 0.90 and 0.95: FP, TP, FP ->
  # precision 0, 1/2, 1/3 at recall 0, 1/2, 1/2: recall points 0.00..0.50 (51 of 101) get 1/2.
  ap_high = 51 * 0.5 / 101
  assert result["ap_tau0.85"] == 1.0
  assert result["ap_tau0.90"] == pytest.approx(ap_high, rel=1e-12)
  assert result["map"] == pytest.approx((8 * 1.0 + 2 * ap_high) / 10, rel=1e-12)
  # ranking: scored by x1, the candidates come in the order 1, 2, 4, 5, 6, 0, 7, 8, 3, 9, i.e.
  # predicted ranks 5, 0, 1, 8, 2, 3, 4, 6, 7, 9 against MOS ranks 0..9: sum d^2 = 66 and
  # SRCC = 1 - 6 * 66 / (10 * 99) = 0.6.
  assert result["srcc"] == pytest.approx(0.6, rel=1e-6)
  assert result["pcc"] == pytest.approx(np.corrcoef(X1, MOS)[0, 1], rel=1e-5)
  # The top 4 (MOS ranks 1, 2, 4, 5): 3 of them in the MOS top 5, all in the top 10; weighted,
  # ranks 1, 2, 4 count exp(-0.2 (rank - position)) and rank 5 is out of the top 5.
  assert result["acc_1_5"] == 1.0 and result["acc_4_5"] == 0.75 and result["acc_4_10"] == 1.0
  assert result["wacc_1_5"] == pytest.approx(math.exp(-0.2), rel=1e-12)
  assert result["wacc_4_5"] == pytest.approx((2 * math.exp(-0.2) + math.exp(-0.4)) / 4,
                                             rel=1e-12)


def test_pairs_protocol_needs_pairs():
  batch = _batch()
  del batch["pair_boxes"], batch["pair_weights"]
  with pytest.raises(ValueError, match="rated crop pairs"):
    evaluate.evaluate_benchmark(_predict, iter([batch]), lambda b: b, ("pairs",))


def _result(step, iou, builder_config="default"):
  return {"dataset": "fcdb", "builder_config": builder_config, "split": "train[85%:]",
          "step": step, "iou": iou, "num_images": 10, "skipped": {}}


def test_result_file_names_carry_the_builder_config():
  assert evaluate.result_filename("fcdb", "train[85%:]") == "fcdb_train_85pct_.json"
  assert evaluate.result_filename("fcdb", "test", "") == "fcdb_test.json"
  assert (evaluate.result_filename("procrop_cad", "train[90%:]", "default")
          == "procrop_cad_default_train_90pct_.json")
  assert (evaluate.result_filename("gaicd", "test", "a/b c")
          == "gaicd_a_b_c_test.json")


def test_each_evaluation_is_kept_and_the_latest_file_is_the_last_one(tmp_path):
  first = evaluate.write_result(str(tmp_path), _result(100, 0.6))
  second = evaluate.write_result(str(tmp_path), _result(200, 0.7))
  other = evaluate.write_result(str(tmp_path), _result(200, 0.1, builder_config="other"))
  assert first == second != other
  assert json.load(open(second)) == _result(200, 0.7)
  history = evaluate.read_history(os.path.splitext(second)[0] + ".jsonl")
  assert [(r["step"], r["iou"], r["builder_config"]) for r in history] == [
      (100, 0.6, "default"), (200, 0.7, "default")]
  assert all("time" in r for r in history)
  assert json.load(open(other))["iou"] == 0.1  # Another config never overwrites it.
  assert sorted(os.listdir(tmp_path)) == [  # No temporary file left behind.
      "fcdb_default_train_85pct_.json", "fcdb_default_train_85pct_.jsonl",
      "fcdb_other_train_85pct_.json", "fcdb_other_train_85pct_.jsonl"]


def test_a_history_line_cut_short_by_a_kill_does_not_spoil_the_next(tmp_path):
  path = evaluate.write_result(str(tmp_path), _result(100, 0.6))
  history = os.path.splitext(path)[0] + ".jsonl"
  with open(history, "a") as f:
    f.write('{"step": 150, "io')  # Killed mid-line.
  evaluate.write_result(str(tmp_path), _result(200, 0.7))
  assert [r["step"] for r in evaluate.read_history(history)] == [100, 200]


def test_format_table_aligns_columns():
  table = evaluate.format_table({
      "FCDB": {"iou": 0.71234, "bde": 0.0612, "num_images": 343},
      "FLMS": {"iou": 0.8, "num_images": 500, "iou_top5": 0.9},
  })
  lines = table.split("\n")
  assert len({len(line) for line in lines}) == 1, table
  assert lines[0].split() == ["iou", "bde", "num_images", "iou_top5"]
  assert lines[2].split() == ["FCDB", "0.7123", "0.0612", "343", "-"]
  assert lines[3].split() == ["FLMS", "0.8000", "-", "500", "0.9000"]
  transposed = evaluate.format_table({"a": {"x": 1.0}, "b": {"x": 2.0}}, transpose=True,
                                     precision=2)
  assert transposed.split("\n")[2].split() == ["x", "1.00", "2.00"]
