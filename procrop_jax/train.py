"""Training: mesh -> data -> model -> shardings -> jitted step -> restore -> loop.

`train_and_evaluate(config, workdir)` is what `main --mode=train` runs. The loop is resumable:
the step number fixes the data position (the input pipeline seeks to it) and every random key
(folded from the seed and the step), so an interrupted run restarted with the same command
continues exactly where its last checkpoint stopped.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator

from absl import logging
from clu import metric_writers
from clu import periodic_actions
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from procrop_jax import artifacts
from procrop_jax import canvas_cache
from procrop_jax import checkpointing
from procrop_jax import device_augment
from procrop_jax import evaluate
from procrop_jax import feature_cache
from procrop_jax import inference
from procrop_jax import input_pipeline
from procrop_jax import model_zoo
from procrop_jax import modes
from procrop_jax import sharding
from procrop_jax import steps
from procrop_jax import workdir as workdir_lib
from procrop_jax.datasets import prepare
from procrop_jax.models import procrop
from procrop_jax.retrieval import references as references_lib

State = steps.State


class NonFiniteLossError(FloatingPointError):
  """Raised when a step's loss or gradients are not finite; training stops there."""


# --------------------------------------------------------------------------------- the trainer
class Trainer:
  """Builds everything a run needs once; `train_and_evaluate` drives it.

  Attributes are public so that tests and notebooks can poke at a step.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               devices: list[jax.Device] | None = None):
    self.config = config
    self.workdir = workdir
    # Mesh (over all devices of all processes unless `devices` says otherwise).
    self.mesh = sharding.create_mesh(config.mesh.shape, config.mesh.axes, devices)
    num_data = self.mesh.shape[sharding.DATA_AXIS]
    if config.train.batch_size % num_data:
      raise ValueError(f"config.train.batch_size={config.train.batch_size} must be divisible "
                       f"by the mesh's data axis ({num_data} devices).")
    # Model and its split state.
    model = model_zoo.create_model(config)
    self.graphdef, params, self.rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    self.tx = steps.create_optimizer(config)
    # Shardings: parameters from the rule table; optimizer state mirrors them.
    replicated = sharding.replicated(self.mesh)
    param_shardings = sharding.param_shardings(params, self.mesh, config.mesh.param_rules)
    params = sharding.put(params, param_shardings)
    state = {
        "step": sharding.put(jnp.zeros((), jnp.int32), replicated),
        "params": params,
        "rest": sharding.put(rest, replicated),
        "opt_state": sharding.on_mesh(jax.jit(self.tx.init)(params), self.mesh, replicated),
    }
    if config.optim.ema_decay > 0:
      state["ema_params"] = jax.tree.map(jnp.copy, params)
    self.state_shardings = jax.tree.map(lambda x: x.sharding, state)
    self.state = state
    self.rng_state = sharding.put(self.rng_state, replicated)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.references = (references_lib.References(config, workdir)
                       if config.model.num_references else None)

    base_key = jax.random.key(config.seed)
    self.train_step = jax.jit(
        functools.partial(steps.train_step, graphdef=self.graphdef, rng_state=self.rng_state,
                          tx=self.tx, loss_config=config.loss,
                          ema_decay=config.optim.ema_decay, base_key=base_key,
                          is_frozen=steps.frozen_filter(config)),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, replicated),
        donate_argnums=0)
    self.eval_step = jax.jit(
        functools.partial(steps.eval_step, graphdef=self.graphdef, rng_state=self.rng_state,
                          loss_config=config.loss),
        in_shardings=(self.state_shardings, self.batch_sharding), out_shardings=replicated)
    # Batches of cached canvases are augmented on the devices, each shard its own examples.
    # A jitted function of its own, not part of train_step: XLA:CPU executables that fuse it
    # with the step's gradient all-reduce deadlocked when loaded from the persistent
    # compilation cache on 8 host devices (the step alone does not).
    self.augment = (jax.jit(_augmentation(config), in_shardings=(self.batch_sharding,),
                            out_shardings=self.batch_sharding)
                    if canvas_cache.enabled(config) else None)
    self._predict_steps = {
        given: jax.jit(functools.partial(steps.predict_step, graphdef=self.graphdef,
                                         rng_state=self.rng_state, score_given_boxes=given,
                                         **inference.inference_options(config)),
                       in_shardings=(self.state_shardings, self.batch_sharding),
                       out_shardings=replicated)
        for given in (False, True)}

  def initialize_from(self, source: str) -> None:
    """Starts from a trained model's parameters (fine-tuning; `config.train.init_from`): a
    workdir's best (else latest) checkpoint or a shipped model. The optimizer starts afresh.
    With `config.train.init_new_modules`, parameters the trained model lacks keep their
    initialisation (a K = 0 model fine-tuned with retrieval).

    Raises:
      ValueError: the trained model's parameters do not fit this config's model.
    """
    trained = nnx.to_flat_state(inference.trained_params(source))
    ours = nnx.to_flat_state(self.state["params"])
    theirs = dict(trained)
    our_shapes = {"/".join(map(str, k)): v.shape for k, v in ours}
    their_shapes = {"/".join(map(str, k)): v.shape for k, v in trained}
    new = sorted(our_shapes.keys() - their_shapes.keys())
    differ = sorted(k for k in our_shapes.keys() | their_shapes.keys()
                    if our_shapes.get(k) != their_shapes.get(k)
                    and not (k in new and self.config.train.init_new_modules))
    if differ:
      hint = ("; or set config.train.init_new_modules=True to start the modules it lacks "
              "afresh" if set(differ) <= set(new) else "")
      raise ValueError(f"config.train.init_from={source!r}: its parameters do not fit this "
                       f"model ({len(differ)} differ, e.g. {', '.join(differ[:3])}); use the "
                       f"same config.model fields{hint}")
    if new:
      modules = sorted({k.split("/")[0] for k in new})
      logging.info("init_from %s: %d parameters (%s) start from their initialisation.",
                   source, len(new), ", ".join(modules))
    merged = [(path, theirs.get(path, value)) for path, value in ours]
    params = nnx.from_flat_state(merged)
    params = sharding.put(jax.tree.map(jnp.asarray, params), self.state_shardings["params"])
    self.state["params"] = params
    self.state["opt_state"] = sharding.on_mesh(
        jax.jit(self.tx.init)(params), self.mesh, sharding.replicated(self.mesh))
    if "ema_params" in self.state:
      self.state["ema_params"] = jax.tree.map(jnp.copy, params)
    logging.info("Initialised the parameters from %s.", source)

  @property
  def abstract_state(self) -> State:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        self.state, self.state_shardings)

  def device_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding.to_global_arrays(batch, self.mesh)

  def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A training batch on the devices; cached canvases are augmented there."""
    batch = self.device_batch(batch)
    return batch if self.augment is None else self.augment(batch)

  def with_references(self, batches: Iterator[dict[str, np.ndarray]],
                      data_config: ml_collections.ConfigDict, split: str
                      ) -> Iterator[dict[str, np.ndarray]]:
    """`batches` with their reference tokens when the model uses retrieval."""
    return references_lib.add_references(self.references, batches, data_config, split)

  def model(self, use_ema: bool = True) -> procrop.ProCrop:
    """The current model as an NNX module (EMA parameters when present and asked for)."""
    params = self.state.get("ema_params") if use_ema else None
    params = self.state["params"] if params is None else params
    return nnx.merge(self.graphdef, params, self.rng_state, self.state["rest"])

  def predict(self, batch: dict[str, jax.Array], score_given_boxes: bool = False
              ) -> dict[str, jax.Array]:
    return self._predict_steps[score_given_boxes](self.state, batch)

  def run_benchmarks(self, output_dir: str | None, step: int | None = None
                     ) -> dict[str, dict[str, Any]]:
    return evaluate.run_benchmarks(self.predict, self.config, to_device=self.device_batch,
                                   output_dir=output_dir, step=step,
                                   batch_transform=self.with_references)

  def validation_loss(self, batches: Iterator[dict[str, np.ndarray]]) -> dict[str, float]:
    totals, count = {}, 0
    for batch in batches:
      metrics = jax.device_get(self.eval_step(self.state, self.device_batch(batch)))
      for k, v in metrics.items():
        totals[k] = totals.get(k, 0.0) + float(v)
      count += 1
    return {f"val_{k}": v / max(count, 1) for k, v in totals.items()}


