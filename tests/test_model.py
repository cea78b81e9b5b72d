"""ProCrop model: shapes for every config variant, a real forward pass, masking and scoring."""

import functools
import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import testing
from procrop_jax.models import position_encoding
from procrop_jax.models import procrop

IMAGE_SIZE = 64  # 2x2 image tokens: the backbone dominates the cost.
TOKENS_GRID = 2
C_REF = 1280  # EfficientNet-Lite stride-32 channels.


def _model_config(**overrides):
  cfg = testing.get_config().model
  cfg.num_references = 2
  cfg.fusion = "concat_mlp"
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _build(**overrides):
  return procrop.ProCrop(_model_config(**overrides), image_size=IMAGE_SIZE,
                         tokens_grid=TOKENS_GRID, rngs=nnx.Rngs(0))


def _inputs(b=2, k=2, rng=np.random.default_rng(0)):
  images = rng.random((b, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  valid = np.array([[1.0, 0.6], [0.5, 1.0]], np.float32)[:b]  # Wide and tall images.
  refs = rng.normal(size=(b, k, TOKENS_GRID ** 2, C_REF)).astype(np.float16)
  return images, valid, refs


@pytest.fixture(scope="module")
def model():
  return _build()


def _abstract_forward(overrides, *, refs=True, num_boxes=None, train=False, b=2):
  """Output shapes without computing anything (construction and forward are traced only)."""
  abstract = nnx.eval_shape(lambda: _build(**overrides))
  graphdef, state = nnx.split(abstract)
  k = overrides.get("num_references", 2)
  args = (jax.ShapeDtypeStruct((b, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32),
          jax.ShapeDtypeStruct((b, 2), jnp.float32),
          jax.ShapeDtypeStruct((b, k, TOKENS_GRID ** 2, C_REF), jnp.float16) if refs else None,
          jax.ShapeDtypeStruct((b, num_boxes, 4), jnp.float32) if num_boxes else None)

  def forward(state, images, valid, refs, boxes):
    return nnx.merge(graphdef, state)(images, image_valid_hw=valid, reference_tokens=refs,
                                      query_boxes=boxes, train=train)

  return jax.eval_shape(forward, state, *args), state


@pytest.mark.parametrize("overrides,refs,num_boxes,train", [
    ({}, True, None, False),
    ({"fusion": "cross_attention"}, True, None, False),
    ({"num_references": 0}, False, None, False),  # The no-retrieval ablation.
    ({}, True, 5, False),  # Scoring given boxes.
    ({"fusion": "cross_attention", "num_references": 0}, False, 3, False),
    pytest.param({}, True, None, True, marks=pytest.mark.slow),
    # Built with references, run without (skips fusion).
    pytest.param({}, False, None, False, marks=pytest.mark.slow),
    pytest.param({"use_stride16": False}, True, None, False, marks=pytest.mark.slow),
])
def test_output_shapes_for_every_variant(overrides, refs, num_boxes, train):
  out, state = _abstract_forward(overrides, refs=refs, num_boxes=num_boxes, train=train)
  n = num_boxes or testing.get_config().model.num_queries
  layers = testing.get_config().model.num_decoder_layers
  assert len(out["aux"]) == layers - 1
  for pred in [out, *out["aux"]]:
    assert pred["logits"].shape == (2, n) and pred["logits"].dtype == jnp.float32
    assert pred["boxes"].shape == (2, n, 4) and pred["boxes_cxcywh"].shape == (2, n, 4)
  has_fusion = any(name in state for name in ("fusion", "reference_encoder"))
  assert has_fusion == (overrides.get("num_references", 2) > 0)


def test_forward_pass(model):
  images, valid, refs = _inputs()
  out = nnx.jit(lambda m, x, v, r: m(x, image_valid_hw=v, reference_tokens=r))(
      model, images, valid, refs)
  n = model.num_queries
  assert out["boxes"].shape == (2, n, 4) and len(out["aux"]) == 1
  for pred in [out, *out["aux"]]:
    assert np.all(np.isfinite(pred["logits"])) and np.all(np.isfinite(pred["boxes"]))
    boxes = np.asarray(pred["boxes"])
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[..., 2:] >= boxes[..., :2])
  # The score head starts near the focal-loss prior, and distinct queries predict distinct boxes.
  assert np.all(jax.nn.sigmoid(out["logits"]) < 0.2)
  assert np.unique(np.round(np.asarray(out["boxes"][0]), 4), axis=0).shape[0] == n


def _memory(model, b=2, rng=np.random.default_rng(1)):
  """Random image tokens of two padded images; the decoder can run on them without a backbone."""
  s, d = model.grid ** 2, model.d_model
  memory = jnp.asarray(rng.normal(size=(b, s, d)), jnp.float32)
  valid = jnp.array([[1.0, 0.4], [0.4, 0.4]])  # Right column / only top-left token on image.
  mask = position_encoding.token_valid_mask(model.grid, model.grid, valid)
  pos = position_encoding.grid_sine_embedding(model.grid, model.grid, valid, d)
  return memory, pos, mask


# Shared by the tests below so that each shape compiles once.
@functools.partial(nnx.jit, static_argnames="train")
def _decode(model, memory, pos, mask, query_boxes=None, *, train=False):
  return model.decode(memory, pos, mask, query_boxes, train=train)[0]


def test_padded_tokens_are_ignored(model):
  memory, pos, mask = _memory(model)
  np.testing.assert_array_equal(mask, [[True, False, True, False], [True, False, False, False]])
  garbage = jnp.where(mask[..., None], memory, 1e3)
  refs = model.reference_encoder(_inputs()[2])
  fused = nnx.jit(lambda m, x: m.fusion(x, mask, refs))
  for transform in (lambda x: x, lambda x: fused(model, x)):
    a = _decode(model, transform(memory), pos, mask)[-1]
    b = _decode(model, transform(garbage), pos, mask)[-1]
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5)
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-5)


