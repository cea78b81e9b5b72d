"""The schema every cropping builder produces, and the accounting of what a build kept.

One example is one image with zero or more scored crop boxes:

  image       JPEG, RGB, upright (EXIF orientation applied at build time)
  image_id    text, unique within the dataset
  image_size  int32 [2]        (height, width) of `image` in pixels
  boxes_px    float32 [N, 4]   x1, y1, x2, y2 in pixels of `image`
  boxes       float32 [N, 4]   the same, divided by (width, height, width, height)
  box_scores  float32 [N]      higher is better (GAICD's 1-5 mean opinion scores;
                               expert crops without a score get `DEFAULT_SCORE`)

Bad input never stops a build: an unreadable image or one without a usable box is
skipped and counted by reason (see `SKIP_REASONS`), a box that cannot be used is
dropped and counted, and an image in an unusual mode is converted to RGB and counted.
The counts are logged when a split is done and stored in the dataset's
`metadata.json` (`builder.info.metadata`, read back with `build_report`). A malformed
annotation file (wrong syntax, wrong field count, text where a number belongs) stops
the build with `annotation_files.AnnotationError`, which names the file and line.

The rest of a build is in image_files.py (decoding), annotation_files.py (annotation files and
box cleaning) and crop_builder.py (examples, the thread pool and the base builder).
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

# Expert crops (FCDB, FLMS) and CAD lines without a score: the top of GAICD's 1-5 scale,
# which is also what ProCrop's released CAD set assumes for a missing score.
DEFAULT_SCORE = 5.0

SKIP_REASONS = {
    "missing_file": "the annotation names an image that is not in the manual directory",
    "empty_file": "a zero-byte image file",
    "not_an_image": "a file that no image decoder recognises",
    "corrupt_image": "a truncated or otherwise undecodable image",
    "placeholder": "a near-blank white image, e.g. Flickr's 'photo is no longer available'",
    "too_small": "an image under 16 pixels on a side",
    "box_outside_image": "the (only usable) box lies outside the image",
    "box_zero_area": "the (only usable) box has zero or negative area",
    "no_valid_box": "no box is left after dropping the ignored ones",
    "missing_annotation": "an image without an annotation file",
}


class SkipExample(Exception):
  """Raised by the loaders for an example that is skipped; carries the reason."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


def features(*, with_pairs: bool = False) -> tfds.features.FeaturesDict:
  """The common feature spec of the cropping builders (`with_pairs`: rated crop pairs too)."""
  pairs = {
      "pair_boxes": tfds.features.Tensor(shape=(None, 2, 4), dtype=np.float32),
      "pair_votes": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
  } if with_pairs else {}
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "image_id": tfds.features.Text(),
      "image_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
      "boxes_px": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "box_scores": tfds.features.Tensor(shape=(None,), dtype=np.float32),
      **pairs,
  })


# ------------------------------------------------------------------------- counts


class BuildStats:
  """Counts what a split's generation skipped, dropped and converted, by reason."""

  def __init__(self, split: str):
    self.split = split
    self.entries = 0
    self.kept = 0
    self.skipped: collections.Counter[str] = collections.Counter()
    self.dropped_boxes: collections.Counter[str] = collections.Counter()
    self.converted: collections.Counter[str] = collections.Counter()
    self.skipped_ids: dict[str, list[str]] = collections.defaultdict(list)
    self._lock = threading.Lock()  # The builders load images on a few threads.

  def entry(self) -> None:
    with self._lock:
      self.entries += 1

  def keep(self, conversion: str | None) -> None:
    with self._lock:
      self.kept += 1
      if conversion:
        self.converted[conversion] += 1

  def drop_box(self, reason: str) -> None:
    with self._lock:
      self.dropped_boxes[reason] += 1

  def skip(self, reason: str, image_id: str) -> None:
    with self._lock:
      self.skipped[reason] += 1
      if len(self.skipped_ids[reason]) < 50:  # Enough to find the files; bounded metadata.
        self.skipped_ids[reason].append(image_id)

  def add(self, report: dict[str, Any]) -> None:
    """Adds the counts of another part of the split (its stats' `as_dict()`).

    Where the parts together skipped more than 50 examples for a reason, the 50 ids kept are the
    first in sorted order, so that the report does not depend on the order parts are added in.
    """
    with self._lock:
      self.entries += report["entries"]
      self.kept += report["kept"]
      self.skipped.update(report["skipped"])
      self.dropped_boxes.update(report["dropped_boxes"])
      self.converted.update(report["converted"])
      for reason, ids in report["skipped_examples"].items():
        self.skipped_ids[reason] = sorted(self.skipped_ids[reason] + list(ids))[:50]

  def as_dict(self) -> dict[str, Any]:
    return {
        "entries": self.entries,
        "kept": self.kept,
        "skipped": dict(sorted(self.skipped.items())),
        "dropped_boxes": dict(sorted(self.dropped_boxes.items())),
        "converted": dict(sorted(self.converted.items())),
        "skipped_examples": {k: v for k, v in sorted(self.skipped_ids.items())},
    }

  def summary(self) -> str:
    def fmt(counter):
      return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "none"
    return (f"split {self.split!r}: {self.entries} entries, {self.kept} kept, "
            f"{sum(self.skipped.values())} skipped ({fmt(self.skipped)}); "
            f"boxes dropped: {fmt(self.dropped_boxes)}; converted: {fmt(self.converted)}")


def build_report(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """What the build of a prepared dataset skipped and converted, per split."""
  metadata = builder.info.metadata or {}
  return dict(metadata.get("build_report", {}))
