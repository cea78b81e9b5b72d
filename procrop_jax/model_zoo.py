"""ProCrop models: a fresh one from a config (`create_model`), and shipped ones: trained weights
that come with the package, loaded with no workdir.

A shipped model is a folder (`procrop_jax/shipped/<name>/` for the ones in the package) holding:

  config.json      the training run's resolved config (`ConfigDict.to_dict()`)
  params.npz       trained parameters, "path/to/param" -> array, stored as float16 (halves the
                   size; every parameter is cast back to float32 on load). With a frozen
                   ImageNet backbone the backbone is left out and comes from the
                   efficientnet-liteN package, exactly as in training; of a fine-tuned one,
                   only what training changed is stored (listed in the card).
  model_card.json  what made it: the training command, the validation figures, the code
                   version, the parameter dtype and the sha256 of params.npz (checked on load)

`load()` reads only numpy arrays and JSON (no pickle), so a model folder from elsewhere cannot run
code when loaded, and builds no random parameters: the model's shapes come from `abstract_model`
(`nnx.eval_shape`) and every variable is then filled with a stored array (or the package's
ImageNet backbone). `export()` writes such a folder from a trained model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any, Iterator, Mapping

import jax
import ml_collections
import numpy as np

from procrop_jax import artifacts
from procrop_jax import lazy
from procrop_jax import sharding
from procrop_jax.weights import imagenet

# Flax and the model's modules load only when a model is built or a pass traced: a cropper
# whose passes an earlier process exported runs without them (lazy.py).
nnx = lazy.module("flax.nnx")
efficientnet_lite = lazy.module("procrop_jax.models.efficientnet_lite")
procrop = lazy.module("procrop_jax.models.procrop")

DEFAULT_MODEL = "fcdb_lite0"
SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "shipped"
_FILES = ("config.json", "params.npz", "model_card.json")
# (section, field, the value that reproduces models exported before the field existed).
_ADDED_FIELDS = (("model", "box_content_grid", 0),)
_STORAGE_DTYPES = ("float16", "float32")


@dataclasses.dataclass
class ShippedModel:
  """A loaded shipped model: the config it was trained with, the model, and its card."""
  config: ml_collections.ConfigDict
  model: procrop.ProCrop
  card: dict[str, Any]
  path: pathlib.Path


def available() -> list[str]:
  """Names of the models shipped in the package."""
  if not SHIPPED_DIR.is_dir():
    return []
  return sorted(p.name for p in SHIPPED_DIR.iterdir()
                if all((p / f).is_file() for f in _FILES))


def model_dir(name_or_path: str | os.PathLike[str] | None = None) -> pathlib.Path:
  """The folder of a shipped model: a name from `available()`, or a path to a folder."""
  name_or_path = DEFAULT_MODEL if name_or_path is None else name_or_path
  path = pathlib.Path(name_or_path)
  if not path.is_dir():
    path = SHIPPED_DIR / str(name_or_path)
  missing = [f for f in _FILES if not (path / f).is_file()]
  if missing:
    raise FileNotFoundError(
        f"{name_or_path!s} is not a shipped model: {path} lacks {', '.join(missing)}. "
        f"Models in the package: {', '.join(available()) or 'none'}.")
  return path


def _named_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  """Every parameter and batch statistic of the model by its "a/b/c" path."""
  return {sharding.path_to_string(path): var for path, var in nnx.iter_graph(model)
          if isinstance(var, (nnx.Param, nnx.BatchStat))}


def set_variables(model: nnx.Module, arrays: Mapping[str, np.ndarray], *, source: str) -> None:
  """Sets the named variables of `model` (keys as `_named_variables` gives them)."""
  variables = _named_variables(model)
  unknown = sorted(arrays.keys() - variables.keys())
  if unknown:
    raise ValueError(f"{source}: {len(unknown)} arrays name no variable of the model, e.g. "
                     f"{', '.join(unknown[:3])}")
  for name, array in arrays.items():
    var = variables[name]
    if np.shape(array) != var.get_value().shape:
      raise ValueError(f"{source}: {name} has shape {np.shape(array)}, the model "
                       f"{var.get_value().shape}")
    # Cast on the host and put: jnp.asarray would compile a small program per shape.
    var.set_value(jax.device_put(np.asarray(array, var.get_value().dtype)))


def backbone_arrays(model: procrop.ProCrop) -> dict[str, np.ndarray]:
  """The backbone's variables as float32 arrays, named as `load(backbone=...)` takes them."""
  return {name: np.asarray(jax.device_get(var.get_value()), np.float32)
          for name, var in _named_variables(model).items() if name.startswith("backbone/")}


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def abstract_model(config: ml_collections.ConfigDict) -> procrop.ProCrop:
  """The model of `config` with shapes and dtypes only (`nnx.eval_shape`): nothing is
  initialised, so loading stored parameters into it costs no random initialisation."""
  with _streams_count_by_assignment():
    return nnx.eval_shape(lambda: procrop.ProCrop.from_config(config, rngs=nnx.Rngs(0)))


