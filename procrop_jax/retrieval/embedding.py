"""Composition descriptors from backbone features: reference tokens and search embeddings.

Both come from the backbone's stride-32 map, pooled over the *image content* only (the canvas is
padded at the bottom/right, see AGENTS_CONTRACT.md) on a regular grid, so a cell always covers
the same fraction of the photo whatever its aspect ratio, and a grid of cells keeps where things
are, not only what they are:

* reference tokens: the map pooled to `tokens_grid` x `tokens_grid` cells, [T, C] with
  T = tokens_grid ** 2 (row-major, top-left first) and C the stride-32 channels (1280 for the
  Lite backbones); stored as float16 (16 x 1280 x 2 B = 40 KB per photo at the default 4x4). The
  fusion module consumes them as [B, K, T, C].
* embedding: the tokens averaged down to `embedding_grid` x `embedding_grid` cells (exact, since
  the pooling bins nest; tokens_grid must be a multiple of embedding_grid), each cell centred and
  projected on the top `embedding_dim / embedding_grid**2` principal axes of the database's cell
  features (one `Projection` shared by all cells, fitted once on the database and stored with
  it), concatenated cell by cell and L2-normalised. Inner products of embeddings are then
  cosines of layouts: cell i of one photo is compared with cell i of the other.

`TokenExtractor` is the jitted, data-parallel pass images -> tokens over the local devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

Backbone = Callable[[jax.Array], Mapping[str, jax.Array]]
TOKEN_DTYPE = np.float16
FEATURE_KEY = "stride32"


def _axis_weights(extent: jax.Array, num_cells: int, grid: int) -> jax.Array:
  """[B, grid, num_cells] area weights of feature cells in each bin of [0, extent), rows sum 1.

  `extent` [B] is the content's length in feature cells (fractional: content that ends inside a
  cell counts that cell in proportion).
  """
  extent = jnp.clip(extent, 1e-3, num_cells)
  edges = extent[:, None] * (jnp.arange(grid + 1, dtype=jnp.float32) / grid)
  lo, hi = edges[:, :-1, None], edges[:, 1:, None]
  cell = jnp.arange(num_cells, dtype=jnp.float32)[None, None, :]
  overlap = jnp.clip(jnp.minimum(cell + 1, hi) - jnp.maximum(cell, lo), 0.0, None)
  return overlap / jnp.sum(overlap, axis=-1, keepdims=True)


def content_pool(features: jax.Array, image_valid_hw: jax.Array | None, grid: int, *,
                 canvas_size: int | None = None, stride: int = 32) -> jax.Array:
  """Average-pools an NHWC map over the image content into grid x grid cells.

  Args:
    features: [B, h, w, C] map of a "SAME"-padded network: cell i covers canvas pixels
      [i * stride, (i + 1) * stride), h = ceil(S / stride).
    image_valid_hw: [B, 2] content (h, w) as a fraction of the canvas side S; None = all.
    grid: output cells per side.
    canvas_size: S in pixels (default h * stride).
    stride: the map's stride in pixels.

  Returns:
    [B, grid, grid, C] float32, each cell the area-weighted mean of the features it covers.
  """
  b, h, w, _ = features.shape
  if image_valid_hw is None:
    image_valid_hw = jnp.ones((b, 2), jnp.float32)
  image_valid_hw = jnp.asarray(image_valid_hw, jnp.float32)
  size = canvas_size or h * stride
  wy = _axis_weights(image_valid_hw[:, 0] * size / stride, h, grid)
  wx = _axis_weights(image_valid_hw[:, 1] * size / stride, w, grid)
  return jnp.einsum("biy,bjx,byxc->bijc", wy, wx, features.astype(jnp.float32))


def reference_tokens(features: Mapping[str, jax.Array], image_valid_hw: jax.Array | None, *,
                     tokens_grid: int, canvas_size: int) -> jax.Array:
  """Backbone outputs -> [B, tokens_grid**2, C] reference tokens (float32)."""
  pooled = content_pool(features[FEATURE_KEY], image_valid_hw, tokens_grid,
                        canvas_size=canvas_size)
  return pooled.reshape(pooled.shape[0], tokens_grid * tokens_grid, pooled.shape[-1])


def check_grids(tokens_grid: int, embedding_grid: int, embedding_dim: int) -> int:
  """Validates the grid settings; returns the projected channels per embedding cell."""
  if tokens_grid < 1 or embedding_grid < 1 or tokens_grid % embedding_grid:
    raise ValueError(f"config.retrieval.tokens_grid={tokens_grid} must be a positive multiple "
                     f"of config.retrieval.embedding_grid={embedding_grid} (the embedding is "
                     "pooled from the tokens)")
  cells = embedding_grid * embedding_grid
  if embedding_dim < cells or embedding_dim % cells:
    raise ValueError(f"config.retrieval.embedding_dim={embedding_dim} must be a positive "
                     f"multiple of embedding_grid**2={cells}")
  return embedding_dim // cells


def tokens_to_cells(tokens: np.ndarray, tokens_grid: int, embedding_grid: int) -> np.ndarray:
  """[N, tokens_grid**2, C] -> [N, embedding_grid**2, C] float32 by averaging nested bins."""
  n, _, c = tokens.shape
  f = tokens_grid // embedding_grid
  x = np.asarray(tokens, np.float32).reshape(n, embedding_grid, f, embedding_grid, f, c)
  return x.mean(axis=(2, 4)).reshape(n, embedding_grid * embedding_grid, c)


@dataclasses.dataclass(frozen=True)
class Projection:
  """Cell features -> embedding: centre with `mean` [C], project on `components` [C, c]."""
  mean: np.ndarray
  components: np.ndarray
  tokens_grid: int
  embedding_grid: int

  @property
  def dim(self) -> int:
    return self.embedding_grid ** 2 * self.components.shape[1]

  def __call__(self, tokens: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """[N, T, C] tokens -> [N, dim] L2-normalised float32 embeddings."""
    n = tokens.shape[0]
    out = np.empty((n, self.dim), np.float32)
    for start in range(0, n, chunk):
      cells = tokens_to_cells(tokens[start:start + chunk], self.tokens_grid, self.embedding_grid)
      e = ((cells - self.mean) @ self.components).reshape(len(cells), -1)
      out[start:start + chunk] = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return out

  def save(self, path) -> None:
    with open(path, "wb") as f:
      np.savez(f, mean=self.mean, components=self.components,
               grids=np.array([self.tokens_grid, self.embedding_grid]))

  @classmethod
  def load(cls, path) -> "Projection":
    with np.load(path) as z:
      return cls(z["mean"], z["components"], int(z["grids"][0]), int(z["grids"][1]))


def fit_projection(tokens: np.ndarray, *, tokens_grid: int, embedding_grid: int,
                   embedding_dim: int, max_photos: int = 8192, seed: int = 0,
                   chunk: int = 1024) -> Projection:
  """PCA of the cell features of (a sample of) the database's photos.

  Args:
    tokens: [N, T, C] (float16 memory maps are fine: read in chunks of sampled rows).
    tokens_grid, embedding_grid, embedding_dim: see `check_grids`.
    max_photos: photos sampled for the fit (their embedding_grid**2 cells each): 8192 photos
      give 131K cells at a 4x4 grid, plenty for 1280 x 1280 covariances.
    seed: the sample's seed.
    chunk: photos per read.

  Returns:
    The projection. Axes past the data's rank (tiny databases) are zero and add nothing.
  """
  per_cell = check_grids(tokens_grid, embedding_grid, embedding_dim)
  n, _, c = tokens.shape
  if n == 0:
    raise ValueError("cannot fit the embedding projection on an empty database")
  rows = np.arange(n) if n <= max_photos else np.sort(
      np.random.default_rng(seed).choice(n, max_photos, replace=False))
  num_cells = len(rows) * embedding_grid ** 2
  if num_cells <= 4 * c:
    # Few samples (a small database): SVD of the centred cells. The covariance would be rank
    # deficient, and eigensolvers are slow on its cluster of zero eigenvalues.
    cells = tokens_to_cells(tokens[rows], tokens_grid, embedding_grid).reshape(-1, c)
    mean = cells.mean(axis=0, dtype=np.float64)
    _, svals, vt = np.linalg.svd(cells - mean, full_matrices=False)
    eigvals, eigvecs = svals ** 2 / num_cells, vt.T
  else:
    total = np.zeros((c,), np.float64)
    gram = np.zeros((c, c), np.float64)
    for start in range(0, len(rows), chunk):
      cells = tokens_to_cells(tokens[rows[start:start + chunk]], tokens_grid, embedding_grid)
      cells = cells.reshape(-1, c)
      total += cells.sum(axis=0, dtype=np.float64)
      gram += (cells.T @ cells).astype(np.float64)
    mean = total / num_cells
    eigvals, eigvecs = np.linalg.eigh(gram / num_cells - np.outer(mean, mean))
  order = np.argsort(eigvals)[::-1][:per_cell]
  eigvals, eigvecs = eigvals[order], eigvecs[:, order]
  components = eigvecs * (eigvals > 1e-9 * max(eigvals.max(initial=0.0), 1e-30))
  if components.shape[1] < per_cell:  # Fewer channels than requested axes.
    components = np.pad(components, ((0, 0), (0, per_cell - components.shape[1])))
  # A fixed sign per axis (largest |loading| positive) makes refits on the same data identical.
  signs = np.sign(components[np.argmax(np.abs(components), axis=0), np.arange(per_cell)])
  components = components * np.where(signs == 0, 1.0, signs)
  return Projection(mean.astype(np.float32), components.astype(np.float32), tokens_grid,
                    embedding_grid)


class TokenExtractor:
  """Images -> reference tokens, jitted and split over this host's devices.

  `backbone` is an `nnx.Module` (e.g. `EfficientNetLite`, called in inference mode) or any
  callable images -> {"stride32": [B, h, w, C], ...}. Batches are padded to `batch_size` (a
  multiple of the local device count), so there is one compilation; each host uses only its own
  devices, which is what sharded extraction over hosts needs (no cross-host communication).
  """

  def __init__(self, backbone: nnx.Module | Backbone, *, tokens_grid: int, image_size: int,
               batch_size: int = 32, devices: list[Any] | None = None):
    devices = devices or jax.local_devices()
    self.mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.tokens_grid = tokens_grid
    self.image_size = image_size
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    split = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
    self._split = split
    if isinstance(backbone, nnx.Module):
      graphdef, state = nnx.split(backbone)
      self._state = jax.device_put(state, replicated)

      def call(state, images):
        return nnx.merge(graphdef, state)(images)
    else:
      self._state = None

      def call(state, images):
        del state
        return backbone(images)

    def extract(state, images, valid_hw):
      feats = call(state, images)
      tokens = reference_tokens(feats, valid_hw, tokens_grid=tokens_grid, canvas_size=image_size)
      return tokens.astype(jnp.float16)

    self._extract = jax.jit(extract, in_shardings=(replicated, split, split),
                            out_shardings=split)

  @property
  def token_shape(self) -> tuple[int, int]:
    """(T, C) of one image's tokens (traced, not computed)."""
    b, s = self.batch_size, self.image_size
    out = jax.eval_shape(self._extract, self._state,
                         jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
                         jax.ShapeDtypeStruct((b, 2), jnp.float32))
    return tuple(out.shape[1:])

  def __call__(self, images: np.ndarray, image_valid_hw: np.ndarray | None = None) -> np.ndarray:
    """[B, S, S, 3] float32 in [0, 1] (+ [B, 2] content fractions) -> [B, T, C] float16."""
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    if images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"expected [B, {self.image_size}, {self.image_size}, 3] images (the "
                       f"database's input size), got {images.shape}")
    if image_valid_hw is None:
      image_valid_hw = np.ones((n, 2), np.float32)
    out = []
    for start in range(0, n, self.batch_size):
      x = images[start:start + self.batch_size]
      v = np.asarray(image_valid_hw[start:start + self.batch_size], np.float32)
      m = len(x)
      if m < self.batch_size:  # Pad with full-canvas blanks: one compiled shape.
        x = np.concatenate([x, np.zeros((self.batch_size - m,) + x.shape[1:], x.dtype)])
        v = np.concatenate([v, np.ones((self.batch_size - m, 2), v.dtype)])
      tokens = self._extract(self._state, jax.device_put(x, self._split),
                             jax.device_put(v, self._split))
      out.append(np.asarray(tokens)[:m])
    if not out:
      return np.zeros((0, *self.token_shape), TOKEN_DTYPE)
    return np.concatenate(out)