def input_name(config: ml_collections.ConfigDict) -> str:
  """Which of the three inputs feeds training: feature_cache, canvas_cache or tf.data."""
  if feature_cache.enabled(config) and canvas_cache.enabled(config):
    raise ValueError("config.data.feature_cache.views > 0 and config.data.canvas_cache.enabled "
                     "are two ways to feed training: choose one")
  if feature_cache.enabled(config):
    return "feature_cache"
  return "canvas_cache" if canvas_cache.enabled(config) else "tf.data"


def build_input_caches(config: ml_collections.ConfigDict) -> None:
  """Builds (or finds) the cache the config trains from, if any (after the dataset)."""
  name = input_name(config)
  if name == "feature_cache":
    feature_cache.check_frozen(config)
    feature_cache.build(config)
  elif name == "canvas_cache":
    canvas_cache.build(config)


def training_batches(config: ml_collections.ConfigDict, start_step: int = 0
                     ) -> Iterator[dict[str, np.ndarray]]:
  """This host's training batches from the config's input, forever, from `start_step`."""
  name = input_name(config)
  kwargs = dict(seed=config.seed, global_batch_size=config.train.batch_size,
                start_step=start_step)
  if name == "feature_cache":
    return feature_cache.create_train_iterator(config, **kwargs)
  if name == "canvas_cache":
    return canvas_cache.create_train_iterator(config, **kwargs)
  return input_pipeline.create_train_iterator(config.data, **kwargs)


