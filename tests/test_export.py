"""export.py's model card: cross-validated figures and benchmarks the model trained on."""

import json

import ml_collections
import pytest

from procrop_jax import export


def _summary(tmp_path, name, **fields):
  path = tmp_path / name
  path.write_text(json.dumps(fields))
  return str(path)


def test_the_card_keeps_the_cross_validated_figures_and_nothing_else(tmp_path):
  summary = _summary(tmp_path, "summary.json", photos=1335, folds=5, iou=0.7, iou_se=0.004,
                     bde=0.07, **{"margin over centred 90%": {"mean": 0.03, "low": 0.02,
                                                              "high": 0.04}},
                     per_fold_minutes=[1, 2])
  canvas = _summary(tmp_path, "canvas.json", photos=1335, iou=0.69, canvas=192)
  figures = export.cross_validated_figures([summary, f" {canvas}"])
  assert figures[0] == {"summary": summary, "photos": 1335, "folds": 5, "iou": 0.7,
                        "iou_se": 0.004, "bde": 0.07,
                        "margin over centred 90%": {"mean": 0.03, "low": 0.02, "high": 0.04}}
  assert figures[1]["canvas"] == 192 and figures[1]["summary"] == canvas


def test_a_missing_or_foreign_summary_is_named(tmp_path):
  with pytest.raises(ValueError, match="cannot read.*nowhere.json"):
    export.cross_validated_figures([str(tmp_path / "nowhere.json")])
  other = _summary(tmp_path, "other.json", loss=1.0)
  with pytest.raises(ValueError, match="other.json.*not a summary.json"):
    export.cross_validated_figures([other])


@pytest.mark.parametrize("train_split, split, expected", [
    ("train", "train[85%:]", True), ("train", "train", True),
    ("train[:85%]", "train[85%:]", False), ("train[:10]+train[20:]", "train[10:20]", False),
    ("train", "test", False)])
def test_a_benchmark_is_marked_when_the_run_trained_on_all_of_its_split(train_split, split,
                                                                         expected):
  config = ml_collections.ConfigDict({"data": {"dataset": "fcdb", "train_split": train_split}})
  benchmark = ml_collections.ConfigDict({"dataset": "fcdb", "split": split})
  assert export.trained_on(config, benchmark) is expected
  benchmark.dataset = "flms"
  assert not export.trained_on(config, benchmark)
  del benchmark.dataset  # A benchmark without one scores the training dataset.
  assert export.trained_on(config, benchmark) is expected
