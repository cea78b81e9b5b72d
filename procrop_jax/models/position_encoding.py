"""Sine positional encodings (DETR / Conditional DETR), normalised to the image, not the canvas."""

import math

import jax
import jax.numpy as jnp


def sine_embedding(coords: jax.Array, num_feats: int, *,
                   temperature: float = 10000.0) -> jax.Array:
  """Embeds each coordinate in [0, 1] with `num_feats` sines/cosines (Conditional DETR's
  `gen_sineembed_for_position`): coordinate * 2 pi over a geometric ladder of frequencies.

  Args:
    coords: [..., C] coordinates, 1.0 = the image edge.
    num_feats: features per coordinate (even).

  Returns:
    [..., C * num_feats], the coordinates' embeddings concatenated in the given order.
  """
  if num_feats % 2:
    raise ValueError(f"num_feats must be even, got {num_feats}")
  dim_t = temperature ** (2 * (jnp.arange(num_feats) // 2) / num_feats)
  pos = coords[..., None].astype(jnp.float32) * (2 * math.pi) / dim_t  # [..., C, F]
  # Even features are sines, odd ones cosines, interleaved as in DETR.
  emb = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
  return emb.reshape(*coords.shape[:-1], coords.shape[-1] * num_feats)


def token_centres(height: int, width: int, image_valid_hw: jax.Array) -> jax.Array:
  """Centres (y, x) of a height x width grid of canvas tokens in image coordinates.

  The image sits at the canvas's top-left and covers `image_valid_hw` of it, so a token at canvas
  fraction f lies at f / valid in image coordinates (1.0 = the image's bottom/right edge).

  Returns:
    [B, height * width, 2] (y, x).
  """
  ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
  xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
  grid = jnp.stack(jnp.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
  return grid[None] / jnp.maximum(image_valid_hw[:, None, :], 1e-6)


def token_valid_mask(height: int, width: int, image_valid_hw: jax.Array) -> jax.Array:
  """True for canvas tokens that cover any of the image (not only padding): [B, height * width]."""
  rows = jnp.arange(height, dtype=jnp.float32) / height < image_valid_hw[:, 0:1] - 1e-6  # [B, H]
  cols = jnp.arange(width, dtype=jnp.float32) / width < image_valid_hw[:, 1:2] - 1e-6  # [B, W]
  return (rows[:, :, None] & cols[:, None, :]).reshape(-1, height * width)


def grid_sine_embedding(height: int, width: int, image_valid_hw: jax.Array, d_model: int, *,
                        temperature: float = 10000.0) -> jax.Array:
  """DETR's 2-D sine encoding of the canvas tokens, normalised by the image's extent.

  Returns:
    [B, height * width, d_model]: d_model / 2 features for y, then d_model / 2 for x.
  """
  return sine_embedding(token_centres(height, width, image_valid_hw), d_model // 2,
                        temperature=temperature)
