"""Reading, listing and writing photos for the cropper, with a precise reason for every failure.

What a user hands `procrop crop` is any mix of files, folders (searched recursively), globs and
`-` (one image on stdin). `list_inputs` turns that into `Input`s, each with the relative path its
outputs mirror under OUT, so `a/IMG_0001.jpg` and `b/IMG_0001.jpg` never collide. `read_photo`
refuses a decompression bomb from its header, before any pixel is decoded, and turns every
other failure (not an image, truncated, zero bytes, unreadable, an unconvertible mode) into a
`PhotoError` naming it. `save_crop` writes a crop in the input's format (or a chosen one) with
its ICC profile and EXIF (orientation reset, since the pixels are stored upright).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import pathlib
import sys
from typing import Sequence
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# About 90 megapixels, PIL's own warning threshold (89,478,485 pixels).
DEFAULT_MAX_PIXELS = 90_000_000
# Formats written as they came in; any other input format is written as JPEG.
_WRITABLE = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_FORMAT_ALIASES = {"MPO": "JPEG", "GIF": "PNG"}  # Phone multi-picture JPEGs; GIF frames.
FORMAT_CHOICES = ("keep", "jpg", "png", "webp")
_CHOICE_TO_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_EXIF_ORIENTATION = 0x0112
STDIN = "-"


class PhotoError(ValueError):
  """A photo that cannot be cropped; the message says why."""


@dataclasses.dataclass(frozen=True)
class Input:
  """One photo to crop: where it is read from and the relative path its outputs mirror."""
  source: str  # A file path, or "-" for stdin.
  relative: pathlib.PurePath  # Outputs go to OUT/<relative.parent>/<relative.stem>_...


@dataclasses.dataclass
class Photo:
  """A decoded photo: the upright original (for crops) and what its outputs keep."""
  image: Image.Image  # Upright (EXIF orientation applied), in its own mode.
  format: str  # The format the crops are written in when the format is kept.
  icc_profile: bytes | None
  exif: bytes | None  # With the orientation tag reset to 1 (the pixels are upright).

  @property
  def size(self) -> tuple[int, int]:
    """(width, height) in pixels, upright."""
    return self.image.size


# ------------------------------------------------------------------------------------- listing
def _relative(path: pathlib.Path, root: pathlib.Path) -> pathlib.PurePath:
  """The path relative to the working directory when inside it, else relative to the folder
  above `root` (the folder argument it was found under, or the file's own folder)."""
  path = path.absolute()
  for base in (pathlib.Path.cwd(), root.absolute().parent):
    try:
      return path.relative_to(base)
    except ValueError:
      continue
  return pathlib.PurePath(path.name)


def _is_under(path: pathlib.Path, folder: pathlib.Path | None) -> bool:
  if folder is None:
    return False
  try:
    path.resolve().relative_to(folder)
    return True
  except ValueError:
    return False


def list_inputs(args: Sequence[str], *, exclude: str | os.PathLike[str] | None = None
                ) -> tuple[list[Input], list[tuple[str, str]]]:
  """Expands command-line PATHs into photos, in the order given (folders sorted).

  Args:
    args: files, folders (recursive: files with an image suffix), globs, or "-" for stdin.
    exclude: a folder whose contents are never listed (the output folder, so that a second run
      into a folder inside the input does not crop its own crops).

  Returns:
    (inputs, problems): problems are (argument, reason) for arguments that name no photo.
  """
  exclude_dir = pathlib.Path(exclude).resolve() if exclude else None
  inputs: list[Input] = []
  problems: list[tuple[str, str]] = []
  seen: set[pathlib.Path] = set()

  def add(path: pathlib.Path, root: pathlib.Path) -> None:
    key = path.resolve()
    if key not in seen and not _is_under(path, exclude_dir):
      seen.add(key)
      inputs.append(Input(str(path), _relative(path, root)))

  for arg in args:
    if arg == STDIN:
      inputs.append(Input(STDIN, pathlib.PurePath("stdin")))
      continue
    path = pathlib.Path(arg)
    if path.is_dir():
      found = sorted(p for p in path.rglob("*")
                     if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                     and not _is_under(p, exclude_dir))
      if not found:
        problems.append((arg, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder"))
      for p in found:
        add(p, path)
    elif path.exists() or os.path.lexists(path):
      add(path, path.parent)  # Read (and judged) as it is, whatever its suffix.
    elif glob.has_magic(arg):
      matches = sorted(pathlib.Path(m) for m in glob.glob(arg, recursive=True))
      files = [m for m in matches if m.is_file()]
      if not files:
        problems.append((arg, "no file matches this pattern"))
      for m in files:
        add(m, m.parent)
    else:
      problems.append((arg, "no such file or folder"))
  return inputs, problems


# ------------------------------------------------------------------------------------- reading
def read_photo(source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
  """Decodes one photo (a path, or "-" for stdin).

  Raises:
    PhotoError: with the reason (missing, unreadable, empty, not an image, too many pixels,
      truncated or corrupt, unsupported mode).
  """
  if source == STDIN:
    data = sys.stdin.buffer.read()
    if not data:
      raise PhotoError("empty input on stdin (0 bytes)")
    fp = io.BytesIO(data)
  else:
    path = pathlib.Path(source)
    try:
      if path.is_dir():
        raise PhotoError("is a folder, not an image")
      if path.stat().st_size == 0:
        raise PhotoError("empty file (0 bytes)")
      fp = open(path, "rb")  # pylint: disable=consider-using-with  (closed below)
    except FileNotFoundError as e:
      raise PhotoError("no such file") from e
    except PermissionError as e:
      raise PhotoError("permission denied") from e
    except OSError as e:
      raise PhotoError(f"cannot read the file ({e.strerror or e})") from e
  with fp:
    return _decode(fp, max_pixels)


def _decode(fp, max_pixels: int) -> Photo:
  try:
    # Our own limit is checked below from the header; PIL's warning would only add noise.
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(fp)
  except Image.DecompressionBombError as e:
    raise PhotoError(f"refused as a possible decompression bomb ({e})") from e
  except Image.UnidentifiedImageError as e:
    raise PhotoError("not an image (format not recognised)") from e
  except OSError as e:
    raise PhotoError(f"cannot read the image ({e})") from e
  width, height = image.size
  if width * height > max_pixels:
    raise PhotoError(f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds the limit of "
                     f"{max_pixels / 1e6:.1f} MP (a possible decompression bomb; raise "
                     "--max-pixels to allow it)")
  if width < 1 or height < 1:
    raise PhotoError(f"the image has no pixels ({width}x{height})")
  try:
    image.load()
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise PhotoError(f"truncated or corrupt image data ({e})") from e
  fmt = _FORMAT_ALIASES.get(image.format or "", image.format or "JPEG")
  icc = image.info.get("icc_profile")
  exif = image.getexif()
  try:
    upright = ImageOps.exif_transpose(image)
  except Exception as e:  # pylint: disable=broad-except  (a malformed EXIF block)
    raise PhotoError(f"unreadable EXIF orientation ({e})") from e
  exif_bytes = None
  if len(exif):
    exif[_EXIF_ORIENTATION] = 1
    exif_bytes = exif.tobytes()
  return Photo(upright, fmt if fmt in _WRITABLE else "JPEG", icc, exif_bytes)


def to_rgb(image: Image.Image) -> Image.Image:
  """An RGB view for the model: alpha over white, 16-bit and float scaled to 8 bits.

  Raises:
    PhotoError: for a mode with no RGB meaning.
  """
  mode = image.mode
  if mode == "RGB":
    return image
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    array = np.asarray(image, np.float64)
    top = array.max(initial=0.0)
    scale = 255.0 / (65535.0 if top > 255 else 255.0) if top <= 65535 else 255.0 / top
    return Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), "L"
                           ).convert("RGB")
  if mode in ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV"):
    return image.convert("RGB")
  raise PhotoError(f"unsupported pixel mode {mode!r}")


# ------------------------------------------------------------------------------------- writing
def output_format(photo: Photo, choice: str) -> str:
  """The PIL format name a crop of `photo` is written in, for a --format choice."""
  if choice == "keep":
    return photo.format
  if choice not in _CHOICE_TO_FORMAT:
    raise ValueError(f"format={choice!r}: use one of {FORMAT_CHOICES}")
  return _CHOICE_TO_FORMAT[choice]


def suffix(fmt: str) -> str:
  return _WRITABLE[fmt]


def _for_format(image: Image.Image, fmt: str) -> Image.Image:
  """The image in a mode `fmt` can store (kept as it is where possible)."""
  mode = image.mode
  has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info)
  if fmt == "JPEG":
    return image if mode in ("RGB", "L", "CMYK") else to_rgb(image)
  if fmt in ("PNG", "TIFF"):
    if mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I") or (fmt == "TIFF"
                                                                     and mode == "CMYK"):
      return image
  if has_alpha and fmt in ("PNG", "WEBP", "TIFF"):
    return image.convert("RGBA")
  if fmt == "WEBP" and mode in ("RGB", "RGBA"):
    return image
  return to_rgb(image)


