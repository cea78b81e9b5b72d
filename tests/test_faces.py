"""The face detector: finds the astronaut's face, none where there is no face."""

import concurrent.futures
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from procrop_jax import faces


def test_finds_the_astronauts_face():
  found = faces.FaceDetector().detect(Image.fromarray(data.astronaut()))
  assert len(found) == 1
  x1, y1, x2, y2 = found[0]
  # Her face lies about x 170-280, y 65-175 of the 512 x 512 photo (brows to chin).
  assert 150 < x1 < 190 and 45 < y1 < 85 and 260 < x2 < 300 and 155 < y2 < 195


def test_finds_a_small_face_in_a_large_photo():
  # The astronaut's face shrunk to about 4.7% of a 1500 x 1000 photo's short side.
  photo = Image.new("RGB", (1500, 1000), (120, 130, 140))
  face = Image.fromarray(data.astronaut()).resize((220, 220))  # Her face: ~47 of 220 px.
  photo.paste(face, (900, 400))
  found = faces.FaceDetector().detect(photo)
  assert len(found) == 1
  x1, y1, x2, y2 = found[0]  # In the photo's own pixels: about x 973-1020, y 428-476.
  assert 955 < x1 < 990 and 410 < y1 < 445 and 1000 < x2 < 1035 and 455 < y2 < 490


def test_five_canvas_shapes_bound_the_compiled_executables():
  detector = faces.FaceDetector()
  assert detector.canvas_shape((1500, 1000)) == (256, 384)  # 3:2 and longer: (height, width).
  assert detector.canvas_shape((1920, 1080)) == (256, 384)
  assert detector.canvas_shape((1000, 1500)) == (384, 256)
  assert detector.canvas_shape((1024, 768)) == (288, 384)  # 4:3 up to 3:2.
  assert detector.canvas_shape((1400, 1000)) == (288, 384)
  assert detector.canvas_shape((768, 1024)) == (384, 288)
  assert detector.canvas_shape((1100, 1000)) == (384, 384)  # Squarer than 4:3.
  assert detector.canvas_shape((1000, 1000)) == (384, 384)
  assert faces.FaceDetector(detect_side=192).canvas_shape((300, 200)) == (128, 192)
  assert faces.FaceDetector(detect_side=192).canvas_shape((400, 300)) == (160, 192)
  sizes = [(w, h) for w in range(100, 2000, 37) for h in range(100, 2000, 41)]
  shapes = {detector.canvas_shape(size) for size in sizes}
  assert len(shapes) == 5
  for width, height in sizes:  # Every photo fits its canvas at the full long side.
    rows, cols = detector.canvas_shape((width, height))
    assert min(rows / height, cols / width) >= 384 / max(width, height) - 1e-9


def test_warm_up_prepares_every_canvas_shape_once():
  detector = faces.FaceDetector(detect_side=192)
  assert detector.canvas_shapes() == [(128, 192), (160, 192), (192, 128), (192, 160),
                                      (192, 192)]
  lines = []
  detector.warm_up(progress=lines.append)
  assert "5 canvases" in lines[0] and lines[1].startswith("  ready in")
  assert set(detector._calls) == set(detector.canvas_shapes())  # pylint: disable=protected-access
  prepared = dict(detector._calls)  # pylint: disable=protected-access
  detector.warm_up()
  assert detector._calls == prepared  # pylint: disable=protected-access
  one = faces.FaceDetector(detect_side=192)
  lines = []
  one.warm_up(progress=lines.append, shapes=[(128, 192)])
  assert "1 of its canvases" in lines[0]
  assert list(one._calls) == [(128, 192)]  # pylint: disable=protected-access


def test_a_detector_side_that_is_not_a_multiple_of_32_is_refused():
  for side in (200, 400, 32):  # 400 = 16 x 25: the network's 1/32 maps would not line up.
    with pytest.raises(ValueError, match="multiple of 32"):
      faces.FaceDetector(detect_side=side)
  faces.FaceDetector(detect_side=416)


def test_finds_no_face_in_a_cup_of_coffee_or_a_gradient():
  detector = faces.FaceDetector()
  assert len(detector.detect(Image.fromarray(data.coffee()))) == 0
  gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
  assert len(detector.detect(Image.fromarray(gradient))) == 0


def test_keep_regions_add_room_for_hair_and_chin_inside_the_photo():
  regions = faces.keep_regions(np.array([[10.0, 10.0, 110.0, 110.0]]), (200, 150))
  x1, y1, x2, y2 = regions[0]
  assert x1 < 10 and y1 == 0 and x2 > 110 and y2 > 110 and y2 <= 150


def test_the_main_faces_are_those_near_the_largest_in_size():
  found = np.array([[0, 0, 100, 100], [200, 0, 260, 60], [300, 0, 340, 40], [400, 0, 410, 10]])
  assert faces.main_faces(found).tolist() == [True, True, False, False]
  assert faces.main_faces(np.zeros((0, 4))).tolist() == []


def test_threads_detecting_a_new_shape_together_agree():
  detector = faces.FaceDetector()
  photo = Image.fromarray(data.astronaut())
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    found = list(pool.map(detector.detect, [photo] * 4))
  assert all(np.array_equal(f, found[0]) for f in found) and len(found[0]) == 1
  assert set(detector._calls) == {(384, 384)}  # pylint: disable=protected-access


def test_a_later_process_reuses_the_kept_pass(tmp_path):
  code = ("import json, sys\n"
          "from PIL import Image\n"
          "from skimage import data\n"
          "from procrop_jax import faces, inference\n"
          "inference.use_compile_cache(sys.argv[1])\n"
          "found = faces.FaceDetector().detect(Image.fromarray(data.astronaut()))\n"
          "print(json.dumps(found.round(3).tolist()))\n")
  def run():
    return subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, check=True, timeout=300).stdout

  first = run()
  # The kept pass, compiled as exported passes are (exported_passes.compiler_options), finds
  # the face the plain jitted detector finds.
  plain = faces.FaceDetector().detect(Image.fromarray(data.astronaut()))
  np.testing.assert_allclose(json.loads(first), plain, atol=0.01)
  (kept,) = (tmp_path / "exported").glob("*.jaxexport")  # One canvas shape.
  written = kept.stat().st_mtime_ns
  assert run() == first and len(json.loads(first)) == 1
  assert kept.stat().st_mtime_ns == written  # Read back, not exported again.
