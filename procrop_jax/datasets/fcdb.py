"""FCDB: the Flickr Cropping Dataset (Chen et al., WACV 2017).

Manual directory layout (what the dataset's own download script produces):

  cropping_training_set.json   [{"url", "flickr_photo_id", "crop": [x, y, w, h]}, ...]
  cropping_testing_set.json    same format (345 entries)
  data/<basename of url>       the images

A split whose JSON is absent is skipped with a message. Crops are [x, y, w, h] in
pixels of the image as stored; they become one x1y1x2y2 box of score `DEFAULT_SCORE`.
Many Flickr photos have since been replaced by the "photo is no longer available"
placeholder; those are detected by content and skipped (reason "placeholder").
"""

from __future__ import annotations

from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from procrop_jax.datasets import schema

_SPLIT_FILES = {
    "train": "cropping_training_set.json",
    "test": "cropping_testing_set.json",
}


def parse_annotations(path: epath.PathLike) -> list[dict[str, Any]]:
  """Reads an FCDB cropping JSON into [{"image_name", "url", "box_px", "line"}].

  Raises:
    schema.AnnotationError: for a malformed entry, naming the file and line.
  """
  entries = []
  for index, entry, line in schema.iter_json_items(path):
    if not isinstance(entry, dict) or "url" not in entry or "crop" not in entry:
      raise schema.AnnotationError(path, line,
                                   f"entry {index}: expected an object with 'url' and 'crop'")
    crop = schema.as_box_array(entry["crop"], path=path, line=line, what=f"entry {index} crop")
    if len(crop) != 1:
      raise schema.AnnotationError(path, line, f"entry {index}: expected one [x, y, w, h] crop")
    x, y, w, h = crop[0]
    url = str(entry["url"])
    entries.append({
        "image_name": url.rstrip("/").rsplit("/", 1)[-1],
        "url": url,
        "box_px": np.array([[x, y, x + w, y + h]], np.float64),
        "line": line,
    })
  return entries


class Fcdb(schema.CropBuilder):
  """The Flickr Cropping Dataset: one expert crop per photo."""

  DESCRIPTION = (
      "Flickr Cropping Dataset (FCDB): 1,743 Flickr photos (1,369 train / 345 test as "
      "released), each with one expert crop. Boxes are x1y1x2y2 in pixels and "
      "normalised; the single crop has score 5.0.")
  HOMEPAGE = "https://github.com/yiling-chen/flickr-cropping-dataset"
  CITATION = r"""@inproceedings{chen2017quantitative,
  title     = {Quantitative Analysis of Automatic Image Cropping Algorithms: A Comparative Study},
  author    = {Chen, Yi-Ling and Huang, Tzu-Wei and Chang, Kai-Han and Tsai, Yu-Chen and
               Chen, Hwann-Tzong and Chen, Bing-Yu},
  booktitle = {IEEE Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2017}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Clone https://github.com/yiling-chen/flickr-cropping-dataset, run its
  `download_images.py` (it writes the photos to `data/`), and place
  `cropping_training_set.json`, `cropping_testing_set.json` and `data/` in the manual
  directory (default `data/manual/fcdb`).
  """

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._manual_dir(dl_manager)
    splits = {}
    for split, filename in _SPLIT_FILES.items():
      path = root / filename
      if not path.exists():
        message = f"[fcdb] {path} not found: skipping the {split!r} split."
        logging.warning(message)
        print(message, flush=True)
        continue
      splits[split] = self._generate_examples(path, root / "data", split)
    if not splits:
      raise FileNotFoundError(
          f"No FCDB annotation file in {root} (expected one of "
          f"{sorted(_SPLIT_FILES.values())}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, annotation_path: epath.Path, image_dir: epath.Path,
                         split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    entries = parse_annotations(annotation_path)  # Fails before any image is read.
    stats = schema.BuildStats(split)

    def load(indexed_entry):
      index, entry = indexed_entry
      name = entry["image_name"]
      data = schema.read_bytes(image_dir / name)
      # The index keeps keys unique should a URL be listed twice.
      return f"{index}_{name}", schema.build_example(
          name, data, entry["box_px"], np.array([schema.DEFAULT_SCORE]), stats)

    yield from self._counted(split, schema.ordered_map(load, enumerate(entries), workers=self.WORKERS),
                             stats)
