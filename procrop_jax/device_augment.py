"""The training augmentation inside the jitted step: cached uint8 canvases in, model batch out.

`canvas_cache.py` decodes every training photo once into a uint8 canvas (its longer side
`C` px, at the top left of a C x C square) with its boxes sorted and padded. This module then
does, on the device and per example, what `input_pipeline.preprocess` does on the host:

1. a random crop that keeps the target box (the best-scored one; the whole photo when there is
   none), with probability `crop_probability`, rounded outwards to whole canvas pixels;
2. boxes and rated pairs moved into the crop (boxes it cuts are masked, pairs it cuts get
   weight 0), and the source size scaled to the crop's;
3. a horizontal flip;
4. the crop resized so its longer side is `image_size` (bilinear with antialiasing, TF's
   kernel: `jax.image.scale_and_translate`) at the top left of an `image_size` square;
5. brightness, contrast and saturation jitter, then clipping to [0, 1] and zero padding.

With `plain_probability` p, an example is instead taken as it is (no crop, flip or jitter), as
the feature cache's view 0 is for 1 in `views` examples (p = 1 / views mirrors it).

Steps 1-3 are the host's arithmetic, operation for operation, from the same four draws
(`Draws`): tests/test_device_augment.py feeds both the draws of one TF seed and compares. The
draws here come from `jax.random` with a key per example, `fold_in(key(seed), position)`,
where position is the example's index in the run's stream (step * global batch + i): a resumed
run draws exactly what the uninterrupted run drew, whatever the mesh.

The pixels differ from the host's only at the crop's edges (the resize kernel may reach one
canvas pixel outside the crop) and in the source's own resolution (the host decodes each view
afresh at 1.5x the training size; the cache holds `config.data.canvas_cache.oversample` x).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from procrop_jax import input_pipeline

# What canvas_cache.py stores per example (besides image_id): the canvas, the photo's size on
# it, and the unaugmented labels.
CACHED_FIELDS = ("canvas", "content_hw", "image_size", "boxes", "box_scores", "box_mask",
                 "pair_boxes", "pair_weights")
_SEED_SALT = 0xDE71CE
_EPS = 1e-3  # A box counts as inside the crop up to this (normalised) overhang, as on the host.
# The plain draw's key is folded from the example's key, not split with the others, so that
# plain_probability=0 leaves every other draw (and a run's stream) as it was.
_PLAIN_FOLD = 1


class Draws(NamedTuple):
  """One example's random choices: the crop window's four uniforms, crop and flip decisions,
  and the colour jitter's three uniforms."""
  window: jax.Array  # float [4]
  crop: jax.Array  # bool []
  flip: jax.Array  # bool []
  colour: jax.Array  # float [3]
  plain: jax.Array | bool = False  # The example as it is: no crop, flip or colour jitter.


def draw(key: jax.Array, augment: input_pipeline.Augmentation,
         plain_probability: float = 0.0) -> Draws:
  """The random choices of one example's augmentation, from its key."""
  k_window, k_crop, k_flip, k_colour = jax.random.split(key, 4)
  plain = jax.random.uniform(jax.random.fold_in(key, _PLAIN_FOLD)) < plain_probability
  return Draws(window=jax.random.uniform(k_window, (4,)),
               crop=(jax.random.uniform(k_crop) < augment.crop_probability) & ~plain,
               flip=(jax.random.uniform(k_flip) < augment.flip_probability) & ~plain,
               colour=jax.random.uniform(k_colour, (3,)),
               plain=plain)


def example_keys(seed: int, positions: jax.Array) -> jax.Array:
  """One key per example, a function of the run's seed and the example's stream position."""
  base = jax.random.key(seed ^ _SEED_SALT)
  return jax.vmap(lambda p: jax.random.fold_in(base, p))(positions)


