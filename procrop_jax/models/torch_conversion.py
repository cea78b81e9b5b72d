"""PyTorch EfficientNet-Lite parameters in the NNX module's layout, checked tensor by tensor.

A torch state dict (lukemelas EfficientNet-PyTorch names, numpy arrays) is converted to the NNX
layout (conv OIHW -> HWIO, linear [out, in] -> [in, out], BN weight/bias/running_mean/running_var
-> scale/bias/mean/var) and written into an `EfficientNetLite` only when every tensor fits.
Reading the files is `procrop_jax.weights`' job (`weights.imagenet.load_pretrained`).
"""

from __future__ import annotations

import re

from flax import nnx
import jax
import numpy as np

_UNMAPPED_PREFIX = "torch:"  # Converted-dict keys of checkpoint tensors with no module slot.

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
    # device_put, not jnp.asarray, which compiles a small program per shape.
    var.set_value(jax.device_put(value, old.sharding) if isinstance(old, jax.Array)
                  else jax.device_put(value))


def load_torch_state_dict(model: nnx.Module, state_dict: dict[str, np.ndarray], *,
                          source: str = "state dict") -> None:
  """Converts and loads a torch EfficientNet-Lite state dict (numpy arrays) into `model`."""
  apply_params(model, convert_state_dict(state_dict), source=source)
