"""Cropping photos with a trained run: the Cropper API and --mode=crop."""

import json

import numpy as np
import pytest
from PIL import Image

from procrop_jax import crop


def test_aspect_candidates_have_exactly_the_requested_ratio_and_fit_the_photo():
  boxes = crop.aspect_candidates(16 / 9, (480, 640))
  px = boxes * np.array([640, 480, 640, 480])
  ratios = (px[:, 2] - px[:, 0]) / (px[:, 3] - px[:, 1])
  np.testing.assert_allclose(ratios, 16 / 9, rtol=1e-4)
  assert boxes.min() >= -1e-6 and boxes.max() <= 1 + 1e-6
  with pytest.raises(ValueError, match="aspect_ratio"):
    crop.aspect_candidates(0.0, (10, 10))


def test_nms_keeps_the_best_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9.5], [20, 20, 30, 30]], np.float64)
  keep = crop.non_max_suppression(boxes, np.array([0.5, 0.9, 0.1]), iou_threshold=0.7, top_k=5)
  assert keep.tolist() == [1, 2]


@pytest.mark.slow
def test_crop_mode_crops_good_photos_and_reports_a_corrupt_one(tiny_config,
                                                              tiny_trained_workdir, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.crop.output_dir = str(tmp_path / "crops")
  run = str(tiny_trained_workdir)
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (60, 90, 3), np.uint8)).save(photos / "wide.jpg")
  Image.fromarray(rng.integers(0, 255, (90, 50), np.uint8)).save(photos / "gray.png")
  (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  config.crop.input_dir = str(photos)
  config.crop.top_k = 3
  summary = crop.crop_folder(config, run)

  assert summary["cropped"] == 2
  assert list(summary["failed"]) == [str(photos / "broken.jpg")]
  assert "broken.jpg" in summary["failed"][str(photos / "broken.jpg")]
  record = json.loads((tmp_path / "crops" / "wide.json").read_text())
  assert record["image_size"] == [60, 90] and 1 <= len(record["crops"]) <= 3
  scores = [c["score"] for c in record["crops"]]
  assert scores == sorted(scores, reverse=True)
  for c in record["crops"]:
    x1, y1, x2, y2 = c["box"]
    assert 0 <= x1 < x2 <= 90 + 1e-3 and 0 <= y1 < y2 <= 60 + 1e-3
  assert (tmp_path / "crops" / "gray_crop.jpg").exists()

  # Aspect-constrained: every crop has the requested width / height.
  cropper = crop.Cropper(config, run)
  photo = crop.load_photo(photos / "wide.jpg")
  for c in cropper.crop(photo, top_k=3, aspect_ratio=1.0):
    x1, y1, x2, y2 = c.box
    assert abs((x2 - x1) / (y2 - y1) - 1.0) < 1e-3
