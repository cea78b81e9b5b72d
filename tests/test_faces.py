"""The face detector: finds the astronaut's face, none where there is no face."""

import numpy as np
from PIL import Image
from skimage import data

from procrop_jax import faces


def test_finds_the_astronauts_face():
  found = faces.FaceDetector().detect(Image.fromarray(data.astronaut()))
  assert len(found) == 1
  x1, y1, x2, y2 = found[0]
  # Her face lies about x 180-270, y 70-160 of the 512 x 512 photo.
  assert 160 < x1 < 200 and 50 < y1 < 90 and 250 < x2 < 290 and 140 < y2 < 180


def test_finds_a_small_face_in_a_large_photo():
  # The astronaut's face shrunk to about 4% of a 1500 x 1000 photo's short side.
  photo = Image.new("RGB", (1500, 1000), (120, 130, 140))
  face = Image.fromarray(data.astronaut()).resize((220, 220))  # Her face: ~40 of 220 px,
  photo.paste(face, (900, 500))  # 4% of the short side.
  found = faces.FaceDetector().detect(photo)
  assert len(found) == 1 and 950 < found[0][0] < 1000 and 510 < found[0][1] < 550


def test_finds_no_face_in_a_cup_of_coffee_or_a_gradient():
  detector = faces.FaceDetector()
  assert len(detector.detect(Image.fromarray(data.coffee()))) == 0
  gradient = np.tile(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
  assert len(detector.detect(Image.fromarray(gradient))) == 0


def test_keep_regions_add_room_for_hair_and_chin_inside_the_photo():
  regions = faces.keep_regions(np.array([[10.0, 10.0, 110.0, 110.0]]), (200, 150))
  x1, y1, x2, y2 = regions[0]
  assert x1 < 10 and y1 == 0 and x2 > 110 and y2 > 110 and y2 <= 150
