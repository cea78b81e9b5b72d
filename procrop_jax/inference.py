"""Restoring a trained model and predicting with it: no optimizer, no train step, no dataset.

A `Predictor` holds a model's parameters (EMA ones when the run kept them), the config it was
trained with and jitted forward passes. It comes from a workdir, `Predictor.from_workdir(DIR)`
(latest or best checkpoint; only the parameters and model state are read from it, never the
optimizer state), or from a shipped model, `Predictor.from_pretrained()` (see model_zoo.py).

Runs describe themselves: training writes its resolved config to WORKDIR/config.json and
`from_workdir` reads it, so nobody retypes a run's overrides. A config passed explicitly wins,
with a warning for every model field that differs from the checkpoint's.

The forward pass is `steps.predict_step`, the one evaluation during training uses (the
trainer's steps run the model through the same `steps.forward`), jitted once per (canvas, batch
size, number of given boxes): callers keep those fixed (the cropper pads its batches and
candidate lists) so a run compiles once.

`evaluate_checkpoint` is `main --mode=eval`.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any, Callable, Iterator

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from procrop_jax import evaluate
from procrop_jax import input_pipeline
from procrop_jax import model_zoo
from procrop_jax import sharding
from procrop_jax import steps
from procrop_jax.models import procrop
from procrop_jax.retrieval import neighbors
from procrop_jax.retrieval import references as references_lib

CONFIG_FILE = "config.json"
DEFAULT_REPORT_EXAMPLES = 12  # Photos in eval/report.html where a run's config has no count.


def write_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> None:
  """Writes the resolved config to WORKDIR/config.json (what `read_config` reads back)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  text = json.dumps(config.copy_and_resolve_references().to_dict(), indent=2, default=list)
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def read_config(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict | None:
  """The config a run wrote to its workdir, or None for runs older than config.json."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  return model_zoo._config_from_json(path) if path.is_file() else None  # pylint: disable=protected-access


def flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"model.d_model": 256, ...} of a config dict; tuples as lists (as config.json stores them),
  so a config and the one a run saved compare field by field."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(flat_config(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


# Config fields that shape the model: a checkpoint fits only a config that agrees on them.
MODEL_FIELDS = ("model.", "data.image_size", "retrieval.tokens_grid")


def resolve_config(workdir: str | os.PathLike[str],
                   config: ml_collections.ConfigDict | None = None
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
                        "config wins.", key, given.get(key),
                        os.path.join(workdir, CONFIG_FILE), theirs.get(key))
  return config


def _concrete_rng_state(abstract: Any) -> Any:
  """RNG variables with real keys: inference draws no random numbers, but merge needs values."""
  def make(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jnp.broadcast_to(jax.random.key(0), x.shape)
    return jnp.zeros(x.shape, x.dtype)
  return jax.tree.map(make, abstract)


def inference_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """steps.predict_step's test-time options from `config.inference`."""
  inference = config.inference
  return {"flip": bool(inference.flip), "vote_iou": float(inference.vote_iou),
          "rescore": bool(inference.rescore)}


# ------------------------------------------------------------------------------- the predictor
class Predictor:
  """A trained ProCrop model ready to predict on batches of canvases.

  Attributes:
    config: the config the model was trained with.
    model: the model (parameters placed on `mesh`, replicated).
    source: where it came from (a checkpoint directory or a shipped-model folder).
    step: the checkpoint's training step (None for a shipped model).
  """

  def __init__(self, model: procrop.ProCrop, config: ml_collections.ConfigDict, *,
               source: str = "", step: int | None = None, workdir: str | None = None,
               devices: list[jax.Device] | None = None):
    self.config = config
    self.source = source
    self.step = step
    self.workdir = workdir
    # The batch is split over every local device; parameters are replicated (the model is
    # small: one copy per device is cheaper than gathering sharded weights each call).
    self.mesh = sharding.create_mesh((-1, 1), (sharding.DATA_AXIS, "model"),
                                     devices or jax.local_devices())
    self.num_devices = self.mesh.shape[sharding.DATA_AXIS]
    replicated = sharding.replicated(self.mesh)
    graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    self.graphdef = graphdef
    self.state = jax.device_put({"params": params, "rest": rest}, replicated)
    self.rng_state = jax.device_put(rng_state, replicated)
    self._replicated = replicated
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    self._steps: dict[bool, Callable] = {}

  # --------------------------------------------------------------------------------- loading
  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike[str], *,
                   config: ml_collections.ConfigDict | None = None, best: bool = False,
                   step: int | None = None, devices: list[jax.Device] | None = None
                   ) -> "Predictor":
    """Restores the latest (or best, or a given step's) checkpoint of a training run.

    Raises:
      FileNotFoundError: no config for the run, or no checkpoint.
    """
    workdir = str(workdir)
    config = resolve_config(workdir, config)
    folder = os.path.abspath(os.path.join(workdir, "checkpoints_best" if best else "checkpoints"))
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"No checkpoint in {workdir}: {folder} does not exist (train "
                              "first, or pass the run's workdir)")
    manager = ocp.CheckpointManager(
        folder, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {folder}: train first (--mode=train with this "
                              "workdir)")
    abstract_model = nnx.eval_shape(
        lambda: procrop.ProCrop.from_config(config, rngs=nnx.Rngs(config.seed)))
    graphdef, abstract_params, abstract_rng, abstract_rest = nnx.split(
        abstract_model, nnx.Param, nnx.RngState, ...)
    saved_keys = set(manager.item_metadata(step)["state"].keys())
    params_key = "ema_params" if "ema_params" in saved_keys else "params"
    device = jax.local_devices()[0] if devices is None else devices[0]
    single = jax.sharding.SingleDeviceSharding(device)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=single),
                          {params_key: abstract_params, "rest": abstract_rest})
    # Only the parameters and model state: the optimizer state stays on disk.
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(  # pylint: disable=unexpected-keyword-arg
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))["state"]
    manager.close()
    model = nnx.merge(graphdef, restored[params_key], _concrete_rng_state(abstract_rng),
                      restored["rest"])
    logging.info("Restored %s parameters of step %d from %s.", params_key, step, folder)
    return cls(model, config, source=folder, step=int(step), workdir=workdir, devices=devices)

  @classmethod
  def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None = None, *,
                      devices: list[jax.Device] | None = None) -> "Predictor":
    """A shipped model (default: `model_zoo.DEFAULT_MODEL`) or a folder `model_zoo.export`
    wrote.

    Raises:
      FileNotFoundError: no such model.
    """
    shipped = model_zoo.load(name_or_path)
    config = shipped.config
    references = shipped.path / "references"
    if references.is_dir():  # A shipped reference database travels with its model.
      with config.unlocked():
        config.retrieval.index_dir = str(references)
    return cls(shipped.model, config, source=str(shipped.path), devices=devices)

  @classmethod
  def from_source(cls, source: str) -> "Predictor":
    """A training workdir's best checkpoint (else its latest), or a shipped model's name or
    folder."""
    if os.path.isdir(os.path.join(source, "checkpoints")):
      try:
        return cls.from_workdir(source, best=True)
      except FileNotFoundError:  # No evaluation kept a best checkpoint.
        return cls.from_workdir(source)
    return cls.from_pretrained(source)

  # ------------------------------------------------------------------------------ properties
  @property
  def image_size(self) -> int:
    """The canvas side S: the model sees every photo resized into an S x S canvas."""
    return int(self.config.data.image_size)

  @property
  def num_references(self) -> int:
    return int(self.config.model.num_references)

  @property
  def flexible_canvas(self) -> bool:
    """Whether the model takes canvases of another size or shape than its training S x S.

    Its positions are normalised to the photo and padding tokens are masked, so without
    retrieval any canvas whose sides are multiples of the backbone's stride works. With
    retrieval, the fusion's token mixing and the reference embedding expect S x S.
    """
    return self.num_references == 0

  def model(self) -> procrop.ProCrop:
    """The model as an NNX module (for statistics; predict with `predict`)."""
    return nnx.merge(self.graphdef, self.state["params"], self.rng_state, self.state["rest"])

  @functools.cached_property
  def references(self) -> "references_lib.References | None":
    """The run's reference database and neighbour tables (None without retrieval)."""
    if not self.num_references:
      return None
    return references_lib.References(self.config, self.workdir or os.path.join(
        os.path.expanduser("~"), ".cache", "procrop_jax", "predictor"))

  @functools.cached_property
  def retriever(self):
    """Images -> reference tokens of their nearest professional photos (None without
    retrieval)."""
    if self.references is None:
      return None
    return neighbors.Retriever(self.references.database, self.references.extractor,
                               k=self.num_references)

  # ----------------------------------------------------------------------------- prediction
  def _step(self, score_given_boxes: bool, keep_encoding: bool = False) -> Callable:
    key = (score_given_boxes, keep_encoding)
    if key not in self._steps:
      # The same keyword arguments as the Trainer's predict step, so both predict alike.
      self._steps[key] = jax.jit(
          functools.partial(steps.predict_step, graphdef=self.graphdef,
                            rng_state=self.rng_state, score_given_boxes=score_given_boxes,
                            keep_encoding=keep_encoding, **inference_options(self.config)),
          in_shardings=(self._replicated, self._batch_sharding),
          out_shardings=self._replicated)
    return self._steps[key]

  def predict_device(self, batch: dict[str, jax.Array], score_given_boxes: bool = False
                     ) -> dict[str, jax.Array]:
    """`evaluate.PredictFn` on a batch already on the mesh."""
    return self._step(score_given_boxes)(self.state, batch)

  def to_device(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding.to_global_arrays(batch, self.mesh)

  def add_references(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`batch` with the reference tokens of its images' nearest professional photos."""
    if self.retriever is None or "reference_tokens" in batch:
      return batch
    tokens = self.retriever(batch["image"], batch["image_valid_hw"])["reference_tokens"]
    return {**batch, "reference_tokens": tokens}

  @property
  def reuses_encoding(self) -> bool:
    """Whether `predict` can return an encoding for later calls (not with flip averaging,
    whose mirrored pass needs the pixels)."""
    return not inference_options(self.config)["flip"]

  def predict(self, images: np.ndarray | None, image_valid_hw: np.ndarray,
              boxes: np.ndarray | None = None, *, encoding: dict[str, np.ndarray] | None = None,
              keep_encoding: bool = False) -> dict[str, Any]:
    """Crops for a batch of canvases, on the host.

    Args:
      images: [B, H, W, 3] float32 canvases in [0, 1] (`photos.canvas`): S x S, or any size
        when `flexible_canvas`. None with `encoding`.
      image_valid_hw: [B, 2] the photo's (h, w) as fractions of H and W.
      boxes: optional [B, Q, 4] normalised xyxy boxes to score instead of proposing.
      encoding: the "encoding" a `keep_encoding` call returned for the same canvases, to score
        `boxes`: only their decoder rows run.
      keep_encoding: also return "encoding" (needs `reuses_encoding`).

    Returns:
      "boxes" [B, N, 4] normalised xyxy and "scores" [B, N] in [0, 1] (N = the model's queries,
      or Q with `boxes`); "encoding" with keep_encoding. B is padded to a multiple of the device
      count inside: keep B (and Q) fixed across calls to compile once.
    """
    if (encoding is not None or keep_encoding) and not self.reuses_encoding:
      raise ValueError("an encoding cannot replace the images with config.inference.flip: the "
                       "mirrored pass needs the pixels")
    if encoding is not None and boxes is None:
      raise ValueError("an encoding scores given boxes only: pass boxes, or the images to "
                       "propose crops")
    n = len(image_valid_hw)
    batch: dict[str, Any] = {"image_valid_hw": np.asarray(image_valid_hw, np.float32)}
    if encoding is None:
      batch["image"] = np.asarray(images, np.float32)
    else:
      batch.update({steps.ENCODING_PREFIX + k: v for k, v in encoding.items()})
    if boxes is not None:
      batch["boxes"] = np.asarray(boxes, np.float32)
    pad = -n % self.num_devices
    if pad:  # Repeat the last example: its outputs are dropped below.
      batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in batch.items()}
    if encoding is None:
      batch = self.add_references(batch)
    step = self._step(boxes is not None, keep_encoding)
    outputs = jax.device_get(step(self.state, self.to_device(batch)))
    return jax.tree.map(lambda v: np.asarray(v)[:n], outputs)

  def compilations(self) -> int:
    """How many times the forward passes have compiled (one per new input shape)."""
    return sum(step._cache_size() for step in self._steps.values())  # pylint: disable=protected-access

  # ------------------------------------------------------------------------------ evaluation
  def with_references(self, batches: Iterator[dict[str, np.ndarray]],
                      data_config: ml_collections.ConfigDict, split: str
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Benchmark batches with the run's cached neighbours (never an image's own source)."""
    return references_lib.add_references(self.references, batches, data_config, split)

  def run_benchmarks(self, output_dir: str | None, *, report_examples: int | None = None
                     ) -> dict[str, dict[str, Any]]:
    """Every benchmark of `config.eval.benchmarks` (see evaluate.py); with `report_examples`,
    also output_dir/report.html with that many example photos."""
    return evaluate.run_benchmarks(self.predict_device, self.config, to_device=self.to_device,
                                   output_dir=output_dir, step=self.step,
                                   batch_transform=self.with_references,
                                   report_examples=report_examples)


def trained_params(source: str) -> Any:
  """The parameters (EMA ones where kept) of a trained model, as an nnx.State on the host.

  `source` is a training workdir (its best checkpoint, else its latest) or a shipped model's
  name or folder (`model_zoo`). For `config.train.init_from`: fine-tuning starts from these.
  """
  return jax.device_get(Predictor.from_source(source).state["params"])


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str, *,
                        best: bool = False) -> dict[str, dict[str, Any]]:
  """`main --mode=eval`: the latest (or best) checkpoint on every configured benchmark.

  Results go to WORKDIR/eval/<dataset>_<builder_config>_<split>.json (the latest) and are
  appended to the .jsonl of the same name (see `evaluate.write_result`); WORKDIR/eval/report.html
  shows them with `config.eval.report_examples` photos and their crops (`evaluate.write_report`).
  `config` defaults to the run's own.
  """
  predictor = Predictor.from_workdir(workdir, config=config, best=best)
  logging.info("Evaluating the checkpoint of step %d.", predictor.step)
  # Runs older than the field have none in their config.json.
  examples = predictor.config.eval.get("report_examples", DEFAULT_REPORT_EXAMPLES)
  return predictor.run_benchmarks(os.path.join(workdir, "eval"), report_examples=examples)
