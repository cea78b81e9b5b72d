"""Composition descriptors: content pooling, projection, the jitted extractor on the real backbone,
and the reference-token shape contract with the model."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import testing
from procrop_jax.models import efficientnet_lite
from procrop_jax.models import procrop
from procrop_jax.retrieval import database as database_lib
from procrop_jax.retrieval import embedding

IMAGE_SIZE = 64


def test_content_pool_is_identity_when_grid_matches_the_map():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  np.testing.assert_allclose(embedding.content_pool(x, None, 4), x, rtol=1e-6)


def test_content_pool_ignores_padding():
  # A wide image (content = top half of the canvas) on a 4x4 map: rows 2-3 are padding.
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, :2, :, 0] = np.arange(8).reshape(2, 4)
  x[0, 2:] = 100.0  # Padding features must not leak in.
  pooled = embedding.content_pool(jnp.asarray(x), jnp.array([[0.5, 1.0]]), 2,
                                  canvas_size=128)
  np.testing.assert_allclose(pooled[0, :, :, 0], [[0.5, 2.5], [4.5, 6.5]], rtol=1e-6)


def test_content_pool_weights_partial_cells_by_area():
  x = np.zeros((1, 1, 3, 1), np.float32)
  x[0, 0, :, 0] = [1.0, 2.0, 30.0]
  # Content ends half-way through the second cell (width 1.5 cells of 3) -> one bin:
  # (1 * 1 + 2 * 0.5) / 1.5.
  pooled = embedding.content_pool(jnp.asarray(x), jnp.array([[1.0, 0.5]]), 1, canvas_size=96)
  np.testing.assert_allclose(pooled[0, 0, 0, 0], 4.0 / 3.0, rtol=1e-6)


def test_embedding_cells_equal_pooling_the_map_directly():
  """tokens (4x4) -> cells (2x2) is exact because the bins nest."""
  x = jax.random.uniform(jax.random.key(1), (3, 10, 10, 5))
  valid = jnp.array([[1.0, 0.7], [0.45, 1.0], [1.0, 1.0]])
  tokens = embedding.content_pool(x, valid, 4, canvas_size=320).reshape(3, 16, 5)
  cells = embedding.tokens_to_cells(np.asarray(tokens), 4, 2)
  direct = embedding.content_pool(x, valid, 2, canvas_size=320).reshape(3, 4, 5)
  np.testing.assert_allclose(cells, direct, rtol=1e-5, atol=1e-6)


def test_projection_gives_unit_layout_sensitive_embeddings():
  rng = np.random.default_rng(0)
  tokens = rng.random((64, 16, 12)).astype(np.float16)
  proj = embedding.fit_projection(tokens, tokens_grid=4, embedding_grid=2, embedding_dim=16)
  assert proj.components.shape == (12, 4) and proj.dim == 16
  np.testing.assert_allclose(proj.components.T @ proj.components, np.eye(4), atol=1e-5)
  e = proj(tokens)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
  # The same content in mirrored cells is a different composition.
  mirrored = tokens.reshape(64, 4, 4, 12)[:, :, ::-1].reshape(64, 16, 12)
  assert np.mean(np.sum(proj(mirrored) * e, axis=1)) < 0.9
  again = embedding.fit_projection(tokens, tokens_grid=4, embedding_grid=2, embedding_dim=16)
  np.testing.assert_array_equal(again.components, proj.components)


def test_projection_of_a_tiny_database_pads_missing_axes():
  tokens = np.ones((1, 4, 8), np.float16)  # Rank 0 after centring.
  proj = embedding.fit_projection(tokens, tokens_grid=2, embedding_grid=1, embedding_dim=6)
  assert proj.components.shape == (8, 6)
  assert np.all(np.isfinite(proj(tokens)))


@pytest.mark.parametrize("tokens_grid,embedding_grid,dim", [(4, 3, 9), (2, 2, 6), (4, 4, 8)])
def test_bad_grids_are_rejected(tokens_grid, embedding_grid, dim):
  with pytest.raises(ValueError, match="config.retrieval"):
    embedding.check_grids(tokens_grid, embedding_grid, dim)


def test_extractor_accepts_any_backbone_callable():
  def fake_backbone(images):  # 32x32 patch means as a 3-channel "stride-32" map.
    b, s = images.shape[0], images.shape[1]
    return {"stride32": images.reshape(b, s // 32, 32, s // 32, 32, 3).mean(axis=(2, 4))}

  extractor = embedding.TokenExtractor(fake_backbone, tokens_grid=2, image_size=64,
                                       batch_size=8)
  images = np.zeros((3, 64, 64, 3), np.float32)
  images[:, :32, 32:] = 1.0  # Bright top-right quadrant.
  tokens = extractor(images)
  assert tokens.shape == (3, 4, 3) and extractor.token_shape == (4, 3)
  np.testing.assert_array_equal(tokens[0, :, 0], [0.0, 1.0, 0.0, 0.0])
  # A wide image (content = the top 32 rows): its right half is bright, in both grid rows.
  tokens = extractor(images, np.array([[0.5, 1.0]] * 3, np.float32))
  np.testing.assert_array_equal(tokens[0, :, 0], [0.0, 1.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def backbone():
  return efficientnet_lite.EfficientNetLite("lite0", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def extractor(backbone):
  return embedding.TokenExtractor(backbone, tokens_grid=2, image_size=IMAGE_SIZE, batch_size=8)


def test_extractor_runs_the_real_backbone_sharded(backbone, extractor):
  assert len(extractor.mesh.devices.flat) == len(jax.local_devices())
  assert extractor.token_shape == (4, backbone.feature_channels["stride32"])
  rng = np.random.default_rng(0)
  images = rng.random((11, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  valid = np.where(rng.random((11, 2)) < 0.5, 0.6, 1.0).astype(np.float32)
  tokens = extractor(images, valid)
  assert tokens.shape == (11, 4, 1280) and tokens.dtype == np.float16
  # An image's tokens do not depend on the rest of its batch (padding, sharding).
  alone = extractor(images[9:10], valid[9:10])
  np.testing.assert_allclose(alone[0].astype(np.float32), tokens[9].astype(np.float32),
                             rtol=1e-2, atol=1e-2)
  # They equal pooling the backbone's stride-32 map directly.
  feats = nnx.jit(lambda m, x: m(x))(backbone, jnp.asarray(images[:2]))
  direct = embedding.reference_tokens(feats, valid[:2], tokens_grid=2, canvas_size=IMAGE_SIZE)
  np.testing.assert_allclose(tokens[:2].astype(np.float32), np.asarray(direct), rtol=1e-2,
                             atol=1e-2)


def test_reference_tokens_fit_the_model(backbone, extractor):
  """The shape contract: database tokens gathered for K neighbours are what ProCrop takes."""
  config = testing.get_config()
  config.data.image_size = IMAGE_SIZE
  config.retrieval.embedding_grid = 2  # <= tokens_grid (2 in the testing config).
  k, t = config.model.num_references, config.retrieval.tokens_grid ** 2
  assert extractor.tokens_grid == config.retrieval.tokens_grid
  rng = np.random.default_rng(1)
  tokens = extractor(rng.random((6, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))
  db = database_lib.ReferenceDatabase.from_tokens(
      [f"p{i}" for i in range(6)], tokens,
      metadata=database_lib.expected_metadata(config), index_method="exact")
  rows, _ = db.search(db.embed_tokens(tokens[:2]), k, exclude_ids=[["p0"], ["p1"]])
  refs = db.gather_tokens(rows)
  c_ref = backbone.feature_channels["stride32"]
  assert refs.shape == (2, k, t, c_ref) and refs.dtype == np.float16

  abstract = nnx.eval_shape(lambda: procrop.ProCrop.from_config(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)

  def forward(state, images, refs):
    return nnx.merge(graphdef, state)(images, reference_tokens=refs)

  out = jax.eval_shape(forward, state,
                       jax.ShapeDtypeStruct((2, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32),
                       jax.ShapeDtypeStruct(refs.shape, refs.dtype))
  assert out["boxes"].shape == (2, config.model.num_queries, 4)
