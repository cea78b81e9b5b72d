"""Test-time flip averaging and box voting (procrop_jax/tta.py) and their use in predict_step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from procrop_jax import tta


def test_flip_canvas_mirrors_inside_the_photo_and_keeps_the_padding():
  rng = np.random.default_rng(0)
  images = rng.random((2, 8, 8, 3)).astype(np.float32)
  images[0, :, 5:] = 0.0  # Photo 0 is 5 columns wide; the rest is padding.
  valid = np.array([[1.0, 5 / 8], [1.0, 1.0]], np.float32)
  flipped = np.asarray(tta.flip_canvas(jnp.asarray(images), jnp.asarray(valid)))
  np.testing.assert_array_equal(flipped[0, :, :5], images[0, :, 4::-1])
  np.testing.assert_array_equal(flipped[0, :, 5:], 0.0)
  np.testing.assert_array_equal(flipped[1], images[1, :, ::-1])
  np.testing.assert_array_equal(tta.flip_canvas(jnp.asarray(flipped), jnp.asarray(valid)),
                                images)


def test_flip_boxes_mirrors_x_and_is_an_involution():
  boxes = jnp.array([[0.1, 0.2, 0.5, 0.9]])
  np.testing.assert_allclose(tta.flip_boxes(boxes), [[0.5, 0.2, 0.9, 0.9]], atol=1e-6)
  np.testing.assert_allclose(tta.flip_boxes(tta.flip_boxes(boxes)), boxes, atol=1e-6)


def test_vote_boxes_averages_overlapping_boxes_by_score_and_leaves_loners():
  boxes = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.9, 1.0], [0.0, 0.0, 0.2, 0.2]]])
  scores = jnp.array([[0.6, 0.2, 0.9]])
  voted = np.asarray(tta.vote_boxes(boxes, scores, 0.5))
  expected = (0.6 * np.array([0, 0, 1, 1]) + 0.2 * np.array([0, 0, 0.9, 1])) / 0.8
  np.testing.assert_allclose(voted[0, 0], expected, atol=1e-5)
  np.testing.assert_allclose(voted[0, 1], expected, atol=1e-5)
  np.testing.assert_allclose(voted[0, 2], [0, 0, 0.2, 0.2], atol=1e-6)  # No neighbour.
  # A zero-score box with no scored neighbour keeps itself (no division by zero).
  alone = tta.vote_boxes(boxes[:, 2:], jnp.zeros((1, 1)), 0.5)
  np.testing.assert_allclose(alone, boxes[:, 2:], atol=1e-6)


@pytest.mark.slow
def test_predict_step_with_flip_pools_both_passes_and_averages_given_box_scores(tiny_config):
  from procrop_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from procrop_jax import steps  # pylint: disable=g-import-not-at-top
  from procrop_jax import train  # pylint: disable=g-import-not-at-top
  config = tiny_config.copy_and_resolve_references()
  config.model.num_references = 0
  trainer = train.Trainer(config, "/nonexistent-unused")
  batch = next(input_pipeline.create_eval_iterator(config.data, global_batch_size=8))
  batch = trainer.device_batch({k: v for k, v in batch.items() if k != "valid"})
  # Jitted, as evaluation and the cropper run it: op by op, the model's hundreds of primitives
  # each compiled on their own took most of this test's time.
  step = jax.jit(functools.partial(steps.predict_step, graphdef=trainer.graphdef,
                                   rng_state=trainer.rng_state),
                 static_argnames=("score_given_boxes", "flip", "vote_iou"))
  predict = functools.partial(step, trainer.state)
  plain = predict(batch, score_given_boxes=False)
  flipped = predict(batch, score_given_boxes=False, flip=True)
  n = config.model.num_queries
  assert flipped["boxes"].shape == (8, 2 * n, 4)
  np.testing.assert_allclose(flipped["boxes"][:, :n], plain["boxes"], atol=1e-5)
  mirrored_batch = {**batch, "image": tta.flip_canvas(batch["image"], batch["image_valid_hw"])}
  mirrored = predict(mirrored_batch, score_given_boxes=False)
  np.testing.assert_allclose(flipped["boxes"][:, n:], tta.flip_boxes(mirrored["boxes"]),
                             atol=1e-5)

  given = predict(batch, score_given_boxes=True, flip=True)["scores"]
  one = predict(batch, score_given_boxes=True)["scores"]
  other = predict({**mirrored_batch, "boxes": tta.flip_boxes(batch["boxes"])},
                  score_given_boxes=True)["scores"]
  np.testing.assert_allclose(given, 0.5 * (one + other), atol=1e-5)

  voted = predict(batch, score_given_boxes=False, vote_iou=0.7)
  assert voted["boxes"].shape == plain["boxes"].shape
  np.testing.assert_allclose(voted["scores"], plain["scores"], atol=1e-6)
  assert jax.numpy.all((voted["boxes"] >= 0) & (voted["boxes"] <= 1))
