"""experiments/fcdb/cross_validate: folds that partition the photos, a model never scored on its
own training photos, the paired interval, and a whole cross-validated run on the tiny config."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.fcdb import cross_validate
from experiments.fcdb import cv_canvas
from procrop_jax import input_pipeline


@pytest.mark.parametrize("num_examples,folds", [(10, 2), (11, 3), (1335, 5), (7, 7)])
def test_fold_bounds_are_contiguous_disjoint_and_cover_every_photo(num_examples, folds):
  bounds = cross_validate.fold_bounds(num_examples, folds)
  assert len(bounds) == folds
  covered = np.concatenate([np.arange(a, b) for a, b in bounds])
  np.testing.assert_array_equal(covered, np.arange(num_examples))
  sizes = [b - a for a, b in bounds]
  assert max(sizes) - min(sizes) <= 1


def test_fold_bounds_refuse_impossible_counts():
  with pytest.raises(ValueError, match="--folds=1"):
    cross_validate.fold_bounds(10, 1)
  with pytest.raises(ValueError, match="--folds=11"):
    cross_validate.fold_bounds(10, 11)


def _ids(builder, split):
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  return [source[i]["image_id"] for i in range(len(source))]


def test_held_out_folds_partition_the_split_and_never_train_on_their_photos(tiny_config):
  builder = input_pipeline.load_builder(input_pipeline.DataSettings.from_config(tiny_config.data))
  everything = _ids(builder, "train")
  held_out_all = []
  for fold in range(3):
    train_split, held_out = cross_validate.fold_splits("train", len(everything), 3, fold)
    trained, scored = _ids(builder, train_split), _ids(builder, held_out)
    assert scored and not set(trained) & set(scored)
    assert sorted(trained + scored) == sorted(everything)
    held_out_all += scored
  assert sorted(held_out_all) == sorted(everything)


def test_fold_config_scores_only_the_final_step_on_the_fold_and_shares_the_cache(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.feature_cache.views = 2
  fold = cross_validate.fold_config(config, "train", 20, 4, 1)
  assert fold.data.train_split == "train[:5]+train[10:]"
  assert fold.data.eval_split == "train[5:10]"
  assert list(fold.eval.benchmarks) == [cross_validate.BENCHMARK]
  assert fold.eval.benchmarks[cross_validate.BENCHMARK].split == "train[5:10]"
  assert fold.train.eval_every == fold.train.num_steps
  assert fold.data.feature_cache.split == "train"
  assert config.data.train_split != fold.data.train_split  # The caller's config is untouched.
  first = cross_validate.fold_config(config, "train", 20, 4, 0)
  assert first.data.train_split == "train[5:]"


def test_standard_error_and_paired_interval_match_hand_computed_values():
  # [1, 2, 3, 4]: sample sd sqrt(5/3), so SE sqrt(5/3) / 2.
  assert cross_validate.standard_error(np.array([1, 2, 3, 4])) == pytest.approx(
      np.sqrt(5 / 3) / 2)
  # Two photos differing by 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4,
  # 1/2, 1/4, so the 95% interval is [0, 1] and the resample means average 0.5.
  interval = cross_validate.paired_interval(np.array([0.0, 1.0]), samples=20_000)
  assert interval["mean"] == 0.5 and interval["low"] == 0.0 and interval["high"] == 1.0
  assert interval["photos"] == 2
  # The same difference on every photo: no spread at all.
  flat = cross_validate.paired_interval(np.full(50, 0.03))
  assert flat["low"] == pytest.approx(0.03) and flat["high"] == pytest.approx(0.03)
  # A large sample: the interval is about the mean +- 1.96 SE.
  rng = np.random.default_rng(1)
  differences = rng.normal(0.02, 0.1, size=2000)
  interval = cross_validate.paired_interval(differences)
  se = cross_validate.standard_error(differences)
  assert interval["low"] == pytest.approx(differences.mean() - 1.96 * se, abs=0.4 * se)
  assert interval["high"] == pytest.approx(differences.mean() + 1.96 * se, abs=0.4 * se)


def test_summary_pairs_photos_and_refuses_a_reference_of_other_photos():
  model = {"a": {"iou": 0.8, "bde": 0.05}, "b": {"iou": 0.6, "bde": 0.1},
           "c": {"iou": 0.7, "bde": 0.07}}
  baselines = {"centred 90%": {k: {"iou": 0.5, "bde": 0.1} for k in model}}
  summary = cross_validate.summarize(model, baselines, {"a": 0, "b": 1, "c": 1},
                                     reference={k: {"iou": 0.6, "bde": 0.1} for k in model})
  assert summary["iou"] == pytest.approx(0.7)
  assert summary["fold_iou"] == pytest.approx([0.8, 0.65])
  assert summary["margin over centred 90%"]["mean"] == pytest.approx(0.2)
  assert summary["difference"]["mean"] == pytest.approx(0.1)
  with pytest.raises(ValueError, match="same folds"):
    cross_validate.summarize(model, baselines, {"a": 0, "b": 1, "c": 1},
                             reference={"a": {"iou": 0.6, "bde": 0.1}})


@pytest.mark.slow
def test_a_cross_validated_run_scores_every_photo_once_and_pairs_with_a_reference(
    tiny_config, tmp_path, capsys):
  config = tiny_config.copy_and_resolve_references()
  config.model.num_references = 0
  config.data.feature_cache.views = 1
  config.data.feature_cache.dir = str(tmp_path / "cache")
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  builder = input_pipeline.load_builder(input_pipeline.DataSettings.from_config(config.data))
  photos = builder.info.splits["train"].num_examples
  first = cross_validate.cross_validate(config, str(tmp_path / "a"), folds=2, samples=200)
  assert first["photos"] == photos and first["folds"] == 2 and first["steps"] == 2
  assert len(list((tmp_path / "cache").iterdir())) == 1  # One cache for both folds.
  per_image = json.loads((tmp_path / "a" / "per_image.json").read_text())
  assert sorted(per_image) == sorted(i.decode() for i in _ids(builder, "train"))
  # A finished fold is read back, not trained again; a run pairs with another of its folds.
  again = cross_validate.cross_validate(config, str(tmp_path / "a"), folds=2, samples=200,
                                        reference=str(tmp_path / "a"))
  assert again["iou"] == first["iou"]
  assert again["difference"]["mean"] == 0.0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
           if line.startswith("{")]
  assert [line["fold"] for line in lines if "fold" in line] == [0, 1, 0, 1]
  # The Cropper's canvases score the same folds' photos, paired with the square canvas.
  size = config.data.image_size
  settings = [(size, "buckets"), (size, "orientation")]
  canvases = cv_canvas.score_canvases(str(tmp_path / "a"), settings, samples=200)
  assert canvases[0]["photos"] == photos and canvases[0]["canvas"] == size
  assert canvases[1]["layout"] == "orientation"
  canvases = cv_canvas.score_canvases(str(tmp_path / "a"), settings, reference=str(tmp_path / "a"),
                                      samples=200)
  assert canvases[0]["difference"]["mean"] == 0.0  # Paired with itself at the same size.
  assert "difference vs square canvas" in canvases[0]
  assert (tmp_path / "a" / f"canvas_{size}" / "per_image.json").is_file()
  assert (tmp_path / "a" / f"canvas_{size}_orientation" / "per_image.json").is_file()


def test_cv_canvas_settings_name_a_size_and_a_layout():
  assert cv_canvas.parse_setting("192") == (192, "buckets")
  assert cv_canvas.parse_setting(" 256:orientation") == (256, "orientation")
  assert cv_canvas.setting_name((256, "orientation")) == "256_orientation"
  with pytest.raises(ValueError, match="'192:round'"):
    cv_canvas.parse_setting("192:round")


def test_cv_canvas_needs_a_cross_validated_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="no fold_<k>/ with a checkpoint"):
    cv_canvas.fold_workdirs(str(tmp_path))