def save_crop(photo: Photo, box: Sequence[int], path: pathlib.Path, *, fmt: str,
              size: tuple[int, int] | None = None, quality: int = 92) -> None:
  """Writes photo[box] (pixels [x1, y1, x2, y2]) to `path`, resized to `size` (w, h) if given."""
  crop = photo.image.crop(tuple(int(v) for v in box))
  if size is not None and crop.size != tuple(size):
    if crop.mode in ("P", "1", "PA"):  # Resampling needs real colours, not palette indices.
      crop = crop.convert("RGBA" if crop.mode == "PA" or "transparency" in crop.info else "RGB")
    crop = crop.resize(tuple(size), Image.Resampling.LANCZOS)
  crop = _for_format(crop, fmt)
  options = {}
  if photo.icc_profile:
    options["icc_profile"] = photo.icc_profile
  if photo.exif and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
    options["exif"] = photo.exif
  if fmt in ("JPEG", "WEBP"):
    options["quality"] = quality
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    crop.save(tmp, format=fmt, **options)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def canvas(image: Image.Image, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """The model's input: (float32 [S, S, 3] in [0, 1], the photo at the top-left; valid (h, w)).

  The longer side is resized to S with antialiased bilinear resampling, as in training.
  """
  rgb = to_rgb(image)
  width, height = rgb.size
  scale = image_size / max(width, height)
  new_w = min(image_size, max(1, round(width * scale)))
  new_h = min(image_size, max(1, round(height * scale)))
  # reducing_gap first box-averages very large photos: several times faster, visually the same.
  small = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
  out = np.zeros((image_size, image_size, 3), np.float32)
  out[:new_h, :new_w] = np.asarray(small, np.float32) / 255.0
  return out, np.array([new_h, new_w], np.float32) / image_size