def _augmentation(config: ml_collections.ConfigDict):
  """The augmentation of canvas-cache batches (device_augment.py) for this config."""
  settings = input_pipeline.DataSettings.from_config(config.data)
  return functools.partial(
      device_augment.augment_batch, seed=config.seed, image_size=settings.image_size,
      augment=settings.augmentation(),
      plain_probability=float(config.data.canvas_cache.plain_probability))


def _write_jsonl(path: str, record: dict[str, Any]) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def _check_finite(step: int, metrics: dict[str, Any]) -> dict[str, float]:
  """The step's metrics on the host; raises NonFiniteLossError if the loss is not finite."""
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
    terms = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()))
    raise NonFiniteLossError(
        f"Non-finite loss at step {step}: {terms}. Training stopped; the parameters were not "
        "updated by this step and the last checkpoint is kept.")
  return metrics


def evaluate_during_training(trainer: Trainer, step: int, writer,
                             best: checkpointing.BestCheckpoint,
                             metrics_path: str | None) -> dict[str, float]:
  """Validation loss and the configured benchmarks; tracks the best checkpoint."""
  config = trainer.config
  scalars = trainer.validation_loss(trainer.with_references(
      input_pipeline.create_eval_iterator(config.data, global_batch_size=config.eval.batch_size),
      config.data, config.data.eval_split))
  results = trainer.run_benchmarks(os.path.join(trainer.workdir, workdir_lib.EVAL_DIR), step=step)
  for name, result in results.items():
    scalars.update({f"{name}/{k}": float(v) for k, v in result.items()
                    if isinstance(v, (int, float)) and k != "step"})
  writer.write_scalars(step, scalars)
  if metrics_path:
    _write_jsonl(metrics_path, {"step": step, **scalars})
  if config.eval.best_benchmark in results:
    best.update(step, results[config.eval.best_benchmark].get(best.metric), trainer.state)
  return scalars


# -------------------------------------------------------------------- the run describes itself
# Fields of the optimisation schedule: a resumed run may change them, but its curves then stop
# describing one recipe.
SCHEDULE_FIELDS = ("optim.", "train.")
# Changing these at a resume changes neither the model nor the schedule.
_UNCHECKED_FIELDS = ("train.profile_steps",)


