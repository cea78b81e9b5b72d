"""Cropping photos with a trained model: the `Cropper` API and `main --mode=crop`.

  python -m procrop_jax.main --config=configs/default.py --workdir=workdirs/default --mode=crop \
      --config.crop.input_dir=/path/to/photos

writes, per photo, `<stem>.json` (the top crops in pixels with their scores) and
`<stem>_crop.jpg` (the best crop) under WORKDIR/crops. A photo that cannot be read is reported
and skipped; the others are still cropped.

Free cropping takes the model's proposals, best first, with greedy non-maximum suppression so
that the top-k are distinct. With `aspect_ratio` (width / height), candidate boxes of exactly that
ratio are laid on a grid of sizes and positions and the model scores them with its given-box
decoder path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image
import tqdm

from procrop_jax import input_pipeline
from procrop_jax import metrics
from procrop_jax import train
from procrop_jax.cad import generate

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Crop:
  """A crop in pixels of the (EXIF-upright) photo: [x1, y1, x2, y2], and its score in [0, 1]."""
  box: tuple[float, float, float, float]
  score: float


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float,
                        top_k: int) -> np.ndarray:
  """Indices of up to top_k boxes, best first, none overlapping a kept one above the threshold."""
  order = np.argsort(-scores, kind="stable")
  ious = metrics.box_iou(boxes, boxes)
  kept: list[int] = []
  for i in order:
    if all(ious[i, j] <= iou_threshold for j in kept):
      kept.append(int(i))
      if len(kept) == top_k:
        break
  return np.array(kept, np.int64)


def aspect_candidates(aspect_ratio: float, image_hw: tuple[int, int], *,
                      scales: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5),
                      positions: int = 5) -> np.ndarray:
  """Normalised [x1, y1, x2, y2] boxes whose pixel width / height is exactly aspect_ratio."""
  height, width = image_hw
  if aspect_ratio <= 0:
    raise ValueError(f"aspect_ratio must be > 0 (width / height), got {aspect_ratio}.")
  # The largest box of that ratio inside the photo, in pixels.
  full_w = min(width, height * aspect_ratio)
  full_h = full_w / aspect_ratio
  boxes = []
  for scale in scales:
    w, h = full_w * scale, full_h * scale
    for fy in np.linspace(0.0, 1.0, positions):
      for fx in np.linspace(0.0, 1.0, positions):
        x1, y1 = fx * (width - w), fy * (height - h)
        boxes.append((x1 / width, y1 / height, (x1 + w) / width, (y1 + h) / height))
  return np.unique(np.array(boxes, np.float32), axis=0)


def load_photo(path: str | os.PathLike[str]) -> np.ndarray:
  """An upright RGB uint8 photo; raises ValueError naming the file if it cannot be read."""
  try:
    return generate.load_photo(path, max_side=None)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


class Cropper:
  """Proposes scored crops for photos with the latest (or best) checkpoint of a run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, best: bool = False):
    self.config = config
    self.trainer = train.Trainer(config, workdir)
    manager = (train.BestCheckpoint(workdir, config.eval.best_metric).manager if best
               else train.create_checkpoint_manager(workdir, config))
    if manager.latest_step() is None:
      raise FileNotFoundError(f"No checkpoint in {manager.directory}: train first "
                              "(--mode=train with this workdir).")
    self.trainer.state, _ = train.restore_state(manager, self.trainer.abstract_state)
    self.step = int(self.trainer.state["step"])
    self.retriever = None
    references = self.trainer.references
    if references is not None:
      from procrop_jax.retrieval import neighbors  # pylint: disable=g-import-not-at-top
      self.retriever = neighbors.Retriever(references.database, references.extractor,
                                           k=config.model.num_references)
    self._data_size = self.trainer.mesh.shape["data"]

  def _batch(self, photo: np.ndarray, boxes: np.ndarray | None) -> dict[str, np.ndarray]:
    canvas, valid_hw = input_pipeline.to_canvas(photo, self.config.data.image_size)
    n = self._data_size  # The batch is split over the data axis: repeat the photo to fill it.
    batch = {"image": np.repeat(canvas[None], n, 0), "image_valid_hw": np.repeat(valid_hw[None], n, 0)}
    if boxes is not None:
      batch["boxes"] = np.repeat(boxes[None], n, 0)
    if self.retriever is not None:
      batch["reference_tokens"] = self.retriever(batch["image"][:1], batch["image_valid_hw"][:1])[
          "reference_tokens"].repeat(n, 0)
    return batch

  def crop(self, photo: np.ndarray, *, top_k: int = 5, nms_iou: float = 0.7,
           aspect_ratio: float | None = None) -> list[Crop]:
    """The top_k crops of an uint8 [H, W, 3] photo, best first."""
    height, width = photo.shape[:2]
    given = aspect_candidates(aspect_ratio, (height, width)) if aspect_ratio else None
    outputs = jax.device_get(self.trainer.predict(
        self.trainer.device_batch(self._batch(photo, given)), given is not None))
    boxes = outputs["boxes"][0] if given is None else given
    scores = np.asarray(outputs["scores"][0], np.float64)
    to_px = np.array([width, height, width, height], np.float64)
    boxes_px = np.asarray(boxes, np.float64) * to_px
    keep = non_max_suppression(boxes_px, scores, iou_threshold=nms_iou, top_k=top_k)
    return [Crop(tuple(float(v) for v in boxes_px[i]), float(scores[i])) for i in keep]


def _input_paths(input_dir: str) -> list[pathlib.Path]:
  if not input_dir:
    from procrop_jax.cad import sources  # pylint: disable=g-import-not-at-top
    return [pathlib.Path(p) for p in sources.skimage_photo_paths()]
  root = pathlib.Path(input_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"config.crop.input_dir={input_dir!r} is not a directory.")
  return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def crop_folder(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`main --mode=crop`: crops every photo of config.crop.input_dir into WORKDIR/crops."""
  crop_config = config.crop
  paths = _input_paths(crop_config.input_dir)
  if not paths:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in "
                            f"{crop_config.input_dir!r}.")
  output_dir = pathlib.Path(crop_config.output_dir or os.path.join(workdir, "crops"))
  output_dir.mkdir(parents=True, exist_ok=True)
  cropper = Cropper(config, workdir)
  failures: dict[str, str] = {}
  written = 0
  for path in tqdm.tqdm(paths, desc=f"Cropping -> {output_dir}", unit="photo"):
    try:
      photo = load_photo(path)
    except ValueError as e:
      failures[str(path)] = str(e)
      logging.warning("Skipping %s", e)
      continue
    crops = cropper.crop(photo, top_k=crop_config.top_k, nms_iou=crop_config.nms_iou,
                         aspect_ratio=crop_config.aspect_ratio or None)
    record = {"image": str(path), "image_size": list(photo.shape[:2]), "step": cropper.step,
              "crops": [dataclasses.asdict(c) for c in crops]}
    (output_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=2))
    x1, y1, x2, y2 = (int(round(v)) for v in crops[0].box)
    Image.fromarray(photo[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]).save(
        output_dir / f"{path.stem}_crop.jpg", quality=92)
    written += 1
  summary = {"cropped": written, "failed": failures, "output_dir": str(output_dir)}
  print(f"Cropped {written} of {len(paths)} photos into {output_dir}"
        + (f"; {len(failures)} failed: " + "; ".join(failures.values()) if failures else ""),
        flush=True)
  return summary
