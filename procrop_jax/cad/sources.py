"""Where professional photos for CAD generation come from."""

from __future__ import annotations

import pathlib

from procrop_jax import photos


def folder_photo_paths(folder: str | pathlib.Path) -> list[pathlib.Path]:
  """Every photo below `folder` (recursively), in sorted order."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"photo folder {folder} does not exist")
  return [p for p in map(pathlib.Path, photos.list_photos(folder)) if p.is_file()]


def photo_paths(source: str) -> list[pathlib.Path]:
  """`source` is "skimage" or a folder of photos."""
  return photos.skimage_photo_paths() if source == "skimage" else folder_photo_paths(source)
