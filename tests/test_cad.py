"""Tests of the CAD weak-label generator."""

import pathlib

import numpy as np
from PIL import Image
import pytest

from configs import default
from procrop_jax import cad
from procrop_jax import photos as photos_lib
from procrop_jax.cad import generate
from procrop_jax.cad import outpaint
from procrop_jax.datasets import annotation_files


def smooth_photo(height, width, seed):
  """A photo-like image: smooth gradients plus a little texture."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  channels = [127 + 100 * np.sin(x / rng.uniform(8, 20) + rng.uniform(0, 6))
              * np.cos(y / rng.uniform(8, 20)) for _ in range(3)]
  image = np.stack(channels, -1) + rng.normal(0, 4, (height, width, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(name="photos")
def fixture_photos(tmp_path):
  paths = []
  for i, (h, w) in enumerate([(60, 90), (80, 50)]):
    path = tmp_path / "photos" / f"photo {i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_photo(h, w, i)).save(path)
    paths.append(path)
  return paths


def test_plan_canvas_covers_the_configured_area_range():
  rng = np.random.default_rng(0)
  aspects = []
  for _ in range(300):
    h, w = rng.integers(50, 400, size=2)
    plan = cad.plan_canvas((int(h), int(w)), rng, min_area_fraction=0.3,
                           max_area_fraction=0.8)
    assert plan.canvas_h >= plan.top + h and plan.canvas_w >= plan.left + w
    assert plan.top >= 0 and plan.left >= 0
    assert 0.3 * 0.95 <= plan.area_fraction <= min(1.0, 0.8 * 1.05)
    aspects.append(plan.canvas_w / plan.canvas_h)
  assert min(aspects) < 0.8 and max(aspects) > 1.25  # Varied aspect ratios.


def test_pseudo_label_points_at_the_original_pixels(tmp_path, photos):
  out = tmp_path / "cad"
  report = cad.generate_cad(photos, out, variants_per_photo=3, workers=2, seed=1,
                            progress=False)
  assert report.written == 6 and not report.failed_photos
  ids = photos_lib.photo_ids(photos)
  assert ids == ["photo-0", "photo-1"]
  for path, photo_id in zip(photos, ids):
    original = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    h, w = original.shape[:2]
    for k in range(3):
      boxes, scores = annotation_files.parse_yxyx_lines(out / "annotations" / f"{photo_id}_{k}.txt")
      assert scores[0] == 5
      x1, y1, x2, y2 = boxes[0].astype(int)
      assert (x2 - x1, y2 - y1) == (w, h)
      canvas = np.asarray(Image.open(out / "images" / f"{photo_id}_{k}.jpg")).astype(
          np.float32)
      assert canvas.shape[0] * canvas.shape[1] >= h * w / 0.8 * 0.95
      inside = np.abs(canvas[y1:y2, x1:x2] - original).mean()
      assert inside < 3.0  # JPEG error only.
      # Three pixels off, the same comparison is clearly worse: the box is exact.
      sy, sx = (3 if y1 + 3 + h <= canvas.shape[0] else -3), 0
      if y1 + sy < 0:
        sy, sx = 0, (3 if x1 + 3 + w <= canvas.shape[1] else -3)
      if y1 + sy >= 0 and x1 + sx >= 0 and (sy or sx):
        shifted = canvas[y1 + sy:y2 + sy, x1 + sx:x2 + sx]
        if shifted.shape == original.shape:
          assert np.abs(shifted - original).mean() > 2 * inside + 3


def test_generation_is_restartable_and_deterministic(tmp_path, photos):
  out = tmp_path / "cad"
  cad.generate_cad(photos, out, variants_per_photo=2, workers=1, progress=False)
  files = sorted((out / "images").glob("*.jpg"))
  before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
  (out / "annotations" / "photo-1_1.txt").unlink()  # An interrupted variant.
  report = cad.generate_cad(photos, out, variants_per_photo=2, workers=2, progress=False)
  assert report.written == 1 and report.kept == 3
  for p, (mtime, data) in before.items():
    if p.stem != "photo-1_1":
      assert p.stat().st_mtime_ns == mtime  # Kept, not rewritten.
    assert p.read_bytes() == data  # The redone variant is the same image.
  assert not list(out.rglob("*.tmp"))


def test_a_folder_is_completed_only_with_the_parameters_it_was_begun_with(tmp_path, photos):
  out = tmp_path / "cad"
  cad.generate_cad(photos, out, variants_per_photo=2, progress=False)
  with pytest.raises(generate.GenerationMismatchError, match="delete it"):
    cad.generate_cad(photos, out, variants_per_photo=2, seed=1, progress=False)
  with pytest.raises(generate.GenerationMismatchError):  # The third variants would stay.
    cad.generate_cad(photos, out, variants_per_photo=1, progress=False)
  report = cad.generate_cad(photos, out, variants_per_photo=3, progress=False)
  assert (report.kept, report.written) == (4, 2)
  # A folder begun from one named source is not completed from another.
  cad.generate_cad(str(tmp_path / "photos"), tmp_path / "named", variants_per_photo=1,
                   progress=False)
  with pytest.raises(generate.GenerationMismatchError, match='"source": "skimage"'):
    cad.generate_cad("skimage", tmp_path / "named", variants_per_photo=1, progress=False)


def test_unreadable_photo_is_skipped(tmp_path, photos):
  bad = tmp_path / "photos" / "bad.jpg"
  bad.write_bytes(b"not a jpeg")
  report = cad.generate_cad([*photos, bad], tmp_path / "cad", variants_per_photo=1,
                            progress=False)
  assert report.failed_photos == [str(bad)] and report.written == 2


def _cad_data_config(tmp_path, manual_dir):
  return {"dataset": "procrop_cad", "builder_config": "default",
          "data_dir": str(tmp_path / "tfds"), "manual_dir": str(manual_dir)}


def test_failed_photos_are_reported_and_block_the_build_unless_allowed(tmp_path, photos):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from procrop_jax.datasets import prepare  # pylint: disable=g-import-not-at-top
  bad = tmp_path / "photos" / "bad.jpg"
  bad.write_bytes(b"not a jpeg")
  out = tmp_path / "cad"
  report = cad.generate_cad([*photos, bad], out, variants_per_photo=1, progress=False)
  assert list(report.errors) == [str(bad)]
  assert report.failure_summary().startswith("1 of 3 photos failed (bad.jpg: ")
  assert generate.read_failures(out)["errors"] == report.errors

  # The builder refuses the partial set, naming what failed and how to go on.
  builder = tfds.builder("procrop_cad", config="default", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(generate.IncompleteCADError,
                     match=r"1 of 3 photos failed \(bad.jpg: .*allow_failures"):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(out)))
  assert not builder.is_prepared()

  # So does prepare (it generates from the folder, the bad photo fails again) ...
  cad_config = {**default.get_config().cad.to_dict(), "source": str(tmp_path / "photos"),
                "variants_per_photo": 1, "max_side": 1024}
  with pytest.raises(generate.IncompleteCADError, match="1 of 3 photos failed"):
    prepare.ensure_dataset(_cad_data_config(tmp_path, out), cad_config, seed=0)
  # ... unless the user allows it: then the set is built from the photos that worked.
  builder = prepare.ensure_dataset(_cad_data_config(tmp_path, out),
                                   {**cad_config, "allow_failures": True}, seed=0)
  assert builder.info.splits["train"].num_examples == 2


def test_a_run_where_every_photo_succeeds_clears_the_failure_record(tmp_path, photos):
  bad = tmp_path / "photos" / "bad.jpg"
  bad.write_bytes(b"not a jpeg")
  out = tmp_path / "cad"
  cad.generate_cad([*photos, bad], out, variants_per_photo=1, progress=False)
  with pytest.raises(generate.IncompleteCADError):
    generate.check_complete(out)
  report = cad.generate_cad(photos, out, variants_per_photo=1, progress=False)
  assert not report.errors and generate.read_failures(out) is None
  generate.check_complete(out)


def test_outpainted_seam_is_soft():
  photo = smooth_photo(80, 100, 3)
  canvas = outpaint.ReflectBlurOutPainter()(photo, canvas_hw=(140, 170),
                                           offset_yx=(30, 40),
                                           rng=np.random.default_rng(0))
  assert canvas.shape == (140, 170, 3) and canvas.dtype == np.uint8
  np.testing.assert_array_equal(canvas[30:110, 40:140], photo)
  c = canvas.astype(np.float32)
  inner = np.abs(np.diff(c[30:110, 41:139], axis=1)).mean()
  seams = [np.abs(c[30:110, 40] - c[30:110, 39]).mean(),  # Left edge.
           np.abs(c[30:110, 139] - c[30:110, 140]).mean(),  # Right edge.
           np.abs(c[30, 40:140] - c[29, 40:140]).mean(),  # Top edge.
           np.abs(c[109, 40:140] - c[110, 40:140]).mean()]  # Bottom edge.
  assert max(seams) <= 1.5 * inner + 2.0
  # Far from the photo the mirror is blurred and its detail replaced by noise as strong.
  far = np.abs(np.diff(c[:5, :], axis=1)).mean()
  assert 0.5 * inner < far < 2 * inner
  blurred = outpaint.ReflectBlurOutPainter(detail=False)(
      photo, canvas_hw=(140, 170), offset_yx=(30, 40), rng=np.random.default_rng(0))
  assert np.abs(np.diff(blurred[:5, :].astype(np.float32), axis=1)).mean() < 0.5 * far


def test_custom_outpainter_is_used_and_cannot_move_the_photo(tmp_path, photos):
  class Grey(outpaint.OutPainter):

    def __call__(self, photo, *, canvas_hw, offset_yx, rng):
      return np.full((*canvas_hw, 3), 128, np.uint8)  # Even overwrites the photo.

  out = tmp_path / "cad"
  cad.generate_cad(photos[:1], out, variants_per_photo=1, outpainter=Grey(), progress=False)
  boxes, _ = annotation_files.parse_yxyx_lines(out / "annotations" / "photo-0_0.txt")
  x1, y1, x2, y2 = boxes[0].astype(int)
  canvas = np.asarray(Image.open(out / "images" / "photo-0_0.jpg")).astype(np.float32)
  original = np.asarray(Image.open(photos[0]).convert("RGB")).astype(np.float32)
  assert np.abs(canvas[y1:y2, x1:x2] - original).mean() < 3.0


def test_skimage_photos_ship_inside_the_package():
  import skimage.data  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(skimage.data.__file__).parent
  paths = photos_lib.skimage_photo_paths()
  assert len(paths) == len(photos_lib.SKIMAGE_PHOTOS) >= 8
  for path in paths:
    assert path.parent == root and path.is_file()  # Never pooch's download cache.
