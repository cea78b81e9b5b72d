"""A run folder (WORKDIR): what lives where, the config the run wrote, and restoring its model.

The one owner of the layout; the trainer, checkpointing, the predictor and the modes ask here:

  WORKDIR/config.json        the run's resolved config (`write_config` / `read_config`)
  WORKDIR/checkpoints/       the latest steps (Orbax; `checkpoints_dir`)
  WORKDIR/checkpoints_best/  the best evaluated step (`checkpoints_dir(best=True)`)
  WORKDIR/metrics.jsonl      one JSON line per logged step
  WORKDIR/eval/              benchmark results and report.html
  WORKDIR/crops/             --mode=crop's output

Runs describe themselves: `resolve_config` takes the run's config.json unless a config is given
(then it warns for every model field that differs). `restore_model` reads a checkpoint's
parameters (EMA ones where the run kept them) and model state into the model's abstract shapes
(`nnx.eval_shape`): nothing is randomly initialised and the optimizer state stays on disk.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections

from procrop_jax import artifacts
from procrop_jax import lazy
from procrop_jax import model_zoo

# Flax and the model's modules load only when a model is built or a pass traced: a cropper
# whose passes an earlier process exported runs without them (lazy.py).
nnx = lazy.module("flax.nnx")
procrop = lazy.module("procrop_jax.models.procrop")

# Imported when a checkpoint is first restored: cropping with a shipped model never does.
ocp = lazy.module("orbax.checkpoint")

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
BEST_CHECKPOINTS = "checkpoints_best"
METRICS_LOG = "metrics.jsonl"
EVAL_DIR = "eval"
CROPS_DIR = "crops"
# Config fields that shape the model: a checkpoint fits only a config that agrees on them.
MODEL_FIELDS = ("model.", "data.image_size", "retrieval.tokens_grid")

PathLike = str | os.PathLike[str]


def config_path(workdir: PathLike) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def checkpoints_dir(workdir: PathLike, *, best: bool = False) -> str:
  """The absolute path of the run's latest (or best) checkpoints (Orbax wants it absolute)."""
  return os.path.abspath(os.path.join(workdir, BEST_CHECKPOINTS if best else CHECKPOINTS))


def has_checkpoints(workdir: PathLike) -> bool:
  """Whether the run has saved a step (a resume, not a start)."""
  directory = checkpoints_dir(workdir)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def write_config(config: ml_collections.ConfigDict, workdir: PathLike) -> None:
  """Writes the resolved config to WORKDIR/config.json (what `read_config` reads back)."""
  artifacts.atomic_write_json(config_path(workdir),
                              config.copy_and_resolve_references().to_dict(), indent=2,
                              default=list)


def read_config(workdir: PathLike) -> ml_collections.ConfigDict | None:
  """The config a run wrote to its workdir, or None for runs older than config.json."""
  path = pathlib.Path(config_path(workdir))
  return model_zoo.config_from_json(path) if path.is_file() else None


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"model.d_model": 256, ...} of a config dict; tuples as lists (as config.json stores them),
  so a config and the one a run saved compare field by field."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flat_config(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def resolve_config(workdir: PathLike, config: ml_collections.ConfigDict | None = None
                   ) -> ml_collections.ConfigDict:
  """The config to restore a workdir with: `config` if given (warning where its model differs
  from the run's), else the run's own WORKDIR/config.json.

  Raises:
    FileNotFoundError: neither is available.
  """
  saved = read_config(workdir)
  if config is None:
    if saved is None:
      raise FileNotFoundError(f"{workdir} has no {CONFIG_FILE}: not a training run's folder "
                              "(runs write it when they start; for an older run, main "
                              "--mode=eval/crop takes its --config)")
    return saved
  if saved is not None:
    given = flat_config(config.copy_and_resolve_references().to_dict())
    theirs = flat_config(saved.to_dict())
    # The fields that shape the model; a difference means the checkpoint will not fit.
    model_keys = [k for k in sorted(set(given) | set(theirs)) if k.startswith(MODEL_FIELDS)]
    for key in model_keys:
      if given.get(key) != theirs.get(key):
        logging.warning("The given config's %s=%r differs from the run's (%s: %r); the given "
                        "config wins.", key, given.get(key), config_path(workdir),
                        theirs.get(key))
  return config


def restore_model(workdir: PathLike, config: ml_collections.ConfigDict, *, best: bool = False,
                  step: int | None = None, device: jax.Device | None = None
                  ) -> tuple[procrop.ProCrop, int, str]:
  """The model of a checkpoint: (model, its step, the checkpoint folder).

  Only the parameters (EMA ones where the run kept them) and the model state are read, into the
  model's abstract shapes on `device` (default: the first local device).

  Raises:
    FileNotFoundError: no checkpoint.
  """
  folder = checkpoints_dir(workdir, best=best)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"No checkpoint in {workdir}: {folder} does not exist (train "
                            "first, or pass the run's workdir)")
  manager = ocp.CheckpointManager(
      folder, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {folder}: train first (--mode=train with this "
                              "workdir)")
    graphdef, abstract_params, abstract_rng, abstract_rest = nnx.split(
        model_zoo.abstract_model(config), nnx.Param, nnx.RngState, ...)
    saved_keys = set(manager.item_metadata(step)["state"].keys())
    params_key = "ema_params" if "ema_params" in saved_keys else "params"
    single = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single),
                          {params_key: abstract_params, "rest": abstract_rest})
    # Only the parameters and model state: the optimizer state stays on disk.
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(  # pylint: disable=unexpected-keyword-arg
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))["state"]
  finally:
    manager.close()
  model = nnx.merge(graphdef, restored[params_key], model_zoo.concrete_rng_state(abstract_rng),
                    restored["rest"])
  logging.info("Restored %s parameters of step %d from %s.", params_key, step, folder)
  return model, int(step), folder
