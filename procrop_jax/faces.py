"""Faces found offline, to become keep regions (keep.py) so that crops keep people whole.

The detector is OpenCV's frontal-face Haar cascade `haarcascade_frontalface_alt2.xml`, read
from the `opencv-python-headless` wheel (BSD/Apache-2.0 licensed, shipped in the package's
`cv2/data`): nothing is downloaded at run time and no TensorFlow is needed. Why this one and not
a BlazeFace network in the model's jitted pass (experiments/README.md, "Faces", has the
figures):

- Small faces. BlazeFace's short-range model sees the photo at 128 x 128 px (the full-range one
  at 192 x 192), where a face of 2-5% of the short side is 3-10 px, below what it finds. The
  cascade runs on the photo at `DETECT_SIDE` px (1024 x 683 for a 3:2 photo) and finds faces
  of its 20 px window and up: from about 3% of the short side (tests/test_faces.py pastes a
  4% face; 2.3-2.7% ones were missed).
- False alarms. `alt2` raised none on scikit-image's photos without faces, where the `default`
  cascade took six coins for faces.
- Cost, its weak side: 0.2-0.5 s per photo on 2 busy CPU cores, many times the shipped model's
  pass. It runs in the threads that decode photos (OpenCV releases the GIL), overlapping the
  model, but on two cores that does not hide it. `--face-side` trades small faces for speed.
  A BlazeFace module in the jitted pass would cost little but miss the small faces that FCDB's
  photos of people in scenes mostly hold: the follow-up if speed matters more.
It finds frontal faces only: profiles and faces turned away are not protected. Importing cv2
adds about 0.2 s to the command's start-up.

OpenCV 5 dropped the cascades from its main module: the dependency is pinned below 5.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
from PIL import Image

CASCADE = "haarcascade_frontalface_alt2.xml"
# The photo's longer side as the detector sees it (smaller photos are not enlarged): faces of
# MIN_FACE px there are 2.9% of a 3:2 photo's short side (1024 x 683).
DETECT_SIDE = 1024
MIN_FACE = 20  # The cascade's own window: it finds nothing smaller.
SCALE_STEP = 1.1  # Between the scales searched: 1.15 is faster but missed a 4% face.
NEIGHBOURS = 5  # Overlapping detections a face needs: fewer false alarms, fewer small faces.
# A keep region is the face box grown by these fractions of its size: the cascade's box runs
# from the brows to the mouth; hair and chin need room above and below.
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_SIDES = 0.45, 0.3, 0.15


class FaceDetector:
  """Frontal faces of photos: `detect(image) -> [F, 4]` pixel boxes, largest first."""

  def __init__(self, *, detect_side: int = DETECT_SIDE, min_face: int = MIN_FACE,
               neighbours: int = NEIGHBOURS):
    self.detect_side = detect_side
    self.min_face = min_face
    self.neighbours = neighbours
    self._local = threading.local()  # A cascade per thread: detectMultiScale is not reentrant.
    self._cascade()  # Fails here, not in a worker thread, if the file is missing.

  def _cascade(self) -> cv2.CascadeClassifier:
    cascade = getattr(self._local, "cascade", None)
    if cascade is None:
      cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
      if cascade.empty():
        raise FileNotFoundError(f"OpenCV's {CASCADE} is missing from {cv2.data.haarcascades}")
      self._local.cascade = cascade
    return cascade

  def detect(self, image: Image.Image) -> np.ndarray:
    """Faces [F, 4] ([x1, y1, x2, y2] float pixels of the upright photo), largest first."""
    gray = image.convert("L")
    scale = min(1.0, self.detect_side / max(gray.size))
    if scale < 1.0:
      gray = gray.resize((max(round(gray.width * scale), 1), max(round(gray.height * scale), 1)),
                         Image.Resampling.BILINEAR)
    # No histogram equalisation: a large plain background stretches it and hides small faces.
    pixels = np.asarray(gray)
    found = self._cascade().detectMultiScale(
        pixels, scaleFactor=SCALE_STEP, minNeighbors=self.neighbours,
        minSize=(self.min_face, self.min_face))
    boxes = np.asarray(found, np.float64).reshape(-1, 4) / scale
    boxes[:, 2:] += boxes[:, :2]
    return boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]), kind="stable")]


def keep_regions(faces: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Faces [F, 4] grown by the margins for hair and chin, clipped to the (width, height) photo."""
  faces = np.asarray(faces, np.float64).reshape(-1, 4)
  w, h = faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1]
  grown = np.stack([faces[:, 0] - MARGIN_SIDES * w, faces[:, 1] - MARGIN_TOP * h,
                    faces[:, 2] + MARGIN_SIDES * w, faces[:, 3] + MARGIN_BOTTOM * h], axis=1)
  width, height = size
  return np.clip(grown, 0, [width, height, width, height])
