"""Restoring a trained model and predicting with it: no optimizer, no dataset, no TensorFlow.

A `Predictor` holds a model's parameters (EMA ones when the run kept them), the config it was
trained with and jitted forward passes. It comes from a workdir, `Predictor.from_workdir(DIR)`
(latest or best checkpoint, read by `workdir.restore_model`: parameters and model state only),
or from a shipped model, `Predictor.from_pretrained()` (see model_zoo.py). Neither builds random
parameters: the model's abstract shapes are filled with the stored arrays. A shipped model is not
even built when the forward passes it needs were exported by an earlier process: its stored
arrays go straight into them, in the order that process kept (exported_passes.py).

The forward pass is `steps.predict_step`, the one evaluation during training uses (the
trainer's steps run the model through the same `steps.forward`), jitted once per (canvas, batch
size, number of given boxes): callers keep those fixed (the cropper pads its batches and
candidate lists) so a run compiles few shapes. JAX's persistent compilation cache is on by
default (`use_compile_cache`): a later process loads those executables instead of compiling
them again, and `predict` keeps each pass's lowered program beside them (exported_passes.py), so
that it does not trace the model again either.

A model with retrieval (`config.model.num_references` > 0) also needs its reference database
and the retrieval code, which reads photos through TensorFlow; only such a model loads them.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from procrop_jax import artifacts
from procrop_jax import batch_keys
from procrop_jax import exported_passes
from procrop_jax import lazy
from procrop_jax import model_zoo
from procrop_jax import sharding
from procrop_jax import workdir as workdir_lib

# Flax and the model's modules load only when a model is built or a pass traced: a cropper
# whose passes an earlier process exported runs without them (lazy.py).
nnx = lazy.module("flax.nnx")
procrop = lazy.module("procrop_jax.models.procrop")
steps = lazy.module("procrop_jax.steps")

# Where compiled passes are kept: a folder, or "" for none. Default: `default_compile_cache()`.
COMPILE_CACHE_ENV = "PROCROP_COMPILE_CACHE"
_compile_cache_chosen = False  # Set by `use_compile_cache`: a Predictor then keeps the choice.


def default_compile_cache() -> str:
  """The compilation cache folder when nobody chose one: $PROCROP_COMPILE_CACHE where it is set
  ("" turns the cache off), else $JAX_COMPILATION_CACHE_DIR (JAX's own variable), else the
  `jax/` folder of the procrop_jax cache ($PROCROP_CACHE_DIR, else ~/.cache/procrop_jax)."""
  for name in (COMPILE_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR"):
    if name in os.environ:
      return os.environ[name]
  return str(artifacts.cache_dir() / "jax")


def use_compile_cache(folder: str | None = None) -> str:
  """Turns JAX's persistent compilation cache on in `folder` (default: `default_compile_cache()`;
  "" leaves it off) for every compilation of this process from now on; returns the folder.

  Each canvas shape costs seconds of compilation on a CPU, which a later process with the cache
  skips. Every executable is kept, however quick its compilation or small its size (each is
  tens of kB to a few MB; experiments/README.md measures the folder).
  """
  global _compile_cache_chosen
  _compile_cache_chosen = True
  folder = default_compile_cache() if folder is None else folder
  if folder:
    folder = os.path.expanduser(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


def use_default_compile_cache() -> None:
  """`use_compile_cache()` unless this process already chose a folder (or none) through it, or
  gave JAX one (`jax_compilation_cache_dir`): what a Predictor does when it is built."""
  if not _compile_cache_chosen and not jax.config.jax_compilation_cache_dir:
    use_compile_cache()


def exported_folder() -> str:
  """Where `Predictor.predict` keeps exported passes: the compilation cache's folder ("" none)."""
  return jax.config.jax_compilation_cache_dir or ""


def inference_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """steps.predict_step's test-time options from `config.inference`."""
  inference = config.inference
  return {"flip": bool(inference.flip), "vote_iou": float(inference.vote_iou),
          "rescore": bool(inference.rescore)}


def progress_to_stderr(message: str) -> None:
  """A `progress` callback: one line on stderr per start-up step."""
  print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the predictor
