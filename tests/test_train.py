"""The trainer: sharded steps, resume, logging, the NaN guard and evaluation."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from procrop_jax import input_pipeline
from procrop_jax import train


def synthetic_batch(config, seed=0):
  """A fixed global batch in the pipeline's format (references included when K > 0)."""
  rng = np.random.default_rng(seed)
  b, s, m = config.train.batch_size, config.data.image_size, config.data.max_boxes
  xy = rng.uniform(0.0, 0.4, (b, m, 2))
  wh = rng.uniform(0.3, 0.6, (b, m, 2))
  batch = {
      "image": rng.random((b, s, s, 3), dtype=np.float32),
      "image_valid_hw": np.tile(np.array([[1.0, 0.75]], np.float32), (b, 1)),
      "image_size": np.tile(np.array([[480, 640]], np.int32), (b, 1)),
      "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
      "box_scores": np.full((b, m), 5.0, np.float32),
      "box_mask": np.arange(m)[None, :] < rng.integers(1, m + 1, (b, 1)),
  }
  k = config.model.num_references
  if k:
    batch["reference_tokens"] = rng.standard_normal(
        (b, k, config.retrieval.tokens_grid ** 2, 1280)).astype(np.float16)
  return batch


def params_of(state):
  return {"/".join(map(str, path)): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(state["params"])}


def assert_params_close(a, b, atol):
  assert a.keys() == b.keys()
  worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
  assert worst <= atol, f"largest parameter difference {worst} > {atol}"


def test_one_step_is_the_same_on_1_and_8_devices_and_params_are_sharded(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.mesh.shape = (4, 2)
  batch = synthetic_batch(config)
  config_one = config.copy_and_resolve_references()
  config_one.mesh.shape = (1, 1)
  single = train.Trainer(config_one, str(tmp_path / "one"), devices=jax.devices()[:1])
  multi = train.Trainer(config, str(tmp_path / "eight"))
  assert multi.mesh.devices.size == 8

  # A head matrix is split over the "model" axis; the backbone is replicated.
  specs = {"/".join(map(str, p)): leaf.sharding.spec
           for p, leaf in jax.tree_util.tree_leaves_with_path(multi.state["params"])}
  assert any(spec == jax.sharding.PartitionSpec(None, "model") for spec in specs.values())
  assert all(spec == jax.sharding.PartitionSpec()
             for name, spec in specs.items() if name.startswith("backbone"))

  single.state, single_metrics = single.train_step(single.state, single.device_batch(batch))
  multi.state, multi_metrics = multi.train_step(multi.state, multi.device_batch(batch))
  # Float32 reductions are split differently over 8 devices: equal up to rounding.
  np.testing.assert_allclose(float(single_metrics["loss"]), float(multi_metrics["loss"]),
                             rtol=1e-5)
  assert_params_close(params_of(single.state), params_of(multi.state), atol=1e-5)


def _train(config, workdir, num_steps):
  config = config.copy_and_resolve_references()
  config.train.num_steps = num_steps
  return train.train_and_evaluate(config, str(workdir))


def _final_params(config, workdir):
  trainer = train.Trainer(config, str(workdir))
  manager = train.create_checkpoint_manager(str(workdir), config)
  state, meta = train.restore_state(manager, trainer.abstract_state)
  return params_of(state), meta


class Preempted(Exception):
  pass


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.train.eval_every = 4
  config.train.checkpoint_every = 2
  straight = _train(config, tmp_path / "straight", 4)

  # The same run, killed while fetching the batch of step 3, then started again.
  real = input_pipeline.create_train_iterator

  def preempted_after_two_steps(*args, **kwargs):
    iterator = real(*args, **kwargs)
    yield next(iterator)
    yield next(iterator)
    raise Preempted()

  monkeypatch.setattr(input_pipeline, "create_train_iterator", preempted_after_two_steps)
  with pytest.raises(Preempted):
    _train(config, tmp_path / "resumed", 4)
  monkeypatch.setattr(input_pipeline, "create_train_iterator", real)
  resumed = _train(config, tmp_path / "resumed", 4)

  assert straight["step"] == resumed["step"] == 4
  assert straight["train_step_compilations"] == 1  # No recompilation after the first step.
  np.testing.assert_allclose(straight["metrics"]["loss"], resumed["metrics"]["loss"], rtol=1e-5)
  a, meta = _final_params(config, tmp_path / "straight")
  b, _ = _final_params(config, tmp_path / "resumed")
  assert meta["step"] == 4 and meta["examples_seen"] == 4 * config.train.batch_size
  assert_params_close(a, b, atol=1e-6)

  # One JSON line per logged step, and the evaluation at the last step.
  lines = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
  train_lines = [l for l in lines if "grad_norm" in l]
  assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
  assert all(np.isfinite(l["loss"]) for l in train_lines)
  assert any("cad_val/iou" in l for l in lines)
  result = json.load(open(tmp_path / "straight" / "eval" / "procrop_cad_train_90pct_.json"))
  assert {"iou", "bde", "num_images", "skipped"} <= result.keys()
  assert 0.0 <= result["iou"] <= 1.0 and result["num_images"] > 0
  assert (tmp_path / "straight" / "checkpoints_best").is_dir()


@pytest.mark.slow
def test_eval_mode_restores_and_writes_the_documented_keys(tiny_config, tiny_trained_workdir):
  results = train.evaluate_checkpoint(tiny_config, str(tiny_trained_workdir))
  path = tiny_trained_workdir / "eval" / "procrop_cad_train_90pct_.json"
  saved = json.load(open(path))
  assert saved == json.loads(json.dumps(results["cad_val"]))
  for key in ("iou", "bde", "iou_top5", "num_images", "skipped", "step", "dataset", "split"):
    assert key in saved
  assert saved["step"] == 1


def test_eval_mode_without_a_checkpoint_says_so(tiny_config, tmp_path):
  with pytest.raises(FileNotFoundError, match="train first"):
    train.evaluate_checkpoint(tiny_config, str(tmp_path))


def test_a_planted_nan_stops_training_with_the_step_and_keeps_the_last_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.train.checkpoint_every = 1
  config.train.eval_every = 0
  real = input_pipeline.create_train_iterator

  def poisoned(*args, **kwargs):
    for step, batch in enumerate(real(*args, **kwargs), start=kwargs.get("start_step", 0) + 1):
      if step == 3:
        batch = dict(batch, image=batch["image"].copy())
        batch["image"][0, 0, 0, 0] = np.nan
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", poisoned)
  with pytest.raises(train.NonFiniteLossError, match="Non-finite loss at step 3"):
    _train(config, tmp_path, 6)
  manager = ocp.CheckpointManager(os.path.join(tmp_path, "checkpoints"))
  assert manager.latest_step() == 2
