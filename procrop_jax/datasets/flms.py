"""FLMS (Fang, Lin, Mech and Shen, ACM MM 2014): 500 images, about 10 expert crops each.

Manual directory: `image_crop.json` ({"<name>.jpg": [[x1, y1, x2, y2], ...]}) and the
images anywhere below it. One split, `test` (FLMS is an evaluation benchmark). Expert
crops have no scores; each gets `DEFAULT_SCORE`.
"""

from __future__ import annotations

from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import crop_builder
from procrop_jax.datasets import image_files
from procrop_jax.datasets import schema


def parse_annotations(path: epath.PathLike) -> list[dict[str, Any]]:
  """Reads FLMS's image_crop.json into [{"image_name", "boxes_px" [N, 4] x1y1x2y2}]."""
  entries = []
  for name, value, line in annotation_files.iter_json_items(path):
    boxes = annotation_files.as_box_array(value, path=path, line=line, what=str(name))
    entries.append({"image_name": str(name), "boxes_px": boxes})
  return entries


class Flms(crop_builder.CropBuilder):
  """FLMS: several expert crops per image."""

  DESCRIPTION = (
      "FLMS cropping benchmark: 500 images, each with about 10 crops drawn by expert "
      "photographers. Boxes are x1y1x2y2 in pixels and normalised; all scores 5.0.")
  HOMEPAGE = "http://fangchen.org/proj_page/FLMS_mm14/"
  CITATION = r"""@inproceedings{fang2014automatic,
  title     = {Automatic Image Cropping using Visual Composition, Boundary Simplicity
               and Content Preservation Models},
  author    = {Fang, Chen and Lin, Zhe and Mech, Radomir and Shen, Xiaohui},
  booktitle = {ACM International Conference on Multimedia},
  year      = {2014}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the FLMS images from the project page (http://fangchen.org/proj_page/FLMS_mm14/)
  and place them, with the annotation file converted to `image_crop.json`
  ({"<name>.jpg": [[x1, y1, x2, y2], ...]}, as distributed with several cropping
  repositories), in the manual directory (default `data/manual/flms`).
  """

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._manual_dir(dl_manager)
    path = root / "image_crop.json"
    if not path.exists():
      raise FileNotFoundError(f"{path} not found.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    entries = parse_annotations(path)
    return {"test": self._generate_examples(entries, image_files.index_images(root), "test")}

  def _generate_examples(self, entries: list[dict[str, Any]], images: dict[str, epath.Path],
                         split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    stats = schema.BuildStats(split)

    def load(entry):
      name = entry["image_name"]
      boxes = entry["boxes_px"]
      return name, crop_builder.build_example(name, image_files.read_bytes(images.get(name)), boxes,
                                              np.full(len(boxes), schema.DEFAULT_SCORE), stats)

    yield from self._counted(split, crop_builder.ordered_map(load, entries, workers=self.WORKERS),
                             stats)