class Predictor:
  """A trained ProCrop model ready to predict on batches of canvases.

  Attributes:
    config: the config the model was trained with.
    source: where it came from (a checkpoint directory or a shipped-model folder).
    step: the checkpoint's training step (None for a shipped model).
    progress: called with a line before each compilation (and after, with its time), or None.
  """

  def __init__(self, model: procrop.ProCrop | model_zoo.StoredModel,
               config: ml_collections.ConfigDict, *, source: str = "",
               step: int | None = None, workdir: str | None = None,
               devices: list[jax.Device] | None = None,
               progress: Callable[[str], None] | None = None):
    """`model` is the NNX model, or a shipped model's stored weights: then the model is built
    only if a forward pass must be traced (no exported pass of its shape is kept yet)."""
    self.config = config
    self.source = source
    self.step = step
    self.workdir = workdir
    self.progress = progress
    # The batch is split over every local device; parameters are replicated (the model is
    # small: one copy per device is cheaper than gathering sharded weights each call).
    self.mesh = sharding.create_mesh((-1, 1), (sharding.DATA_AXIS, "model"),
                                     devices or jax.local_devices())
    self.num_devices = self.mesh.shape[sharding.DATA_AXIS]
    self._replicated = sharding.replicated(self.mesh)
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    self._model = model
    self._parts: tuple[nnx.GraphDef, dict[str, nnx.State], nnx.State] | None = None
    self._build_lock = threading.Lock()
    self._steps: dict[tuple[bool, bool], Callable] = {}
    self._shapes_seen: set[tuple[Any, ...]] = set()
    # A shape's first call is prepared by one thread; another asking for it waits (a cropper
    # prepares shapes in the background: exported_passes and jit would do the work twice).
    self._shape_locks: dict[tuple[Any, ...], threading.Lock] = {}
    self._locks_lock = threading.Lock()
    self._exported: exported_passes.ExportedPasses | None = None
    self._exported_leaves: tuple[exported_passes.LeafSpecs, list[jax.Array]] = ([], [])
    use_default_compile_cache()
    if isinstance(model, model_zoo.StoredModel):
      # Now, so that weights that do not fit the model fail here, not at the first photo.
      if self._exported_passes() is None:
        self._split()

  def _split(self) -> tuple[nnx.GraphDef, dict[str, nnx.State], nnx.State]:
    """(graphdef, {"params", "rest"} state, RNG state) of the model, on the mesh; a shipped
    model's stored weights are built into the model at the first call."""
    with self._build_lock:  # Threads preparing two new shapes would build it twice.
      if self._parts is None:
        model = self._model
        if isinstance(model, model_zoo.StoredModel):
          model = model.build()
        graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
        self._parts = (graphdef,
                       jax.device_put({"params": params, "rest": rest}, self._replicated),
                       jax.device_put(rng_state, self._replicated))
      return self._parts

  @property
  def graphdef(self) -> nnx.GraphDef:
    return self._split()[0]

  @property
  def state(self) -> dict[str, nnx.State]:
    """{"params": the parameters, "rest": batch statistics}, replicated on the mesh."""
    return self._split()[1]

  @property
  def rng_state(self) -> nnx.State:
    return self._split()[2]

  # --------------------------------------------------------------------------------- loading
  @classmethod
  def from_workdir(cls, workdir: str | os.PathLike[str], *,
                   config: ml_collections.ConfigDict | None = None, best: bool = False,
                   step: int | None = None, devices: list[jax.Device] | None = None,
                   progress: Callable[[str], None] | None = None) -> "Predictor":
    """Restores the latest (or best, or a given step's) checkpoint of a training run, with the
    run's own config unless `config` is given (see `workdir.resolve_config`).

    Raises:
      FileNotFoundError: no config for the run, or no checkpoint.
    """
    workdir = str(workdir)
    config = workdir_lib.resolve_config(workdir, config)
    model, step, folder = workdir_lib.restore_model(
        workdir, config, best=best, step=step, device=devices[0] if devices else None)
    return cls(model, config, source=folder, step=step, workdir=workdir, devices=devices,
               progress=progress)

  @classmethod
  def from_pretrained(cls, name_or_path: str | os.PathLike[str] | None = None, *,
                      devices: list[jax.Device] | None = None,
                      progress: Callable[[str], None] | None = None) -> "Predictor":
    """A shipped model (default: `model_zoo.DEFAULT_MODEL`) or a folder `model_zoo.export`
    wrote.

    Raises:
      FileNotFoundError: no such model.
    """
    stored = model_zoo.load_arrays(name_or_path)
    config = stored.config
    references = stored.path / "references"
    if references.is_dir():  # A shipped reference database travels with its model.
      with config.unlocked():
        config.retrieval.index_dir = str(references)
    return cls(stored, config, source=str(stored.path), devices=devices, progress=progress)

  @classmethod
  def from_source(cls, source: str) -> "Predictor":
    """A training workdir's best checkpoint (else its latest), or a shipped model's name or
    folder."""
    if os.path.isdir(workdir_lib.checkpoints_dir(source)):
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
  def references(self):
    """The run's reference database and neighbour tables (`retrieval.references.References`;
    None without retrieval)."""
    if not self.num_references:
      return None
    # Retrieval reads photos through TensorFlow: imported only for a model that retrieves, so
    # that loading and running a model without retrieval never imports TensorFlow.
    from procrop_jax.retrieval import references as references_lib  # pylint: disable=g-import-not-at-top,line-too-long
    return references_lib.References(
        self.config, self.workdir or str(artifacts.cache_dir() / "predictor"))

  @functools.cached_property
  def retriever(self) -> Callable[..., dict[str, np.ndarray]] | None:
    """Images -> reference tokens of their nearest professional photos (None without
    retrieval)."""
    return None if self.references is None else self.references.retriever(self.num_references)

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

  def _named_leaves(self) -> list[tuple[str, jax.Array]]:
    """The state's leaves in order, each named as the stored weights name it."""
    flat, _ = jax.tree_util.tree_flatten_with_path(self.state)
    return [(sharding.path_to_string(path[1:]), leaf) for path, leaf in flat]

  def _leaves(self, passes: exported_passes.ExportedPasses
              ) -> tuple[exported_passes.LeafSpecs, list[jax.Array]]:
    """(specs, arrays) of the state's leaves, for an exported pass: from the stored weights in
    the order an earlier process kept (building no model), else from the model's state."""
    stored = self._model if isinstance(self._model, model_zoo.StoredModel) else None
    kept = passes.read_specs()
    if stored is not None and kept is not None:
      stored.check({name: shape for name, shape, _ in kept})
      return kept, jax.device_put([np.asarray(stored.arrays[name], dtype)
                                   for name, _, dtype in kept], self._replicated)
    named = self._named_leaves()
    specs = exported_passes.leaf_specs(named)
    if kept != specs:  # Kept for the next process with a shipped model of this config.
      passes.write_specs(specs)
    return specs, [leaf for _, leaf in named]

  def _exported_passes(self) -> exported_passes.ExportedPasses | None:
    """The passes exported to the compilation cache folder (exported_passes.py), with the
    state's leaves ready for them; None without a cache folder or with several devices (the
    exported passes here are single-device)."""
    cache = exported_folder()
    if not cache or self.num_devices != 1:
      return None
    if self._exported is None or self._exported.folder.parent != pathlib.Path(cache):
      with self._locks_lock:  # Once, whichever thread comes first.
        if self._exported is None or self._exported.folder.parent != pathlib.Path(cache):
          identity = {"model": self.config.model.to_dict(),
                      "inference": inference_options(self.config)}
          passes = exported_passes.ExportedPasses(cache, identity)
          self._exported_leaves = self._leaves(passes)
          self._exported = passes
    return self._exported

  def _pass(self, kind: tuple[bool, bool]) -> Callable[[dict[str, jax.Array]], Any]:
    """The `kind` pass as a function of a batch on the mesh: through an exported pass when
    there is a cache folder (a later process skips tracing the model, and a shipped model's
    skips building it), else the jitted step."""
    passes = self._exported_passes()
    if passes is None:
      step = self._step(*kind)
      return lambda batch: step(self.state, batch)
    specs, leaves = self._exported_leaves

    def call(batch: dict[str, jax.Array]) -> Any:
      exported = passes.get(repr(kind), specs, batch, lambda: (self._step(*kind), self.state))
      return exported(leaves, batch)
    return call

  def _run(self, kind: tuple[bool, bool], batch: dict[str, np.ndarray], what: str
           ) -> dict[str, Any]:
    """The `kind` pass on `batch`, announcing a new shape (a compilation) to `progress`."""
    shapes = (kind, what, *sorted((k, np.shape(v)) for k, v in batch.items()))
    device_batch = self.to_device(batch)
    if shapes not in self._shapes_seen:
      with self._locks_lock:
        lock = self._shape_locks.setdefault(shapes, threading.Lock())
      with lock:
        if shapes not in self._shapes_seen:  # Else another thread prepared it meanwhile.
          outputs = self._first_run(kind, device_batch, what)
          self._shapes_seen.add(shapes)
          return outputs
    return jax.device_get(self._pass(kind)(device_batch))

  def _first_run(self, kind: tuple[bool, bool], device_batch: dict[str, jax.Array], what: str
                 ) -> dict[str, Any]:
    """A shape's first call (a compilation, or a load from the cache), told to `progress`."""
    run = self._pass(kind)
    if self.progress is None:
      return jax.device_get(run(device_batch))
    canvas = ("{}x{} canvases".format(*np.shape(device_batch["image"])[1:3])
              if "image" in device_batch else "the canvases above")
    cache = jax.config.jax_compilation_cache_dir
    self.progress(f"Preparing the model for {canvas}, {what} (batch "
                  f"{len(device_batch['image_valid_hw'])}): "
                  + (f"compiled once, or loaded from {cache}" if cache else "compiling"))
    start = time.perf_counter()
    outputs = jax.device_get(run(device_batch))
    self.progress(f"  ready in {time.perf_counter() - start:.1f} s")
    return outputs

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
    batch, kind, what = self._batch(images, image_valid_hw, boxes, encoding, keep_encoding)
    outputs = self._run(kind, batch, what)
    n = len(image_valid_hw)
    return jax.tree.map(lambda v: np.asarray(v)[:n], outputs)

  def output_shapes(self, images: np.ndarray | None, image_valid_hw: np.ndarray,
                    boxes: np.ndarray | None = None, *,
                    encoding: dict[str, np.ndarray] | None = None,
                    keep_encoding: bool = False) -> dict[str, Any]:
    """The shapes and dtypes (`jax.ShapeDtypeStruct`s) of what `predict` with these arguments
    returns, without compiling or running its pass.

    It traces and lowers the pass (with a cache folder: exports it, or reads it back), which
    its first `predict` then reuses: the Python-bound half of preparing a pass, which a caller
    may want done before other work that needs the interpreter (a first-ever run's longest
    wait is the proposal pass's compilation, which can start only after it)."""
    batch, kind, _ = self._batch(images, image_valid_hw, boxes, encoding, keep_encoding)
    device_batch = self.to_device(batch)  # Placed as `predict` places it: one lowering.
    passes = self._exported_passes()
    if passes is None:
      padded = self._step(*kind).lower(self.state, device_batch).out_info
    else:
      specs, leaves = self._exported_leaves
      call = passes.get(repr(kind), specs, batch, lambda: (self._step(*kind), self.state))
      padded = call.lower(leaves, device_batch).out_info
    n = len(image_valid_hw)  # Without the rows padded to the device count, as `predict`.
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((n, *s.shape[1:]), s.dtype), padded)

  def _batch(self, images, image_valid_hw, boxes, encoding, keep_encoding
             ) -> tuple[dict[str, np.ndarray], tuple[bool, bool], str]:
    """`predict`'s arguments as (the batch its pass takes, the pass's kind, its description)."""
    if (encoding is not None or keep_encoding) and not self.reuses_encoding:
      raise ValueError("an encoding cannot replace the images with config.inference.flip: the "
                       "mirrored pass needs the pixels")
    if encoding is not None and boxes is None:
      raise ValueError("an encoding scores given boxes only: pass boxes, or the images to "
                       "propose crops")
    batch: dict[str, Any] = {"image_valid_hw": np.asarray(image_valid_hw, np.float32)}
    if encoding is None:
      batch["image"] = np.asarray(images, np.float32)
    else:
      batch.update({batch_keys.ENCODING_PREFIX + k: v for k, v in encoding.items()})
    if boxes is not None:
      batch["boxes"] = np.asarray(boxes, np.float32)
    pad = -len(image_valid_hw) % self.num_devices
    if pad:  # Repeat the last example: its outputs are dropped by `predict`.
      batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in batch.items()}
    if encoding is None:
      batch = self.add_references(batch)
    what = ("scoring given boxes" if boxes is not None else "proposing crops") + (
        " from a kept encoding" if encoding is not None else "")
    return batch, (boxes is not None, keep_encoding), what

  def compilations(self) -> int:
    """How many forward passes `predict` has prepared: one per new input shape, each compiled
    or loaded from the compilation cache."""
    return len(self._shapes_seen)


def trained_params(source: str) -> Any:
  """The parameters (EMA ones where kept) of a trained model, as an nnx.State on the host.

  `source` is a training workdir (its best checkpoint, else its latest) or a shipped model's
  name or folder (`model_zoo`). For `config.train.init_from`: fine-tuning starts from these.
  """
  return jax.device_get(Predictor.from_source(source).state["params"])