def test_scoring_given_boxes(model):
  memory, pos, mask = _memory(model)
  boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.9], [0.3, 0.3, 0.7, 0.6]]] * 2)
  preds = _decode(model, memory, pos, mask, boxes)
  assert len(preds) == len(model.decoder_layers)
  np.testing.assert_allclose(preds[-1]["boxes"], boxes, atol=1e-6)
  assert preds[-1]["logits"].shape == (2, 3)
  # A box's score does not depend on the other boxes scored with it...
  reordered = _decode(model, memory, pos, mask, boxes[:, ::-1])
  np.testing.assert_allclose(reordered[-1]["logits"][:, ::-1], preds[-1]["logits"], atol=1e-5)
  # ...nor do the learned proposals change when boxes are scored.
  proposals = _decode(model, memory, pos, mask)
  assert proposals[-1]["logits"].shape == (2, model.num_queries)
  # The box matters: different boxes get different scores.
  assert np.ptp(np.asarray(preds[-1]["logits"][0])) > 0


def test_cross_attention_fusion_uses_references():
  model = _build(fusion="cross_attention")
  memory, pos, mask = _memory(model)
  _, _, refs = _inputs()
  fuse = nnx.jit(lambda m, r: m.fuse(memory, pos, mask, r))
  fused = fuse(model, refs)
  assert fused.shape == memory.shape and np.all(np.isfinite(fused))
  assert not np.allclose(fused, fuse(model, refs * 0.5))
  np.testing.assert_array_equal(model.fuse(memory, pos, mask, None), memory)


def test_bad_inputs_fail_loudly(model):
  memory, pos, mask = _memory(model)
  with pytest.raises(ValueError, match="reference_tokens"):
    model.fuse(memory, pos, mask, jnp.zeros((2, 3, TOKENS_GRID ** 2, C_REF)))
  with pytest.raises(ValueError, match="image_size"):
    jax.eval_shape(lambda x: model(x), jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32))
  with pytest.raises(ValueError, match="num_references=0"):
    _build(num_references=0).fuse(memory, pos, mask, jnp.zeros((2, 2, 4, C_REF)))
  with pytest.raises(ValueError, match="fusion"):
    _build(fusion="sum")


@pytest.mark.slow  # Compiling the decoder with dropout's random bits takes ~30 s on 2 CPUs.
def test_dropout_only_in_training_and_reseedable():
  model = _build(dropout=0.1)  # The testing config itself trains without dropout.
  memory, pos, mask = _memory(model)
  decode = lambda train: _decode(model, memory, pos, mask, train=train)[-1]["logits"]
  np.testing.assert_array_equal(decode(False), decode(False))
  nnx.reseed(model, dropout=1)
  a = decode(True)
  nnx.reseed(model, dropout=1)
  np.testing.assert_array_equal(a, decode(True))
  assert not np.allclose(a, decode(True))


def test_from_config_param_count_and_flops():
  config = testing.get_config()
  config.data.image_size = IMAGE_SIZE
  abstract = nnx.eval_shape(lambda: procrop.ProCrop.from_config(config, rngs=nnx.Rngs(0)))
  assert abstract.grid == math.ceil(IMAGE_SIZE / 32)
  count = procrop.param_count(abstract)
  assert 3.4e6 < count < 3.8e6  # Lite0 (3.4M without its classifier) plus a tiny head.
  flops = procrop.flops_per_image(abstract)
  assert flops > 1e7
  assert procrop.flops_per_image(abstract, num_references=0) < flops
  # Scoring boxes from a kept encoding runs only their decoder rows: a small part of a pass.
  from_encoding = procrop.flops_per_image(abstract, num_query_boxes=8, from_encoding=True)
  assert 0 < from_encoding < 0.5 * procrop.flops_per_image(abstract, num_query_boxes=8)


def test_proposals_and_given_box_scores_in_one_pass(model):
  memory, pos, mask = _memory(model)
  boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.5, 0.9]]] * 2)
  both = nnx.jit(lambda m, *args: m.decode(*args, with_proposals=True))(
      model, memory, pos, mask, boxes)[0][-1]
  alone = _decode(model, memory, pos, mask)[-1]
  np.testing.assert_allclose(both["logits"], alone["logits"], atol=1e-5)
  np.testing.assert_allclose(both["boxes"], alone["boxes"], atol=1e-5)
  scored = _decode(model, memory, pos, mask, boxes)[-1]
  np.testing.assert_allclose(both["given_logits"], scored["logits"], atol=1e-5)