def crop_geometry(example: dict[str, jax.Array], draws: Draws) -> dict[str, jax.Array]:
  """Steps 1-3 for one example: the crop window in canvas pixels and the moved labels.

  `example` holds content_hw (int [2], the photo's size on its canvas), image_size (int [2],
  the source's), boxes [M, 4], box_scores [M], box_mask [M] (valid boxes first, by score),
  pair_boxes [P, 2, 4] and pair_weights [P].

  Returns the window (y1, x1, y2, x2 ints), boxes (clipped, flipped), box_mask, pair_boxes,
  pair_weights and image_size of the crop, all as `input_pipeline.preprocess` computes them.
  """
  height, width = example["content_hw"][0], example["content_hw"][1]
  h_f, w_f = height.astype(jnp.float32), width.astype(jnp.float32)
  boxes, mask = example["boxes"], example["box_mask"]
  num_boxes = boxes.shape[0]
  pairs = example["pair_boxes"].reshape(-1, 4)
  all_boxes = jnp.concatenate([boxes, pairs], 0)
  # Target: the best-scored box (the first: the cache sorted them), else the whole photo.
  target = jnp.where(mask[0], boxes[0], jnp.array([0.0, 0.0, 1.0, 1.0]))
  u = draws.window
  window = jnp.stack([u[0] * target[0], u[1] * target[1],
                      target[2] + u[2] * (1.0 - target[2]),
                      target[3] + u[3] * (1.0 - target[3])])
  window = jnp.where(draws.crop, window, jnp.array([0.0, 0.0, 1.0, 1.0]))
  # Rounded outwards so that the target stays inside the pixel window.
  x1 = jnp.clip(jnp.floor(window[0] * w_f).astype(jnp.int32), 0, width - 1)
  y1 = jnp.clip(jnp.floor(window[1] * h_f).astype(jnp.int32), 0, height - 1)
  x2 = jnp.clip(jnp.ceil(window[2] * w_f).astype(jnp.int32), x1 + 1, width)
  y2 = jnp.clip(jnp.ceil(window[3] * h_f).astype(jnp.int32), y1 + 1, height)
  cw, ch = (x2 - x1).astype(jnp.float32), (y2 - y1).astype(jnp.float32)
  offset = jnp.stack([x1, y1, x1, y1]).astype(jnp.float32)
  moved = (all_boxes * jnp.stack([w_f, h_f, w_f, h_f]) - offset) / jnp.stack([cw, ch, cw, ch])
  inside = jnp.all((moved[:, :2] >= -_EPS) & (moved[:, 2:] <= 1.0 + _EPS), axis=1)
  mask = mask & inside[:num_boxes]
  # A pair is kept only when the crop keeps both of its boxes whole.
  pair_weights = example["pair_weights"] * jnp.all(
      inside[num_boxes:].reshape(-1, 2), axis=1).astype(jnp.float32)
  moved = jnp.clip(moved, 0.0, 1.0)
  image_size = jnp.round(example["image_size"].astype(jnp.float32)
                         * jnp.stack([ch / h_f, cw / w_f])).astype(jnp.int32)
  flipped = jnp.stack([1.0 - moved[:, 2], moved[:, 1], 1.0 - moved[:, 0], moved[:, 3]], axis=1)
  moved = jnp.where(draws.flip, flipped, moved)
  return {"window": jnp.stack([y1, x1, y2, x2]), "boxes": moved[:num_boxes],
          "box_mask": mask, "pair_boxes": moved[num_boxes:].reshape(-1, 2, 4),
          "pair_weights": pair_weights, "image_size": image_size}


