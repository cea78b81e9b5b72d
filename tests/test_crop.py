"""Cropping without a model: aspect geometry, argument parsing, listing, decoding and writing."""

import io
import os
import pathlib

import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageCms
import pytest

from procrop_jax import aspect
from procrop_jax import crop
from procrop_jax import cropper as cropper_lib
from procrop_jax import faces as faces_lib
from procrop_jax import photos


def test_aspect_crops_have_the_ratio_to_within_a_pixel_and_fit_any_photo():
  rng = np.random.default_rng(0)
  for _ in range(300):
    width, height = (int(v) for v in rng.integers(1, 2000, 2))
    ratio = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
    boxes = aspect.grid_candidates(ratio, (width, height))
    assert 1 <= len(boxes) <= aspect.DENSE.grid_count
    assert len({tuple(b) for b in boxes}) == len(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 3] <= height).all() and (w >= 1).all() and (h >= 1).all()
    # Feasible where a 1-pixel-thick box of the ratio fits the photo.
    if min(width, height * ratio) >= max(1, ratio) and min(height, width / ratio) >= max(
        1, 1 / ratio):
      assert np.all(np.abs(w - h * ratio) <= 1), (width, height, ratio)
      assert np.all(np.abs(h - w / ratio) <= 1), (width, height, ratio)


def test_snap_box_keeps_the_centre_and_stays_inside():
  assert aspect.snap_box((10.4, 10.6, 50.2, 40.5), (100, 80)) == (10, 11, 50, 41)
  assert aspect.snap_box((-5, -5, 200, 200), (100, 80)) == (0, 0, 100, 80)
  x1, y1, x2, y2 = aspect.snap_box((0, 0, 100, 80), (100, 80), 16 / 9)
  assert (x2 - x1, y2 - y1) == (100, 56)


def test_nms_keeps_the_best_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9.5], [20, 20, 30, 30]], np.float64)
  keep = cropper_lib.non_max_suppression(boxes, np.array([0.5, 0.9, 0.1]), iou_threshold=0.7,
                                         top_k=5)
  assert keep.tolist() == [1, 2]


@pytest.mark.parametrize("text, label, ratio", [
    ("16:9", "16x9", 16 / 9), ("4x5", "4x5", 0.8), ("1.5", "1.5", 1.5), (2.0, "2", 2.0)])
def test_parse_aspect(text, label, ratio):
  target = cropper_lib.parse_aspect(text)
  assert target.label == label and target.ratio == pytest.approx(ratio)


@pytest.mark.parametrize("text", ["0:1", "1:0", "abc", "-1", "0", "nan"])
def test_parse_aspect_rejects_nonsense(text):
  with pytest.raises(ValueError, match="aspect"):
    cropper_lib.parse_aspect(text)


def test_parse_size():
  assert cropper_lib.parse_size("1080x1350") == cropper_lib.Target("1080x1350", 0.8, (1080, 1350))
  with pytest.raises(ValueError, match="size"):
    cropper_lib.parse_size("0x10")


@pytest.mark.parametrize("args, message", [
    ([], "no inputs"), (["x.jpg", "--aspect", "0:1"], "aspect '0:1'"),
    (["x.jpg", "--aspect", "abc"], "aspect 'abc'"), (["x.jpg", "--bogus"], "--bogus"),
    (["x.jpg", "--best"], "--best needs --workdir"),
    (["x.jpg", "--aspect", "1:1", "--aspect", "1:1"], "twice"),
    (["x.jpg", "--canvas-size", "100"], "multiple of 32")])
