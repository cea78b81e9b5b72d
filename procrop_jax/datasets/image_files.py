"""Image files of the builders: decoded, validated and stored as upright RGB JPEGs.

`load_image` raises `schema.SkipExample` with the reason for a file that cannot be used;
`orient_boxes` maps annotation boxes of the stored frame into the EXIF-upright one.
"""

from __future__ import annotations

import dataclasses
import io

from etils import epath
import numpy as np
from PIL import Image

from procrop_jax import photos
from procrop_jax.datasets import schema

# Flickr's placeholder is white apart from a small grey icon and one line of text:
# 98.4% (500x374 version) and 99.5% (1024x768 version) of its pixels are near white.
# The whitest real photo of FCDB is at 84%.
_PLACEHOLDER_WHITE_FRACTION = 0.95
_MIN_SIDE = 16


@dataclasses.dataclass(frozen=True)
class LoadedImage:
  """An image ready to store: upright RGB JPEG bytes and what it took to get there."""
  encoded: bytes
  height: int
  width: int
  stored_width: int  # Before the EXIF rotation: the frame annotations refer to.
  stored_height: int
  orientation: int  # EXIF orientation tag (1 = upright).
  conversion: str | None  # E.g. "mode_CMYK", "format_PNG", "exif_orientation"; None if kept.


def _is_placeholder(image: Image.Image) -> bool:
  small = image.reduce(max(1, min(image.size) // 96)) if min(image.size) >= 192 else image
  array = np.asarray(small)
  return float(np.mean(np.all(array >= 245, axis=-1))) >= _PLACEHOLDER_WHITE_FRACTION


def load_image(data: bytes, *, check_placeholder: bool = True) -> LoadedImage:
  """Decodes, validates and normalises an image file's bytes.

  Raises:
    SkipExample: for an empty, unreadable, truncated, tiny or placeholder image.
  """
  if not data:
    raise schema.SkipExample("empty_file")
  try:
    image = Image.open(io.BytesIO(data))
    source_format = image.format
  except Image.UnidentifiedImageError as e:
    raise schema.SkipExample("not_an_image", str(e)) from e
  except Exception as e:  # pylint: disable=broad-except
    raise schema.SkipExample("corrupt_image", str(e)) from e
  try:
    image.load()  # A full decode: truncated files fail here, not at training time.
    orientation = int(image.getexif().get(0x0112, 1) or 1)
    stored_width, stored_height = image.size
    image, conversion = photos.rgb_and_conversion(image)
    if orientation not in range(1, 9):
      orientation = 1
    if orientation != 1:
      image = _apply_orientation(image, orientation)
      conversion = conversion or "exif_orientation"
  except Exception as e:  # pylint: disable=broad-except
    raise schema.SkipExample("corrupt_image", str(e)) from e
  width, height = image.size
  if min(width, height) < _MIN_SIDE:
    raise schema.SkipExample("too_small", f"{width}x{height}")
  if check_placeholder and _is_placeholder(image):
    raise schema.SkipExample("placeholder")
  if conversion is None and source_format != "JPEG":
    conversion = f"format_{source_format}"
  if conversion is None:
    encoded = data  # Already an upright RGB JPEG: keep the original bytes.
  else:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=photos.JPEG_QUALITY)
    encoded = buffer.getvalue()
  return LoadedImage(encoded=encoded, height=height, width=width,
                     stored_width=stored_width, stored_height=stored_height,
                     orientation=orientation, conversion=conversion)


_ORIENTATION_OPS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
  return image.transpose(_ORIENTATION_OPS[orientation]) if orientation != 1 else image


def orient_boxes(boxes_px: np.ndarray, orientation: int, stored_width: float,
                 stored_height: float) -> np.ndarray:
  """Maps x1y1x2y2 pixel boxes of the stored frame into the EXIF-upright frame."""
  boxes_px = np.asarray(boxes_px, np.float64).reshape(-1, 4)
  if orientation == 1 or not len(boxes_px):
    return boxes_px
  w, h = float(stored_width), float(stored_height)
  xs, ys = boxes_px[:, [0, 2]], boxes_px[:, [1, 3]]
  mapping = {
      2: (w - xs, ys),
      3: (w - xs, h - ys),
      4: (xs, h - ys),
      5: (ys, xs),
      6: (h - ys, xs),
      7: (h - ys, w - xs),
      8: (ys, w - xs),
  }
  new_x, new_y = mapping[orientation]
  return np.stack([new_x.min(1), new_y.min(1), new_x.max(1), new_y.max(1)], axis=1)


def index_images(root: epath.PathLike) -> dict[str, epath.Path]:
  """Maps each image file's name under `root` (recursively) to its path.

  Where one name appears in several folders the first in sorted order wins; the
  builders name images by file name, as the benchmarks' annotation files do.
  """
  found: dict[str, epath.Path] = {}
  for path in photos.list_photos(root):
    found.setdefault(path.name, path)
  return found


def read_bytes(path: epath.Path | None) -> bytes | None:
  if path is None or not path.exists():
    return None
  return path.read_bytes()