def _sort_boxes(boxes: jax.Array, scores: jax.Array, mask: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Valid boxes first, by descending score (stable); masked ones zeroed, as on the host."""
  order = jnp.argsort(jnp.where(mask, -scores, jnp.inf), stable=True)
  boxes, scores, mask = boxes[order], scores[order], mask[order]
  return jnp.where(mask[:, None], boxes, 0.0), jnp.where(mask, scores, 0.0), mask


def _colour_jitter(image: jax.Array, valid: jax.Array, u: jax.Array,
                   augment: input_pipeline.Augmentation) -> jax.Array:
  """`input_pipeline._colour_jitter` on the valid pixels (the mean is theirs alone)."""
  brightness, contrast, saturation = input_pipeline.jitter_factors(u, augment, jnp.exp)
  gray = jnp.sum(image * jnp.array([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
  image = gray + saturation * (image - gray)
  mean = jnp.sum(gray * valid) / jnp.maximum(jnp.sum(valid), 1.0)
  return mean + contrast * (image - mean) + brightness


def augment_example(example: dict[str, jax.Array], draws: Draws, *, image_size: int,
                    augment: input_pipeline.Augmentation) -> dict[str, jax.Array]:
  """One cached example (`canvas` uint8 [C, C, 3] and its labels) -> one training example in
  the input pipeline's layout (image float32 [S, S, 3] in [0, 1], content at the top left)."""
  geometry = crop_geometry(example, draws)
  y1, x1, y2, x2 = (geometry["window"][i].astype(jnp.float32) for i in range(4))
  ch, cw = y2 - y1, x2 - x1
  scale = image_size / jnp.maximum(ch, cw)
  new_h = jnp.clip(jnp.round(ch * scale), 1, image_size)
  new_w = jnp.clip(jnp.round(cw * scale), 1, image_size)
  # Output pixel coordinate = (canvas coordinate - window start) * (new size / window size).
  scales = jnp.stack([new_h / ch, new_w / cw])
  image = jax.image.scale_and_translate(
      example["canvas"].astype(jnp.float32) / 255.0, (image_size, image_size, 3), (0, 1),
      scales, -jnp.stack([y1, x1]) * scales, method="linear", antialias=True)
  rows = jnp.arange(image_size, dtype=jnp.float32)
  valid = (rows[:, None] < new_h) & (rows[None, :] < new_w)
  # The flip mirrors the content's columns within its own width.
  columns = jnp.arange(image_size)
  mirrored = jnp.where(columns < new_w, new_w.astype(jnp.int32) - 1 - columns, columns)
  image = jnp.where(draws.flip, image[:, mirrored], image)
  image = jnp.where(draws.plain, image,
                    _colour_jitter(image, valid[..., None], draws.colour, augment))
  image = jnp.where(valid[..., None], jnp.clip(image, 0.0, 1.0), 0.0)
  boxes, scores, mask = _sort_boxes(geometry["boxes"], example["box_scores"],
                                    geometry["box_mask"])
  return {"image": image,
          "image_valid_hw": jnp.stack([new_h, new_w]) / float(image_size),
          "image_size": geometry["image_size"],
          "boxes": boxes, "box_scores": scores, "box_mask": mask,
          "pair_boxes": geometry["pair_boxes"], "pair_weights": geometry["pair_weights"]}


def augment_batch(batch: dict[str, jax.Array], *, seed: int, image_size: int,
                  augment: input_pipeline.Augmentation, plain_probability: float = 0.0
                  ) -> dict[str, Any]:
  """A canvas-cache batch (`canvas_cache.create_train_iterator`) -> the model's batch.

  Keys other than the cache's (e.g. retrieval references) pass through unchanged.
  """
  if not 0.0 <= plain_probability <= 1.0:
    raise ValueError(f"config.data.canvas_cache.plain_probability={plain_probability} must lie "
                     "in [0, 1]")
  keys = example_keys(seed, batch["position"])
  draws = jax.vmap(lambda k: draw(k, augment, plain_probability))(keys)
  out = jax.vmap(lambda ex, d: augment_example(ex, d, image_size=image_size, augment=augment))(
      {k: batch[k] for k in CACHED_FIELDS}, draws)
  rest = {k: v for k, v in batch.items() if k not in CACHED_FIELDS and k != "position"}
  return {**rest, **out}
