"""The trainer: sharded steps, resume, logging, the NaN guard and evaluation."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from procrop_jax import artifacts
from procrop_jax import checkpointing
from procrop_jax import evaluate
from procrop_jax import inference
from procrop_jax import input_pipeline
from procrop_jax import modes
from procrop_jax import sharding
from procrop_jax import train
from tests.conftest import REPO_ROOT, compilation_cache_env
from tests.test_evaluate import embedded_images


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
  """{"backbone/stem_conv/kernel": array, ...} of a state's parameters."""
  return {sharding.path_to_string(path): np.asarray(leaf)
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
  specs = {sharding.path_to_string(p): leaf.sharding.spec
           for p, leaf in jax.tree_util.tree_leaves_with_path(multi.state["params"])}
  assert any(spec == jax.sharding.PartitionSpec(None, "model") for spec in specs.values())
  backbone = [spec for name, spec in specs.items() if name.startswith("backbone/")]
  assert backbone and all(spec == jax.sharding.PartitionSpec() for spec in backbone)

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


def _final_state(config, workdir):
  """(state, meta) of a run's latest checkpoint."""
  trainer = train.Trainer(config, str(workdir))
  manager = checkpointing.create_checkpoint_manager(str(workdir), config)
  return checkpointing.restore_state(manager, trainer.abstract_state)


def _final_params(config, workdir):
  state, meta = _final_state(config, workdir)
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
  result = json.load(open(tmp_path / "straight" / "eval" /
                          "procrop_cad_default_train_90pct_.json"))
  assert {"iou", "bde", "num_images", "skipped"} <= result.keys()
  assert (result["step"], result["builder_config"]) == (4, "default")
  assert 0.0 <= result["iou"] <= 1.0 and result["num_images"] > 0
  assert (tmp_path / "straight" / "checkpoints_best").is_dir()


@pytest.mark.slow
def test_eval_mode_restores_and_writes_the_documented_keys(tiny_config, tiny_trained_workdir):
  results = modes.evaluate_checkpoint(tiny_config, str(tiny_trained_workdir))
  path = tiny_trained_workdir / "eval" / "procrop_cad_default_train_90pct_.json"
  saved = json.load(open(path))
  assert saved == json.loads(json.dumps(results["cad_val"]))
  for key in ("iou", "bde", "iou_top5", "num_images", "skipped", "step", "dataset",
              "builder_config", "split"):
    assert key in saved
  assert saved["step"] == 1
  history = evaluate.read_history(str(path.with_suffix(".jsonl")))
  assert history[-1]["step"] == 1 and history[-1]["iou"] == saved["iou"]
  # The report: the metrics of the JSON result, and photos of the best benchmark with crops.
  page = (tiny_trained_workdir / "eval" / "report.html").read_text()
  for key in ("iou", "bde", "iou_top5", "num_images"):
    assert f"<td>{key}</td><td>{evaluate._format_value(saved[key], 4)}</td>" in page  # pylint: disable=protected-access
  examples = min(tiny_config.eval.report_examples, saved["num_images"])
  assert len(embedded_images(page)) == examples > 0
  assert page.count("IoU ") == examples and "of cad_val" in page


def test_eval_mode_without_a_checkpoint_says_so(tiny_config, tmp_path):
  with pytest.raises(FileNotFoundError, match="train first"):
    modes.evaluate_checkpoint(tiny_config, str(tmp_path))


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


@pytest.mark.slow
@pytest.mark.parametrize("backbone_learning_rate", [0.0, 1e-3])
def test_the_backbone_trains_only_with_a_backbone_learning_rate(tiny_config, tmp_path,
                                                                 backbone_learning_rate):
  config = tiny_config.copy_and_resolve_references()
  config.optim.backbone_learning_rate = backbone_learning_rate
  config.optim.warmup_steps = 0  # The first step moves the parameters (warm-up starts at 0).
  if not backbone_learning_rate:  # As the CPU recipe trains (the tiny config has no dropout).
    config.model.dropout = 0.25
  config.data.feature_cache.views = 0  # Images through the backbone, not cached features.
  config.model.num_references = 0  # No reference database to build.
  config.mesh.shape = (1, 1)
  trainer = train.Trainer(config, str(tmp_path), devices=jax.devices()[:1])
  # Copies: the step donates the state, whose buffers the CPU arrays would otherwise share.
  before = {k: v.copy() for k, v in params_of(trainer.state).items()}
  trainer.state, metrics = trainer.train_step(trainer.state, trainer.device_batch(
      synthetic_batch(config)))
  assert np.isfinite(float(metrics["loss"]))
  after = params_of(trainer.state)
  changed = {k for k in before if not np.array_equal(before[k], after[k])}
  backbone = {k for k in before if k.startswith("backbone/")}
  assert backbone and changed - backbone  # The head trains in both cases...
  if backbone_learning_rate:  # ... the backbone only with its own rate: every matrix moves.
    assert {k for k in backbone if before[k].ndim > 1} <= changed
  else:
    assert not changed & backbone


def _expected_ema(raw_params, decay):
  """The exponential average of `raw_params` (step 0 first), computed anew in float64."""
  ema = {k: v.astype(np.float64) for k, v in raw_params[0].items()}
  averages = [ema]
  for params in raw_params[1:]:
    ema = {k: decay * ema[k] + (1 - decay) * params[k].astype(np.float64) for k in ema}
    averages.append(ema)
  return averages


@pytest.mark.slow
def test_an_ema_run_checkpoints_the_average_and_the_predictor_restores_it(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.optim.ema_decay = 0.5
  config.train.checkpoint_every = 1
  config.train.keep_checkpoints = 3
  _train(config, tmp_path, 3)

  # The raw parameters of steps 0 (the initialisation from config.seed) to 3, and the EMA each
  # checkpoint holds.
  trainer = train.Trainer(config, str(tmp_path))
  raw, ema = [params_of(trainer.state)], [params_of(trainer.state)]
  manager = checkpointing.create_checkpoint_manager(str(tmp_path), config)
  assert manager.all_steps() == [1, 2, 3]
  for step in (1, 2, 3):
    state, _ = checkpointing.restore_state(manager, trainer.abstract_state, step)
    raw.append(params_of(state))
    ema.append(params_of({"params": state["ema_params"]}))
  for step, (got, want) in enumerate(zip(ema, _expected_ema(raw, 0.5))):
    for key in want:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7,
                                 err_msg=f"step {step}: {key}")
  # Where training moved the head, its average lags behind (the exact values are checked above;
  # a parameter moved by a rounding-sized step may average to itself in float32); the frozen
  # backbone's equals it.
  moved = [k for k in raw[3] if not np.array_equal(raw[3][k], raw[0][k])]
  assert moved and not any(k.startswith("backbone/") for k in moved)
  assert any(not np.array_equal(ema[3][k], raw[3][k]) for k in moved)
  assert all(np.array_equal(ema[3][k], raw[3][k]) for k in raw[3] if k.startswith("backbone/"))

  predictor = inference.Predictor.from_workdir(tmp_path)
  assert predictor.step == 3
  assert_params_close(params_of({"params": predictor.state["params"]}), ema[3], atol=0.0)


# ------------------------------------------------------------------- resume after a kill -9
KILLED_WORKER = pathlib.Path(__file__).resolve().parent / "killed_train_worker.py"


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_loss_with_one_log_line_per_step(
    tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.train.checkpoint_every = 2
  straight = _train(config, tmp_path / "straight", 5)

  # Killed after logging step 4 (last checkpoint: step 2), as a preemption would.
  workdir = tmp_path / "killed"
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **compilation_cache_env())
  result = subprocess.run(
      [sys.executable, str(KILLED_WORKER), str(workdir), config.data.data_dir,
       config.data.manual_dir, "5", "2", "4"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  logged = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
  assert logged == [1, 2, 3, 4]
  assert scalar_steps(workdir, "loss") == [1, 2, 3, 4]
  # What a kill during a save leaves: unfinished Orbax folders.
  for folder in ("checkpoints", "checkpoints_best"):
    (workdir / folder / "4.orbax-checkpoint-tmp-1234567890").mkdir(parents=True)

  resumed = _train(config, workdir, 5)  # Takes over the dead run's lock.

  assert resumed["step"] == 5
  np.testing.assert_allclose(resumed["metrics"]["loss"], straight["metrics"]["loss"], rtol=1e-6)
  a, _ = _final_params(config, tmp_path / "straight")
  b, _ = _final_params(config, workdir)
  assert_params_close(a, b, atol=1e-6)
  logged = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
  assert logged == [1, 2, 3, 4, 5]
  assert scalar_steps(workdir, "loss") == [1, 2, 3, 4, 5]  # TensorBoard draws each step once.
  assert not list(workdir.glob("checkpoints*/*orbax-checkpoint-tmp*"))


def test_truncate_metrics_log_keeps_steps_up_to_the_restored_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)] + [{"step": 2, "val_loss": 0.5}]
  path.write_text("".join(json.dumps(l) + "\n" for l in lines) + '{"step": 4, "lo')
  checkpointing.truncate_metrics_log(str(path), 2)
  assert [json.loads(l) for l in open(path)] == [lines[0], lines[1], lines[3]]
  checkpointing.truncate_metrics_log(str(path), 0)  # A fresh run in an old workdir starts empty.
  assert path.read_text() == ""
  checkpointing.truncate_metrics_log(str(tmp_path / "absent.jsonl"), 3)  # Nothing to do.


def scalar_steps(logdir, tag):
  """The steps of every `tag` event in the TensorBoard event files of `logdir`, as read back."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  steps = []
  for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      steps += [event.step for value in event.summary.value if value.tag == tag]
  return sorted(steps)


def test_truncate_event_files_keeps_steps_up_to_the_restored_one(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    for step in (1, 2, 3, 4):
      tf.summary.scalar("loss", 1.0 / step, step=step)
  writer.close()
  (path,) = tmp_path.glob("events.out.tfevents.*")
  with open(path, "ab") as f:
    f.write(b"\x20\x00\x00")  # A record cut short by a kill.
  checkpointing.truncate_event_files(str(tmp_path), 2)
  assert scalar_steps(tmp_path, "loss") == [1, 2]
  assert list(tmp_path.glob("events.out.tfevents.*")) == [path]  # Replaced in place...
  assert not list(tmp_path.glob(".*"))  # ... leaving no temporary file behind.


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
  from configs import testing  # pylint: disable=g-import-not-at-top
  with artifacts.workdir_lock(tmp_path):
    with pytest.raises(artifacts.WorkdirInUseError, match=f"pid {os.getpid()}"):
      train.train_and_evaluate(testing.get_config(), str(tmp_path))


class TestBestCheckpoint:

  STATE = {"w": np.arange(3, dtype=np.float32)}

  def steps(self, workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints_best").iterdir())

  def test_remembers_the_best_value_across_a_restart(self, tmp_path):
    best = checkpointing.BestCheckpoint(str(tmp_path), "iou")
    assert best.update(4, 0.5, self.STATE)
    assert not best.update(6, 0.4, self.STATE)
    restarted = checkpointing.BestCheckpoint(str(tmp_path), "iou")
    assert (restarted.best, restarted.step) == (0.5, 4)
    assert not restarted.update(8, 0.45, self.STATE)
    assert self.steps(tmp_path) == [4]

  def test_a_better_value_replaces_a_saved_step_or_a_later_one(self, tmp_path):
    # After a resume, steps evaluated before the kill are evaluated again.
    best = checkpointing.BestCheckpoint(str(tmp_path), "bde")
    assert best.update(6, 0.2, self.STATE)
    restarted = checkpointing.BestCheckpoint(str(tmp_path), "bde")
    assert restarted.update(6, 0.1, self.STATE)  # No StepAlreadyExistsError.
    assert restarted.update(4, 0.05, self.STATE)  # Kept, though the old best's step is later.
    assert self.steps(tmp_path) == [4]
    assert checkpointing.BestCheckpoint(str(tmp_path), "bde").best == 0.05

  def test_a_changed_metric_starts_afresh(self, tmp_path):
    assert checkpointing.BestCheckpoint(str(tmp_path), "iou").update(2, 0.9, self.STATE)
    assert checkpointing.BestCheckpoint(str(tmp_path), "bde").best is None
