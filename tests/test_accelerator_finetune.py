"""experiments/fcdb/accelerator_finetune.py: the TensorFlow-free feed of the trainer's step on an
accelerator (the recipe's augmentation drawn on the host, resampled on the device), and that the
step module it runs needs no TensorFlow."""

import inspect
import subprocess
import sys

import numpy as np

from experiments.fcdb import accelerator_finetune as finetune
from procrop_jax import input_pipeline
from procrop_jax import tta


def test_the_steps_module_imports_without_tensorflow():
  code = ("import sys, procrop_jax.steps; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', "
          "'tensorflow_datasets'}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def _photo(h=90, w=140, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth content, so resampling differences stay small.
  y, x = np.mgrid[0:h, 0:w]
  base = np.stack([np.sin(x / 9.0), np.cos(y / 7.0), np.sin((x + y) / 11.0)], -1)
  return np.clip(127 + 100 * base + rng.normal(0, 2, (h, w, 3)), 0, 255).astype(np.uint8)


def _padded(photo, side):
  canvas = np.zeros((side, side, 3), np.uint8)
  canvas[:photo.shape[0], :photo.shape[1]] = photo
  return canvas


def test_the_whole_photo_resamples_like_the_input_pipeline():
  photo = _photo()
  image, valid = finetune.resample(_padded(photo, 160)[None],
                                   np.array([[0, 0, 140, 90]], np.float32),
                                   np.zeros(1, bool), 64)
  expected, expected_valid = input_pipeline.to_canvas(photo, 64)
  np.testing.assert_allclose(valid[0], expected_valid)
  assert np.abs(np.asarray(image[0]) - expected).mean() < 0.01
  assert not np.asarray(image[0])[expected.sum(-1) == 0].any()  # Padding stays zero.


def test_a_flipped_window_mirrors_the_content_only():
  sources = _padded(_photo(), 160)[None]
  window = np.array([[10, 5, 120, 80]], np.float32)
  plain, valid = finetune.resample(sources, window, np.zeros(1, bool), 64)
  flipped, _ = finetune.resample(sources, window, np.ones(1, bool), 64)
  np.testing.assert_allclose(flipped, tta.flip_canvas(plain, valid), atol=1e-6)


def test_drawn_views_keep_boxes_on_the_same_content():
  # A photo that is bright only inside its box: after any crop and flip, the box drawn in the
  # view's frame must cover the bright pixels of the rendered view.
  h, w = 100, 150
  box = np.array([0.3, 0.2, 0.7, 0.9], np.float32)
  photo = np.zeros((h, w, 3), np.uint8)
  photo[int(box[1] * h):int(box[3] * h), int(box[0] * w):int(box[2] * w)] = 255
  n = 16
  boxes = np.zeros((n, 4, 4), np.float32)
  boxes[:, 0] = box
  mask = np.zeros((n, 4), bool)
  mask[:, 0] = True
  pairs = np.tile(np.array([[box, [0.0, 0.0, 1.0, 1.0]]], np.float32), (n, 10, 1, 1))
  weights = np.full((n, 10), 0.6, np.float32)
  windows, flips, views = finetune.draw_views(
      np.random.default_rng(0), boxes, mask, pairs, weights,
      np.tile([[h, w]], (n, 1)).astype(np.float32), crop_probability=0.5)
  assert flips.any() and not flips.all()
  images, valid = finetune.resample(np.tile(_padded(photo, 160)[None], (n, 1, 1, 1)),
                                    windows, flips, 64)
  cropped = np.any(windows != [[0, 0, w, h]], axis=1)
  assert cropped.any() and not cropped.all()
  for i in range(n):
    vh, vw = np.round(np.asarray(valid[i]) * 64).astype(int)
    x1, y1, x2, y2 = views["boxes"][i, 0] * [vw, vh, vw, vh]
    bright = np.argwhere(np.asarray(images[i]).mean(-1) > 0.9)
    assert bright.size
    assert bright[:, 0].min() >= y1 - 1.5 and bright[:, 0].max() <= y2 + 0.5
    assert bright[:, 1].min() >= x1 - 1.5 and bright[:, 1].max() <= x2 + 0.5
    # The pair holding the whole photo survives only the views that keep the whole photo.
    assert (views["pair_weights"][i] > 0).all() == (not cropped[i])
  np.testing.assert_allclose(views["pair_boxes"][:, :, 0],
                             np.broadcast_to(views["boxes"][:, :1], (n, 10, 4)), atol=1e-6)


def test_colour_jitter_leaves_the_padding_black_and_stays_in_range():
  image, valid = finetune.resample(_padded(_photo(), 160)[None],
                                   np.array([[0, 0, 140, 90]], np.float32),
                                   np.zeros(1, bool), 64)
  jittered = np.asarray(finetune.colour_jitter(image, valid, np.array([[1.0, 1.0, 0.0]])))
  assert jittered.min() >= 0 and jittered.max() <= 1
  assert not jittered[0, 42:].any()  # Rows past the content (64 * 90 / 140 = 41).
  assert np.abs(jittered - np.asarray(image)).mean() > 0.01


def test_colour_jitter_ranges_are_the_input_pipelines():
  defaults = inspect.signature(finetune.colour_jitter).parameters
  augment = input_pipeline.Augmentation()
  assert defaults["brightness_delta"].default == augment.brightness_delta
  assert defaults["contrast"].default == augment.contrast_range
  assert defaults["saturation"].default == augment.saturation_range
