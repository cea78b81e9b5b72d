"""The seam probe: low-level statistics must not find the pseudo-label in generated canvases."""

import numpy as np
import pytest

from procrop_jax import photos
from procrop_jax.cad import outpaint
from procrop_jax.cad import seam_probe

# The probe may beat the trivial baseline (the mean training box) by at most this much IoU.
BOUND = 0.02


def probe(outpainter) -> seam_probe.ProbeResult:
  """The probe on 8 canvases of each of scikit-image's photos (72), left out photo by photo."""
  x, boxes, groups = seam_probe.generate_canvases(photos.skimage_photo_paths(), variants=8,
                                                  outpainter=outpainter, max_side=256)
  return seam_probe.evaluate(x, boxes, groups)


def test_the_probe_recovers_a_box_that_the_features_encode():
  rng = np.random.default_rng(0)
  centre = rng.uniform(0.3, 0.7, (60, 2))
  size = rng.uniform(0.3, 0.5, (60, 2))
  boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
  x = np.concatenate([boxes, rng.normal(size=(60, 20))], axis=1)  # The box, and distractors.
  result = seam_probe.evaluate(x, boxes, np.arange(60) % 6)
  assert result.probe_iou > 0.9 > result.baseline_iou


def test_profiles_are_per_strip_and_contrast_free():
  canvas = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
  p = seam_probe.profiles(canvas)
  assert p.shape == (2, 6, seam_probe.BINS)
  np.testing.assert_allclose(p.mean(-1), 1.0, atol=1e-3)


def test_the_default_outpainter_leaves_no_trace_the_probe_finds():
  result = probe(outpaint.ReflectBlurOutPainter())
  assert result.canvases == 8 * len(photos.skimage_photo_paths())
  assert result.advantage < BOUND, result


def test_the_probe_finds_the_blur_of_the_earlier_outpainter():
  # The bound means something only if the probe sees traces where there are some.
  result = probe(outpaint.ReflectBlurOutPainter(detail=False, grain=True))
  assert result.advantage > BOUND, result


def test_mirror_profiles_find_the_axis_of_a_reflected_fill():
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
  canvas = np.concatenate([photo[:, ::-1][:, -32:], photo], axis=1)  # Reflected at x = 32.
  columns, rows = seam_probe.mirror_profiles(canvas)
  axis_strip = 32 * seam_probe.BINS // canvas.shape[1]
  assert np.argmin(columns) == axis_strip
  assert columns[axis_strip] < 0.2 < rows.min()  # The rows of noise mirror nowhere.