class ConfigChangedError(ValueError):
  """A resumed run's config changes the model its checkpoints were trained with."""


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved config as WORKDIR/config.json holds it (tuples as lists)."""
  return json.loads(json.dumps(config.copy_and_resolve_references().to_dict(), default=list))


def check_resumed_config(saved: dict[str, Any], config: ml_collections.ConfigDict, *,
                         source: str = "config.json") -> list[str]:
  """Compares a resumed run's config with the one its checkpoints were trained with.

  Only fields both configs have are compared (a field added to the code since is no change).

  Args:
    saved: what the run wrote to WORKDIR/config.json when it started.
    config: the config it resumes with.
    source: where `saved` came from, for the messages.

  Returns:
    The schedule fields that changed (each also logged as a warning).

  Raises:
    ConfigChangedError: a model field changed (one line naming every such field).
  """
  before, now = workdir_lib.flat_config(saved), workdir_lib.flat_config(_config_json(config))
  changed = [k for k in sorted(set(before) & set(now))
             if before[k] != now[k] and not k.startswith(_UNCHECKED_FIELDS)]
  model = [k for k in changed if k.startswith(workdir_lib.MODEL_FIELDS)]
  if model:
    raise ConfigChangedError(
        f"resuming with a different model than the checkpoints' ({source}): "
        + ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in model)
        + "; use a new --workdir, or the run's own values")
  schedule = [k for k in changed if k.startswith(SCHEDULE_FIELDS)]
  for key in schedule:
    logging.warning("Resuming with %s=%r instead of %r (%s): the schedule changes mid-run.",
                    key, now[key], before[key], source)
  return schedule


def _hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
  """The config as TensorBoard hyperparameters (scalars; anything else as its text)."""
  return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
          for k, v in workdir_lib.flat_config(_config_json(config)).items()}


class _StepProfiler:
  """Traces the train steps `config.train.profile_steps` = (start, stop) into WORKDIR/profile."""

  def __init__(self, profile_steps: Any, workdir: str):
    steps = tuple(profile_steps or ())
    if steps and (len(steps) != 2 or not all(isinstance(s, int) for s in steps)
                  or not 0 <= steps[0] < steps[1]):
      raise ValueError(f"config.train.profile_steps={profile_steps!r}: expected (start, stop) "
                       "with 0 <= start < stop, or () for no profile")
    self.start, self.stop = steps or (0, 0)
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def __call__(self, step: int, state: Any) -> None:
    """Called before each train step with the step counter and the state it starts from."""
    if not self.active and self.start <= step < self.stop:
      logging.info("Profiling steps %d -> %d into %s.", step, self.stop, self.directory)
      jax.profiler.start_trace(self.directory)
      self.active = True
    elif self.active and step >= self.stop:
      self.close(state)

  def close(self, state: Any = None) -> None:
    if self.active:
      if state is not None:
        jax.block_until_ready(state)  # The traced steps run asynchronously: wait for them.
      jax.profiler.stop_trace()
      self.active = False

  def __enter__(self) -> "_StepProfiler":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()  # Training failed mid-profile: keep what was traced.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  The run holds WORKDIR/train.lock while it works (on process 0): a second run in the same
  workdir fails at once instead of interleaving checkpoints and logs; the run that resumes after
  a kill takes the lock over.

  Returns:
    A summary: the final step, the last logged metrics and how often the train step compiled.

  Raises:
    artifacts.WorkdirInUseError: another live run holds the workdir.
    ConfigChangedError: resuming with a model config other than the checkpoints'.
  """
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    return _train_and_evaluate(config, workdir)
  with artifacts.workdir_lock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  is_chief = jax.process_index() == 0
  profiler = _StepProfiler(config.train.profile_steps, workdir)
  config_path = workdir_lib.config_path(workdir)
  if os.path.isfile(config_path) and workdir_lib.has_checkpoints(workdir):  # A resume: same model?
    with open(config_path) as f:
      check_resumed_config(json.load(f), config, source=config_path)
  if jax.process_count() > 1:  # Every process has read the old config before it is replaced.
    multihost_utils.sync_global_devices("procrop_jax: config checked")
  if is_chief:  # The run describes itself: eval, crop and the Predictor read this back.
    workdir_lib.write_config(config, workdir)
  metrics_path = os.path.join(workdir, workdir_lib.METRICS_LOG)

  # Data first: building the embedded default's dataset is the slow part of a first run.
  prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  build_input_caches(config)

  trainer = Trainer(config, workdir)
  # Under the workdir lock, leftovers of a killed run are ours to clean (Orbax cleans on the
  # primary process only).
  manager = checkpointing.create_checkpoint_manager(workdir, config, cleanup_tmp=True)
  start_step = 0
  if manager.latest_step() is not None:
    trainer.state, meta = checkpointing.restore_state(manager, trainer.abstract_state)
    start_step = int(trainer.state["step"])
    logging.info("Resumed from %s at step %d (data position %s).", manager.directory,
                 start_step, meta.get("examples_seen"))
  elif config.train.init_from:
    trainer.initialize_from(config.train.init_from)
  if is_chief:  # Steps logged after the restored checkpoint are about to be trained again.
    checkpointing.truncate_metrics_log(metrics_path, start_step)
    checkpointing.truncate_event_files(workdir, start_step)
  # Created after the cut, so that its new event file is not cut.
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if is_chief:
    writer.write_hparams(_hparams(config))
  num_params = sum(x.size for x in jax.tree.leaves(trainer.state["params"]))
  logging.info("ProCrop: %.2fM parameters, mesh %s, global batch %d, steps %d -> %d.",
               num_params / 1e6, dict(trainer.mesh.shape), config.train.batch_size,
               start_step, config.train.num_steps)

  batches = training_batches(config, start_step)
  train_iter = trainer.with_references(batches, config.data, config.data.train_split)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.train.num_steps, writer=writer, every_steps=config.train.log_every)

  def save(step: int, force: bool = False) -> None:
    meta = {"step": step, "examples_seen": step * config.train.batch_size,
            "seed": config.seed}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(trainer.state), meta=ocp.args.JsonSave(meta)), force=force)

  best_tracker = checkpointing.BestCheckpoint(workdir, config.eval.best_metric, cleanup_tmp=True)
  last_metrics: dict[str, float] = {}
  pending = None  # (step, metrics) of the previous step: checked one step late to keep pipelining.
  step = start_step
  with (metric_writers.ensure_flushes(writer),
        checkpointing.finish_saves(manager, best_tracker.manager), profiler):
    while step < config.train.num_steps:
      profiler(step, trainer.state)
      batch = trainer.train_batch(next(train_iter))
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        trainer.state, metrics = trainer.train_step(trainer.state, batch)
      step += 1
      if pending is not None:
        _check_finite(*pending)
      report_progress(step)
      is_last = step == config.train.num_steps
      is_log = step % config.train.log_every == 0 or is_last
      is_save = step % config.train.checkpoint_every == 0 or is_last
      pending = None
      if is_log or is_save:  # This step's values are needed now: check them now.
        host_metrics = _check_finite(step, metrics)
      else:
        pending = (step, metrics)
      if is_log:
        last_metrics = host_metrics
        writer.write_scalars(step, last_metrics)
        if is_chief:
          _write_jsonl(metrics_path, {"step": step, **last_metrics})
      if config.train.eval_every and (step % config.train.eval_every == 0 or is_last):
        evaluate_during_training(trainer, step, writer, best_tracker,
                                 metrics_path if is_chief else None)
      if is_save:
        save(step, force=is_last)
    profiler.close(trainer.state)

  summary = {"step": step, "metrics": last_metrics,
             "train_step_compilations": trainer.train_step._cache_size()}  # pylint: disable=protected-access
  logging.info("Training done: %s", summary)
  if config.crop.after_training:
    summary["crop"] = modes.crop_folder(config, workdir)
  return summary
