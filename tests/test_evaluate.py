"""Where benchmark results go: a latest file per dataset config and split, and a history."""

import json
import os

from procrop_jax import evaluate


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