def test_usage_errors_exit_2_with_one_line(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    crop.main(args)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1


def test_missing_default_model_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
  from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(model_zoo, "available", lambda: [])
  Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
  assert crop.main([str(tmp_path / "a.jpg"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip()
  assert "default model" in err and "--workdir" in err and len(err.splitlines()) == 1


def test_workdir_without_a_run_is_exit_2(tmp_path, capsys):
  Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
  code = crop.main([str(tmp_path / "a.jpg"), "--workdir", str(tmp_path), "--out",
                    str(tmp_path / "out")])
  assert code == 2 and "config.json" in capsys.readouterr().err


def test_listing_mirrors_the_tree_and_reports_what_is_not_a_photo(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for name in ("a/IMG_0001.jpg", "b/IMG_0001.jpg", "b/sub/x.PNG", "b/notes.txt",
               "out/old_free_1.jpg"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
  (tmp_path / "empty").mkdir()
  inputs, problems = photos.list_inputs(
      ["a/IMG_0001.jpg", "b", "a/*.jpg", "empty", "missing.jpg", "*.none", ".", "-"],
      exclude="out")
  rel = [i.relative.as_posix() for i in inputs]
  assert rel == ["a/IMG_0001.jpg", "b/IMG_0001.jpg", "b/sub/x.PNG", "stdin"]
  assert [p[0] for p in problems] == ["empty", "missing.jpg", "*.none"]
  bases = crop._output_bases(inputs + [photos.Input("a/IMG_0001.png",  # pylint: disable=protected-access
                                                    pathlib.PurePath("a/IMG_0001.png"))])
  assert len({str(b) for b in bases}) == len(bases)


def _jpeg_bytes(size=(64, 48), **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), np.uint8)).save(
      buf, format="JPEG", **kwargs)
  return buf.getvalue()


def test_bad_files_each_get_a_precise_reason(tmp_path):
  good = _jpeg_bytes()
  cases = {
      "zero.jpg": (b"", "empty file"),
      "text.jpg": (b"hello", "not an image"),
      "truncated.jpg": (good[:len(good) // 2], "truncated"),
  }
  for name, (data, _) in cases.items():
    (tmp_path / name).write_bytes(data)
  for name, (_, reason) in cases.items():
    with pytest.raises(photos.PhotoError, match=reason):
      photos.read_photo(str(tmp_path / name))
  with pytest.raises(photos.PhotoError, match="no such file"):
    photos.read_photo(str(tmp_path / "missing.jpg"))
  with pytest.raises(photos.PhotoError, match="folder"):
    photos.read_photo(str(tmp_path))
  (tmp_path / "big.jpg").write_bytes(good)
  with pytest.raises(photos.PhotoError, match="decompression bomb"):
    photos.read_photo(str(tmp_path / "big.jpg"), max_pixels=1000)


def test_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
  (tmp_path / "big.png").write_bytes(b"")
  Image.new("L", (12000, 9000)).save(tmp_path / "big.png")  # 108 MP, compresses to little.
  loaded = []
  monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
  with pytest.raises(photos.PhotoError, match="108.0 MP exceeds"):
    photos.read_photo(str(tmp_path / "big.png"))
  assert not loaded


@pytest.mark.parametrize("mode, fmt", [
    ("RGB", "JPEG"), ("CMYK", "JPEG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
    ("I;16", "PNG"), ("RGBA", "WEBP"), ("LA", "PNG"), ("1", "PNG")])
def test_every_common_mode_is_cropped_in_its_own_format(tmp_path, mode, fmt):
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8))
  if mode == "I;16":
    image = Image.fromarray(rng.integers(0, 65535, (30, 40), np.uint16))
  elif mode != "RGB":
    image = image.convert(mode)
  path = tmp_path / f"in.{fmt.lower()}"
  image.save(path, format=fmt)
  photo = photos.read_photo(str(path))
  canvas, valid_hw = photos.canvas(photo.image, 32)
  assert canvas.shape == (32, 32, 3) and canvas.dtype == np.float32
  np.testing.assert_allclose(valid_hw, [0.75, 1.0])
  out = tmp_path / f"out{photos.suffix(photo.format)}"
  photos.save_crop(photo, (5, 5, 25, 20), out, fmt=photo.format, size=(16, 12))
  with Image.open(out) as written:
    assert written.format == fmt and written.size == (16, 12)


def test_crops_keep_the_icc_profile_and_reset_the_orientation(tmp_path):
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotated 90 degrees: stored 64x48, shown 48x64.
  exif[0x010F] = "TestCam"
  (tmp_path / "in.jpg").write_bytes(_jpeg_bytes((64, 48), icc_profile=icc,
                                                exif=exif.tobytes()))
  photo = photos.read_photo(str(tmp_path / "in.jpg"))
  assert photo.size == (48, 64)
  photos.save_crop(photo, (0, 0, 48, 30), tmp_path / "out.jpg", fmt="JPEG")
  with Image.open(tmp_path / "out.jpg") as out:
    assert out.info["icc_profile"] == icc and out.size == (48, 30)
    assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "TestCam"
  assert not os.path.exists(tmp_path / ".out.jpg.tmp")


def test_upright_size_reads_the_header_with_its_orientation(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # Stored 64x48, shown 48x64.
  (tmp_path / "turned.jpg").write_bytes(_jpeg_bytes((64, 48), exif=exif.tobytes()))
  Image.new("RGB", (30, 20)).save(tmp_path / "plain.png")
  (tmp_path / "text.jpg").write_text("not an image")
  assert photos.upright_size(str(tmp_path / "turned.jpg")) == (48, 64)
  assert photos.upright_size(str(tmp_path / "plain.png")) == (30, 20)
  for source in (str(tmp_path / "text.jpg"), str(tmp_path / "missing.jpg"), photos.STDIN):
    assert photos.upright_size(source) is None  # Its decoding says why, later.


def test_the_first_photos_face_pass_is_prepared_while_the_model_loads(tmp_path, monkeypatch):
  """`procrop crop` starts the face pass of its first photo's canvas before loading the
  model (two cores: one loads, one compiles), then hands that detector to the cropper."""
  Image.new("RGB", (300, 200)).save(tmp_path / "a.jpg")
  warmed, given = [], []

  class Detector(faces_lib.FaceDetector):
    def warm_up(self, progress=None, shapes=None):
      warmed.append(shapes)

  monkeypatch.setattr(crop, "face_detector", lambda args: Detector(detect_side=args.face_side))

  def load_cropper(args, *, faces=None):
    given.append(faces)
    raise crop.UsageError("stop here")
  monkeypatch.setattr(crop, "load_cropper", load_cropper)
  assert crop.main([str(tmp_path / "a.jpg"), "--out", str(tmp_path / "out"),
                    "--face-side", "192"]) == 2
  assert warmed == [[(128, 192)]]  # The 3:2 landscape canvas at 192 px.
  assert isinstance(given[0], Detector)
  assert given[0].canvas_shape((300, 200)) == (128, 192)


@pytest.mark.parametrize("size, bucket, photo_hw", [
    ((600, 400), (256, 320), (213, 320)),  # 3:2 landscape: 320 x 256 instead of 320 x 320.
    ((400, 600), (320, 256), (320, 213)),  # Portrait.
    ((800, 600), (256, 320), (240, 320)),  # 4:3.
    ((1920, 1080), (192, 320), (180, 320)),  # 16:9.
    ((500, 420), (320, 320), (269, 320)),  # More than 3/4 of S (rounded up to 256).
    ((500, 500), (320, 320), (320, 320)),
    ((2000, 3), (192, 320), (1, 320)),  # Extremely thin: the smallest bucket.
])
def test_canvas_buckets_are_the_smallest_that_holds_the_photo(size, bucket, photo_hw):
  image = Image.new("RGB", size, (255, 255, 255))
  assert photos.canvas_shape(*size, 320, cropper_lib.CANVAS_BUCKETS) == (*bucket, *photo_hw)
  canvas, valid_hw = photos.canvas(image, 320, cropper_lib.CANVAS_BUCKETS)
  assert canvas.shape == (*bucket, 3)
  np.testing.assert_allclose(valid_hw, np.divide(photo_hw, bucket), rtol=1e-6)
  # The photo fills exactly its valid part; the rest is padding.
  h, w = photo_hw
  assert canvas[:h, :w].min() == 1.0 and canvas.sum() == h * w * 3
  assert photos.from_canvas(canvas, valid_hw).shape == (*photo_hw, 3)
  # Without buckets: the S x S canvas of training.
  assert photos.canvas(image, 320)[0].shape == (320, 320, 3)


def test_bucket_sides_are_multiples_of_the_stride_at_any_canvas_size():
  for size in range(32, 640, 32):
    for width in (size, size // 2, size // 3 + 1, 7):
      h, w, _, _ = photos.canvas_shape(width, size, size, cropper_lib.CANVAS_BUCKETS)
      assert h == size and w % cropper_lib.CANVAS_MULTIPLE == 0 and width * size / size <= w <= size


class _FakePredictor:
  image_size = 320

  def __init__(self, flexible_canvas, crop_canvas_size=0):
    self.flexible_canvas = flexible_canvas
    self.config = ml_collections.ConfigDict({"crop": {"canvas_size": crop_canvas_size}})


def test_canvas_size_and_buckets_need_a_model_without_retrieval():
  flexible = cropper_lib.Cropper(_FakePredictor(True), canvas_size=192)
  assert flexible.canvas_shape(600, 400) == (128, 192)
  unbucketed = cropper_lib.Cropper(_FakePredictor(True), layout="square")
  assert unbucketed.canvas_shape(600, 400) == (320, 320)
  with_retrieval = cropper_lib.Cropper(_FakePredictor(False), layout="orientation")
  assert with_retrieval.layout == "square"
  assert with_retrieval.canvas_shape(600, 400) == (320, 320)
  with pytest.raises(ValueError, match="retrieval"):
    cropper_lib.Cropper(_FakePredictor(False), canvas_size=192)
  with pytest.raises(ValueError, match="multiple of 32"):
    cropper_lib.Cropper(_FakePredictor(True), canvas_size=200)


@pytest.mark.parametrize("size, canvas_hw, photo_hw", [
    ((600, 400), (160, 192), (128, 192)),  # 3:2: as on its bucket.
    ((1920, 1080), (160, 192), (108, 192)),  # 16:9: the same canvas, more padding.
    ((500, 500), (160, 192), (160, 160)),  # Square: on the landscape canvas, a little smaller.
    ((400, 600), (192, 160), (192, 128)),  # Portrait: the canvas turned upright.
    ((300, 1200), (192, 160), (192, 48)),  # Very tall: fits by its height.
    ((1200, 150), (160, 192), (24, 192)),
])
def test_the_orientation_layout_puts_every_photo_on_one_of_two_canvases(size, canvas_hw,
                                                                        photo_hw):
  cropper = cropper_lib.Cropper(_FakePredictor(True), canvas_size=192, layout="orientation")
  assert cropper.canvas_shape(*size) == canvas_hw
  prepared = cropper.prepare(Image.new("RGB", size, (255, 255, 255)))
  canvas, valid_hw = prepared.canvas, prepared.valid_hw
  assert canvas.shape == (*canvas_hw, 3)
  assert canvas.sum() == photo_hw[0] * photo_hw[1] * 3  # The photo, fitted, at the top-left.
  np.testing.assert_allclose(valid_hw, np.divide(photo_hw, canvas_hw), rtol=1e-6)


def test_a_layout_comes_from_the_model_config_and_an_unknown_one_is_named():
  predictor = _FakePredictor(True)
  assert cropper_lib.Cropper(predictor).layout == "buckets"  # A config without the field.
  predictor.config.crop.canvas_layout = "orientation"
  assert cropper_lib.Cropper(predictor).layout == "orientation"
  assert cropper_lib.Cropper(predictor, layout="square").layout == "square"
  with pytest.raises(ValueError, match="layout='round'"):
    cropper_lib.Cropper(predictor, layout="round")


def test_a_model_config_sets_the_default_canvas_and_the_argument_wins():
  assert cropper_lib.Cropper(_FakePredictor(True, crop_canvas_size=256)).canvas_size == 256
  assert cropper_lib.Cropper(_FakePredictor(True, crop_canvas_size=256), canvas_size=192
                      ).canvas_size == 192
  assert cropper_lib.Cropper(_FakePredictor(True)).canvas_size == 320
  with pytest.raises(ValueError, match="config.crop.canvas_size"):
    cropper_lib.Cropper(_FakePredictor(False, crop_canvas_size=256))


def test_a_batch_of_mixed_canvas_shapes_is_refused():
  cropper = cropper_lib.Cropper(_FakePredictor(True))
  batch = [cropper.prepare(Image.new("RGB", size)) for size in ((600, 400), (400, 600))]
  with pytest.raises(ValueError, match="several shapes"):
    cropper._padded(batch, cropper.batch_size)  # pylint: disable=protected-access


def test_warm_up_faces_prepares_the_detectors_canvases_with_the_predictors_progress():
  class RecordingDetector(faces_lib.FaceDetector):
    def __init__(self):
      super().__init__()
      self.progress = []

    def warm_up(self, progress=None):
      self.progress.append(progress)

  predictor = _FakePredictor(True)
  predictor.progress = print
  detector = RecordingDetector()
  cropper_lib.Cropper(predictor, faces=detector).warm_up_faces()
  assert detector.progress == [print]
  cropper_lib.Cropper(predictor, faces=False).warm_up_faces()  # No detector: nothing to do.
