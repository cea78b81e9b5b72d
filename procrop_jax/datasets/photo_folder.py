"""A folder of photos without labels: the professional-photo database for retrieval.

Config `default` reads every image below the manual directory (recursively; the
image_id is the path relative to it). Config `skimage` reads the natural photos that
ship inside scikit-image (`procrop_jax.photos.skimage_photo_paths`), the photos of
the embedded default; it needs no manual directory. One split, `train`; every example
has zero boxes.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from etils import epath
import tensorflow_datasets as tfds

from procrop_jax import photos as photos_lib
from procrop_jax.datasets import crop_builder
from procrop_jax.datasets import image_files
from procrop_jax.datasets import schema


class PhotoFolder(crop_builder.CropBuilder):
  """Unlabelled photos in the common schema (no boxes)."""

  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="default",
                              description="Every image below the manual directory."),
      tfds.core.BuilderConfig(name="skimage",
                              description="The natural photos shipped in scikit-image."),
  ]
  DESCRIPTION = ("Unlabelled photos (e.g. a professional-photo database) in the common "
                 "cropping schema, with no boxes.")
  HOMEPAGE = "https://arxiv.org/abs/2505.22490"
  CITATION = ""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the photos (any folder layout, .jpg/.png/...) in the manual directory.
  """

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self.builder_config.name == "skimage":
      photos = [(p.name, epath.Path(p)) for p in photos_lib.skimage_photo_paths()]
    else:
      root = self._manual_dir(dl_manager)
      photos = [(str(p.relative_to(root)), p) for p in photos_lib.list_photos(root)]
      if not photos:
        raise FileNotFoundError(f"No images below {root}.")
    return {"train": self._generate_examples(photos, "train")}

  def _generate_examples(self, photos: Sequence[tuple[str, epath.Path]],
                         split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    stats = schema.BuildStats(split)

    def load(item):
      image_id, path = item
      return image_id, crop_builder.build_example(image_id, image_files.read_bytes(path), None,
                                                  None, stats, require_box=False)

    yield from self._counted(split, crop_builder.ordered_map(load, photos, workers=self.WORKERS),
                             stats)
