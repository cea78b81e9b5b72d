"""Where professional photos for CAD generation come from."""

from __future__ import annotations

import pathlib
from typing import Sequence

# Natural photographs that ship inside the scikit-image wheel. Others in `skimage.data`
# are textures, scans or microscopy, or are fetched over the network on first use
# (pooch); only files already on disk are ever used.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "rocket.jpg",
)
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def skimage_photo_paths(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[pathlib.Path]:
  """The paths of scikit-image's bundled photos that are present on disk."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(skimage.data.__file__).parent
  return [root / name for name in names if (root / name).is_file()]


def folder_photo_paths(folder: str | pathlib.Path) -> list[pathlib.Path]:
  """Every photo below `folder` (recursively), in sorted order."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"photo folder {folder} does not exist")
  return sorted(p for p in folder.rglob("*")
                if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS)


def photo_paths(source: str) -> list[pathlib.Path]:
  """`source` is "skimage" or a folder of photos."""
  return skimage_photo_paths() if source == "skimage" else folder_photo_paths(source)
