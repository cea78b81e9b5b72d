"""FCDB: the Flickr Cropping Dataset (Chen et al., WACV 2017).

Manual directory layout (what the dataset's own download script produces):

  cropping_training_set.json   [{"url", "flickr_photo_id", "crop": [x, y, w, h]}, ...]
  cropping_testing_set.json    same format (345 entries)
  ranking_annotation_train.json  optional: [{"url", "crops": [{"crop_0": [x, y, w, h],
                               "crop_1": [...], "vote_for_0": n, "vote_for_1": m}, ...]}]
  data/<basename of url>       the images

A split whose JSON is absent is skipped with a message. Crops are [x, y, w, h] in
pixels of the image as stored; they become one x1y1x2y2 box of score `DEFAULT_SCORE`.
Many Flickr photos have since been replaced by the "photo is no longer available"
placeholder; those are detected by content and skipped (reason "placeholder").

Pairwise preferences. FCDB's ranking file holds, for the training photos, ten pairs of crops
with five raters' votes each. They become `pair_boxes` [P, 2, 4] (normalised x1y1x2y2, same frame
as `boxes`) and `pair_votes` [P, 2]; a photo with no pairs (every test photo) has P = 0.
"""

from __future__ import annotations

from typing import Any, Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from procrop_jax import box_geometry
from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import crop_builder
from procrop_jax.datasets import image_files
from procrop_jax.datasets import schema

_SPLIT_FILES = {
    "train": "cropping_training_set.json",
    "test": "cropping_testing_set.json",
}
RANKING_FILE = "ranking_annotation_train.json"
_NO_PAIRS = (np.zeros((0, 2, 4)), np.zeros((0, 2), np.int32))


def parse_annotations(path: epath.PathLike) -> list[dict[str, Any]]:
  """Reads an FCDB cropping JSON into [{"image_name", "url", "box_px", "line"}].

  Raises:
    annotation_files.AnnotationError: for a malformed entry, naming the file and line.
  """
  entries = []
  for index, entry, line in annotation_files.iter_json_items(path):
    if not isinstance(entry, dict) or "url" not in entry or "crop" not in entry:
      raise annotation_files.AnnotationError(
          path, line, f"entry {index}: expected an object with 'url' and 'crop'")
    crop = annotation_files.as_box_array(entry["crop"], path=path, line=line,
                                         what=f"entry {index} crop")
    if len(crop) != 1:
      raise annotation_files.AnnotationError(path, line,
                                             f"entry {index}: expected one [x, y, w, h] crop")
    url = str(entry["url"])
    entries.append({
        "image_name": url.rstrip("/").rsplit("/", 1)[-1],
        "url": url,
        "box_px": box_geometry.xywh_to_xyxy(crop[:1]),
        "line": line,
    })
  return entries


def parse_ranking(path: epath.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads FCDB's pairwise ranking JSON: image name -> (pairs_px [P, 2, 4] x1y1x2y2, votes [P, 2]).

  Raises:
    annotation_files.AnnotationError: for a malformed entry, naming the file and line.
  """
  pairs = {}
  for index, entry, line in annotation_files.iter_json_items(path):
    if not isinstance(entry, dict) or "url" not in entry or not isinstance(entry.get("crops"),
                                                                            list):
      raise annotation_files.AnnotationError(
          path, line, f"entry {index}: expected an object with 'url' and 'crops'")
    boxes, votes = [], []
    for j, pair in enumerate(entry["crops"]):
      what = f"entry {index} pair {j}"
      try:
        crops = [annotation_files.as_box_array(pair[f"crop_{k}"], path=path, line=line, what=what)
                 for k in (0, 1)]
        count = [int(pair[f"vote_for_{k}"]) for k in (0, 1)]
      except (KeyError, TypeError, ValueError) as e:
        raise annotation_files.AnnotationError(
            path, line, f"{what}: expected crop_0, crop_1 ([x, y, w, h]) and vote_for_0, "
            f"vote_for_1 (integers): {e}") from e
      if any(len(c) != 1 for c in crops) or min(count) < 0:
        raise annotation_files.AnnotationError(
            path, line, f"{what}: expected one [x, y, w, h] per crop and non-negative votes")
      boxes.append([box_geometry.xywh_to_xyxy(c[0]) for c in crops])
      votes.append(count)
    name = str(entry["url"]).rstrip("/").rsplit("/", 1)[-1]
    pairs[name] = (np.array(boxes, np.float64).reshape(-1, 2, 4),
                   np.array(votes, np.int32).reshape(-1, 2))
  return pairs


class Fcdb(crop_builder.CropBuilder):
  """The Flickr Cropping Dataset: one expert crop per photo, and rated crop pairs."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Pairwise crop preferences (pair_boxes, pair_votes) from the ranking file.",
  }

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

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=schema.features(with_pairs=True),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._manual_dir(dl_manager)
    ranking = root / RANKING_FILE
    pairs = parse_ranking(ranking) if ranking.exists() else {}
    splits = {}
    for split, filename in _SPLIT_FILES.items():
      path = root / filename
      if not path.exists():
        message = f"[fcdb] {path} not found: skipping the {split!r} split."
        logging.warning(message)
        print(message, flush=True)
        continue
      splits[split] = self._generate_examples(path, root / "data", split, pairs)
    if not splits:
      raise FileNotFoundError(
          f"No FCDB annotation file in {root} (expected one of "
          f"{sorted(_SPLIT_FILES.values())}).\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return splits

  def _generate_examples(self, annotation_path: epath.Path, image_dir: epath.Path,
                         split: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    entries = parse_annotations(annotation_path)  # Fails before any image is read.
    stats = schema.BuildStats(split)

    def load(indexed_entry):
      index, entry = indexed_entry
      name = entry["image_name"]
      data = image_files.read_bytes(image_dir / name)
      # The index keeps keys unique should a URL be listed twice.
      pairs_px, votes = pairs.get(name, _NO_PAIRS)
      return f"{index}_{name}", crop_builder.build_example(
          name, data, entry["box_px"], np.array([schema.DEFAULT_SCORE]), stats,
          pairs_px=pairs_px, pair_votes=votes)

    yield from self._counted(
        split, crop_builder.ordered_map(load, enumerate(entries), workers=self.WORKERS), stats)