@contextlib.contextmanager
def _streams_count_by_assignment() -> Iterator[None]:
  """RNG streams advance their counters by plain assignment while the model is traced.

  `nnx.RngStream.__call__` advances its counter by an indexed update (`count[...] += 1`), whose
  check asks the new, traced value for its sharding; under tracing that question walks the whole
  trace so far to word an error message that is then swallowed: quadratic in the model's size,
  85% of tracing the shipped model (1.45 s -> 0.22 s on 2 busy CPU cores). The replacement
  draws the same key and sets the same count, without the check.
  """
  original = nnx.RngStream.__call__

  def call(stream: nnx.RngStream) -> jax.Array:
    key = jax.random.fold_in(stream.key.get_value(), stream.count.get_value())
    stream.count.set_value(stream.count.get_value() + 1)
    return key

  nnx.RngStream.__call__ = call
  try:
    yield
  finally:
    nnx.RngStream.__call__ = original


def concrete_rng_state(abstract: Any) -> Any:
  """RNG variables with real keys: inference draws no random numbers, but a model needs values."""
  def make(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.numpy.broadcast_to(jax.random.key(0), x.shape)
    return jax.numpy.zeros(x.shape, x.dtype)
  return jax.tree.map(make, abstract)


def _fill_rng_state(model: nnx.Module) -> None:
  """Gives an abstract model's RNG variables real values (see `concrete_rng_state`)."""
  for _, var in nnx.iter_graph(model):
    if isinstance(var, nnx.RngState) and isinstance(var.get_value(), jax.ShapeDtypeStruct):
      var.set_value(concrete_rng_state(var.get_value()))


def create_model(config: ml_collections.ConfigDict, *, seed: int | None = None,
                 load_weights: bool = True) -> procrop.ProCrop:
  """The ProCrop model, with ImageNet backbone weights when `config.model.pretrained`."""
  seed = config.seed if seed is None else seed
  model = procrop.ProCrop.from_config(config, rngs=nnx.Rngs(seed))
  if load_weights and config.model.pretrained:
    imagenet.load_pretrained(model.backbone, config.model.backbone)
  return model


def backbone_tail_start(config: ml_collections.ConfigDict) -> int | None:
  """The first backbone block that trains when only the last blocks do, else None.

  `config.optim.trainable_backbone_blocks` = N >= 0 with a backbone learning rate > 0 trains
  the last N MBConv blocks and the 1x1 head conv (and their BN scales and offsets) and freezes
  the rest; -1 trains the whole backbone. None also when the backbone does not train at all.
  """
  blocks = config.optim.trainable_backbone_blocks
  if config.optim.backbone_learning_rate == 0 or blocks < 0:
    return None
  try:
    return efficientnet_lite.tail_start(config.model.backbone, blocks)
  except ValueError as e:
    raise ValueError(f"config.optim.trainable_backbone_blocks={blocks}: {e}") from None


def _untouched_backbone(model: procrop.ProCrop, config: ml_collections.ConfigDict, *,
                        rtol: float = 0.0) -> set[str]:
  """Names of the backbone variables that still hold the package's ImageNet values.

  They are not stored: loading takes them from the efficientnet-liteN package, as training did.
  Compared value by value, so what is stored follows what training changed (nothing for a
  frozen backbone, the last blocks for a trained tail), whatever the config claims. `rtol`
  forgives differences below the storage dtype's precision: the EMA of a frozen weight drifts
  from it by float32 rounding (about 1e-5 of its value), which storing in float16 would not
  keep anyway.
  """
  if not config.model.pretrained:
    return set()
  reference = efficientnet_lite.EfficientNetLite(config.model.backbone, rngs=nnx.Rngs(0))
  imagenet.load_pretrained(reference, config.model.backbone)
  imagenet_values = {"backbone/" + k: v.get_value()
                     for k, v in _named_variables(reference).items()}
  return {name for name, var in _named_variables(model).items()
          if name in imagenet_values
          and np.allclose(np.asarray(jax.device_get(var.get_value())),
                          np.asarray(imagenet_values[name]), rtol=rtol, atol=0.0)}


def export(model: procrop.ProCrop, config: ml_collections.ConfigDict,
           out_dir: str | os.PathLike[str], *, card: dict[str, Any] | None = None,
           dtype: str = "float16") -> pathlib.Path:
  """Writes `model` as a shipped-model folder; returns its path.

  Args:
    model: the trained model (its parameters are read, not changed).
    config: the config it was trained with.
    out_dir: the folder to write (created; existing files are replaced).
    card: what to record about the model (training command, validation figures, ...).
    dtype: storage dtype of the parameters, "float16" or "float32".
  """
  if dtype not in _STORAGE_DTYPES:
    raise ValueError(f"dtype={dtype!r}: use one of {_STORAGE_DTYPES}")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # Half of float16's spacing near 1: a change float16 storage could not represent anyway.
  untouched = _untouched_backbone(
      model, config, rtol=float(np.finfo(np.float16).eps) / 2 if dtype == "float16" else 0.0)
  arrays = {}
  for name, var in _named_variables(model).items():
    if name in untouched:
      continue
    value = np.asarray(jax.device_get(var.get_value()), np.float32)
    if dtype == "float16" and np.abs(value).max(initial=0.0) > np.finfo(np.float16).max:
      raise ValueError(f"parameter {name} exceeds the float16 range; export with "
                       "dtype='float32'")
    arrays[name] = value.astype(dtype)
  params_path = out / "params.npz"
  with tempfile.NamedTemporaryFile(dir=out, prefix=".params.", suffix=".npz",
                                   delete=False) as f:
    np.savez(f, **arrays)
  os.replace(f.name, params_path)
  resolved = config.copy_and_resolve_references()
  _atomic_write(out / "config.json", json.dumps(resolved.to_dict(), indent=2,
                                                default=list).encode())
  full_card = {
      **(card or {}),
      "param_dtype": dtype,
      "num_params_stored": int(sum(a.size for a in arrays.values())),
      "backbone_from_package": bool(untouched),
      # The backbone variables training changed: the file holds them, the package the rest.
      "backbone_stored": sorted(k for k in arrays if k.startswith("backbone/")),
      "params_sha256": artifacts.file_sha256(params_path),
  }
  _atomic_write(out / "model_card.json", json.dumps(full_card, indent=2).encode())
  for name in _FILES:  # Temporary files are private; package data is world-readable.
    os.chmod(out / name, 0o644)
  return out


def load_config(name_or_path: str | os.PathLike[str] | None = None
                ) -> ml_collections.ConfigDict:
  """The config a shipped model was trained with."""
  path = model_dir(name_or_path)
  return config_from_json(path / "config.json")


def config_from_json(path: pathlib.Path) -> ml_collections.ConfigDict:
  try:
    values = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a readable config ({e})") from e
  # JSON has no tuples; the mesh rules and shapes are tuples in the configs.
  mesh = values.get("mesh", {})
  for key in ("shape", "axes"):
    if key in mesh:
      mesh[key] = tuple(mesh[key])
  if "param_rules" in mesh:
    mesh["param_rules"] = tuple((rule, tuple(spec)) for rule, spec in mesh["param_rules"])
  # Fields added since a model was exported, with the value that reproduces it.
  for section, field, before in _ADDED_FIELDS:
    values.get(section, {}).setdefault(field, before)
  return ml_collections.ConfigDict(values)


@dataclasses.dataclass
class StoredModel:
  """A shipped model's every weight as host arrays, before any model is built.

  `arrays` names every parameter and batch statistic ("a/b/c", as `_named_variables` gives
  them) with a float32 array: the file's, and the ImageNet backbone's where the file leaves it
  to the package. A predictor whose forward passes are already exported runs on these alone
  (inference.py); `build()` makes the NNX model.
  """
  config: ml_collections.ConfigDict
  arrays: dict[str, np.ndarray]
  card: dict[str, Any]
  path: pathlib.Path

  @property
  def params_path(self) -> pathlib.Path:
    return self.path / "params.npz"

  def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raises ValueError naming every missing, unexpected and mis-shaped array against the
    model's variables (`shapes`: name -> shape)."""
    missing = sorted(shapes.keys() - self.arrays.keys())
    unexpected = sorted(self.arrays.keys() - shapes.keys())
    mismatched = sorted(f"{k}: file {self.arrays[k].shape}, model {tuple(shapes[k])}"
                        for k in shapes.keys() & self.arrays.keys()
                        if tuple(self.arrays[k].shape) != tuple(shapes[k]))
    if missing or unexpected or mismatched:
      problems = [f"{len(v)} {t}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
                  for t, v in (("missing", missing), ("unexpected", unexpected),
                               ("mis-shaped", mismatched)) if v]
      raise ValueError(f"{self.params_path} does not fit the model of its config.json: "
                       + "; ".join(problems))

  def build(self) -> procrop.ProCrop:
    """The model of the config with these weights (its shapes from `abstract_model`)."""
    model = abstract_model(self.config)  # Shapes only: every variable is filled below.
    _fill_rng_state(model)
    self.check({k: v.get_value().shape for k, v in _named_variables(model).items()})
    set_variables(model, self.arrays, source=str(self.params_path))
    return model


def load_arrays(name_or_path: str | os.PathLike[str] | None = None, *, verify: bool = True,
                backbone: Mapping[str, np.ndarray] | None = None) -> StoredModel:
  """A shipped model's config, card and every weight (see `load`), without building the model.

  Raises:
    FileNotFoundError: no such model.
    ValueError: the parameter file is corrupt or does not match its card's checksum.
  """
  path = model_dir(name_or_path)
  config = config_from_json(path / "config.json")
  card = json.loads((path / "model_card.json").read_text())
  params_path = path / "params.npz"
  expected_sha = card.get("params_sha256")
  if verify and expected_sha and artifacts.file_sha256(params_path) != expected_sha:
    raise ValueError(f"{params_path}: checksum differs from model_card.json (corrupt or "
                     "replaced file)")
  arrays: dict[str, np.ndarray] = {}
  if card.get("backbone_from_package", False):
    if backbone is None:
      backbone = imagenet.backbone_arrays(config.model.backbone, prefix="backbone/")
    arrays.update({k: np.asarray(v, np.float32) for k, v in backbone.items()})
  try:
    with np.load(params_path, allow_pickle=False) as data:
      # The file's own variables win over the package's (a trained backbone tail).
      arrays.update({k: np.asarray(data[k], np.float32) for k in data.files})
  except (OSError, ValueError) as e:
    raise ValueError(f"{params_path}: not a readable parameter file ({e})") from e
  return StoredModel(config=config, arrays=arrays, card=card, path=path)


def load(name_or_path: str | os.PathLike[str] | None = None, *, verify: bool = True,
         backbone: Mapping[str, np.ndarray] | None = None) -> ShippedModel:
  """Loads a shipped model (default: `DEFAULT_MODEL`) with every weight in place.

  `backbone` ("backbone/..." -> array, as `backbone_arrays` writes them) replaces the
  efficientnet-lite package's ImageNet weights, for a machine without the package (a bare
  accelerator image); the file's own backbone variables still win.

  Raises:
    FileNotFoundError: no such model.
    ValueError: the parameter file is corrupt, does not match its card's checksum, or does not
      fit the model its config describes (naming every missing or mis-shaped parameter).
  """
  stored = load_arrays(name_or_path, verify=verify, backbone=backbone)
  return ShippedModel(config=stored.config, model=stored.build(), card=stored.card,
                      path=stored.path)
