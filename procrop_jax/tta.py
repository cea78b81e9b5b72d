"""Test-time flip averaging and box voting: inference-only refinements of the model's crops.

Both are pure JAX functions of a batch and run inside the jitted predict step
(`steps.predict_step`), so evaluation, the Cropper and the cropping command share them.

- Flip averaging (`config.inference.flip`): the photo is also run mirrored (inside its valid
  region: the canvas keeps the photo at its top-left). Proposals of the mirrored pass are mirrored
  back and join the plain ones (2N proposals); a given box is scored in both passes (as itself and
  mirrored on the mirrored photo) and gets the mean score.
- Box voting (`config.inference.vote_iou` > 0): every proposal is replaced by the score-weighted
  mean of the proposals overlapping it by more than vote_iou (itself included), keeping its score.
  A crop is a continuous choice and the model spreads its belief over nearby boxes: the weighted
  mean of that cluster is closer to the expected best crop than any single member.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from procrop_jax import box_ops


def flip_canvas(images: jax.Array, image_valid_hw: jax.Array) -> jax.Array:
  """Mirrors each photo inside its valid width; padding (right and bottom) stays in place."""
  size = images.shape[2]
  width = jnp.round(image_valid_hw[:, 1] * size).astype(jnp.int32)  # [B]
  x = jnp.arange(size)
  source = jnp.where(x[None, :] < width[:, None], width[:, None] - 1 - x[None, :], x[None, :])
  return jnp.take_along_axis(images, source[:, None, :, None], axis=2)


def flip_boxes(boxes: jax.Array) -> jax.Array:
  """Mirrors normalised xyxy boxes: x -> 1 - x."""
  return jnp.stack([1.0 - boxes[..., 2], boxes[..., 1], 1.0 - boxes[..., 0], boxes[..., 3]],
                   axis=-1)


def vote_boxes(boxes: jax.Array, scores: jax.Array, iou_threshold: float) -> jax.Array:
  """Each box -> the score-weighted mean of the boxes overlapping it by > iou_threshold.

  Args:
    boxes: [B, N, 4] normalised xyxy.
    scores: [B, N] in [0, 1].
    iou_threshold: neighbourhood of a box; a box always votes for itself.
  """
  iou = jax.vmap(box_ops.pairwise_box_iou)(boxes, boxes)  # [B, N, N]
  weights = jnp.where(iou > iou_threshold, scores[:, None, :], 0.0)
  weights = weights + jnp.eye(boxes.shape[1])[None] * 1e-6  # A zero-score box keeps itself.
  return jnp.einsum("bij,bjc->bic", weights, boxes) / weights.sum(-1, keepdims=True)
