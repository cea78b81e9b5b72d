"""Box conversions and overlaps (pure jnp, any leading batch dimensions).

Boxes are `[x1, y1, x2, y2]` unless a name says `cxcywh` (`[cx, cy, w, h]`). Functions named
`pairwise_*` compare every box of `a [..., N, 4]` with every box of `b [..., M, 4]` and return
`[..., N, M]`; the others compare matching boxes elementwise and return `[...]`.
"""

import jax
import jax.numpy as jnp

# Keeps unions and enclosing areas of degenerate (zero-area) boxes away from 0/0.
_EPS = 1e-7


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  x1, y1, x2, y2 = jnp.moveaxis(boxes, -1, 0)
  return jnp.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
  """Area of xyxy boxes; inverted boxes count as empty."""
  wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
  return wh[..., 0] * wh[..., 1]


def _overlaps(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Intersection, union and enclosing-box area of broadcast-compatible xyxy boxes."""
  lt = jnp.maximum(a[..., :2], b[..., :2])
  rb = jnp.minimum(a[..., 2:], b[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = box_area(a) + box_area(b) - inter
  enc_wh = jnp.maximum(jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2]),
                       0.0)
  enclosing = enc_wh[..., 0] * enc_wh[..., 1]
  return inter, union, enclosing


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Elementwise IoU of xyxy boxes `a [..., 4]` and `b [..., 4]` (broadcasting)."""
  inter, union, _ = _overlaps(a, b)
  return inter / jnp.maximum(union, _EPS)


def generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Elementwise GIoU (Rezatofighi et al. 2019) in [-1, 1] of xyxy boxes (broadcasting)."""
  inter, union, enclosing = _overlaps(a, b)
  iou = inter / jnp.maximum(union, _EPS)
  return iou - (enclosing - union) / jnp.maximum(enclosing, _EPS)


def pairwise_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of every box in `a [..., N, 4]` with every box in `b [..., M, 4]`: `[..., N, M]`."""
  return box_iou(a[..., :, None, :], b[..., None, :, :])


def pairwise_generalized_box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """GIoU of every box in `a [..., N, 4]` with every box in `b [..., M, 4]`: `[..., N, M]`."""
  return generalized_box_iou(a[..., :, None, :], b[..., None, :, :])