def test_sample_in_boxes_reads_the_tokens_inside_each_box():
  grid = 4
  tokens = jnp.arange(grid * grid, dtype=jnp.float32).reshape(1, -1, 1)  # Token value = index.
  square = jnp.array([[4.0, 4.0]])
  valid = jnp.array([[1.0, 1.0]])
  # One sample at the centre of token (row 1, column 2) = index 6; at the midpoint of tokens 5
  # and 6, their mean; a 2 x 2 grid over the top-left quarter hits tokens 0, 1, 4, 5.
  boxes = jnp.array([[[0.625, 0.375, 0.25, 0.25], [0.5, 0.375, 0.1, 0.1]]])
  np.testing.assert_allclose(
      procrop.sample_in_boxes(tokens, square, valid, boxes, 1)[0, :, 0], [6.0, 5.5], atol=1e-5)
  quarter = jnp.array([[[0.25, 0.25, 0.5, 0.5]]])
  np.testing.assert_allclose(procrop.sample_in_boxes(tokens, square, valid, quarter, 2)[0, 0],
                             [0.0, 1.0, 4.0, 5.0], atol=1e-5)
  # The same 16 tokens as a 2 x 8 grid (a wide canvas): the centre of row 1, column 5 is 13.
  wide = jnp.array([[2.0, 8.0]])
  np.testing.assert_allclose(procrop.sample_in_boxes(
      tokens, wide, valid, jnp.array([[[0.6875, 0.75, 0.1, 0.1]]]), 1)[0, 0], [13.0], atol=1e-5)
  # An image on the left 0.2 of the canvas covers only column 0's tokens: a box at its right
  # edge (canvas x 0.2, token index 0.3) reads column 0 alone, never the padding's column 1.
  # On 0.3 of the canvas, column 1 covers some of the image and is read.
  right_edge = jnp.array([[[1.0, 0.125, 0.0, 0.0]]])
  for width, expected in ((0.2, 0.0), (0.3, 0.7)):
    narrow = jnp.array([[1.0, width]])
    np.testing.assert_allclose(procrop.sample_in_boxes(tokens, square, narrow, right_edge, 1)[0, 0],
                               [expected], atol=1e-5)


def test_box_content_queries_score_what_lies_inside_the_box():
  model = _build(box_content_grid=2, num_references=0)  # Any canvas shape (no token mixing).
  memory, pos, mask = _memory(model)
  boxes = jnp.array([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]] * 2)
  # Padding's tokens stay ignored.
  garbage = jnp.where(mask[..., None], memory, 1e3)
  decode = nnx.jit(lambda m, x, *args, **kw: m.decode(x, pos, mask, *args, **kw))
  valid = jnp.array([[1.0, 0.4], [0.4, 0.4]])
  fresh, encoding = decode(model, memory, boxes, image_valid_hw=valid)
  np.testing.assert_allclose(decode(model, garbage, boxes, image_valid_hw=valid)[0][-1]["logits"],
                             fresh[-1]["logits"], atol=1e-5)
  # Scoring from a kept encoding gives the fresh pass's scores.
  reused, _ = decode(model, None, boxes, encoding=encoding)
  np.testing.assert_allclose(reused[-1]["logits"], fresh[-1]["logits"], atol=1e-5)
  # Changing the image under the first photo's left half changes only that box's content.
  left = jnp.zeros_like(memory).at[0, 0].set(5.0)  # Token (0, 0) of photo 0.
  moved, _ = decode(model, memory + left, boxes, image_valid_hw=valid)
  change = np.abs(np.asarray(moved[0]["logits"] - fresh[0]["logits"]))
  assert change[0, 0] > 1e-4 and change[1].max() < 1e-6


@pytest.mark.slow  # Compiles the backbone for another canvas shape.
def test_box_content_on_a_canvas_of_another_shape():
  # The Cropper's flexible canvases: the kept encoding carries the token grid, so scoring from
  # it matches a fresh pass.
  model = _build(box_content_grid=2, num_references=0)
  valid = jnp.array([[1.0, 0.4], [0.4, 0.4]])
  boxes = jnp.array([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]] * 2)
  images = np.random.default_rng(2).random((2, 64, 96, 3), np.float32)
  call = nnx.jit(lambda m, x, v, q: m(x, image_valid_hw=v, query_boxes=q))
  fresh = call(model, images, valid, boxes)
  np.testing.assert_array_equal(fresh["encoding"]["token_hw"], [[2.0, 3.0]] * 2)
  reused = nnx.jit(lambda m, e, q: m(None, encoding=e, query_boxes=q))(
      model, fresh["encoding"], boxes)
  np.testing.assert_allclose(reused["logits"], fresh["logits"], atol=1e-5)
