"""Reading, listing and writing photos for the cropper, with a precise reason for every failure.

What a user hands `procrop crop` is any mix of files, folders (searched recursively), globs and
`-` (one image on stdin). `list_inputs` turns that into `Input`s, each with the relative path its
outputs mirror under OUT, so `a/IMG_0001.jpg` and `b/IMG_0001.jpg` never collide. `read_photo`
refuses a decompression bomb from its header, before any pixel is decoded, and turns every
other failure (not an image, truncated, zero bytes, unreadable, an unconvertible mode) into a
`PhotoError` naming it (`decode_photo` does the same for bytes, e.g. an upload to `procrop
serve`). `save_crop` writes a crop in the input's format (or a chosen one) with its ICC profile
and EXIF (orientation reset, since the pixels are stored upright); `write_crop` writes it into
a file object (the server's image answer).

The rest of the package reads photos here too: the dataset builders and the CAD generator list
them with `list_photos`, convert them with `rgb_and_conversion` and write JPEGs at
`JPEG_QUALITY`; `photo_ids`, `photo_key` and `source_photo_id` name photos and their CAD
variants; `skimage_photo_paths` are the sample photos.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import pathlib
import re
import sys
from typing import Sequence
import warnings
import zlib

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
JPEG_QUALITY = 95  # What the builders and the CAD generator write.
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


class PhotoTooLargeError(PhotoError):
  """A photo refused from its header for its pixel count (a possible decompression bomb)."""


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
      found = [pathlib.Path(p) for p in list_photos(path)]
      found = [p for p in found if p.is_file() and not _is_under(p, exclude_dir)]
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
    return decode_photo(data, max_pixels=max_pixels)
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


def upright_size(source: str) -> tuple[int, int] | None:
  """(width, height) of a photo file as it will be cropped (EXIF orientation applied), read
  from its header only; None for stdin or a file that cannot be read that far (`read_photo`
  then says why)."""
  if source == STDIN:
    return None
  try:
    with Image.open(source) as image:
      width, height = image.size
      turned = image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
  except Exception:  # pylint: disable=broad-except  (any unreadable header: no size)
    return None
  return (height, width) if turned else (width, height)


def decode_photo(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
  """`read_photo` for a photo's bytes (an upload); raises PhotoError (PhotoTooLargeError for
  the pixel limit) with the reason."""
  if not data:
    raise PhotoError("empty input (0 bytes)")
  return _decode(io.BytesIO(data), max_pixels)


def _decode(fp, max_pixels: int) -> Photo:
  try:
    # Our own limit is checked below from the header; PIL's warning would only add noise.
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(fp)
  except Image.DecompressionBombError as e:
    raise PhotoTooLargeError(f"refused as a possible decompression bomb ({e})") from e
  except Image.UnidentifiedImageError as e:
    raise PhotoError("not an image (format not recognised)") from e
  except OSError as e:
    raise PhotoError(f"cannot read the image ({e})") from e
  width, height = image.size
  if width * height > max_pixels:
    raise PhotoTooLargeError(
        f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds the limit of "
        f"{max_pixels / 1e6:.1f} MP (a possible decompression bomb; raise --max-pixels to allow "
        "it)")
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


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_CONVERTIBLE_MODES = ("1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV")


def rgb_and_conversion(image: Image.Image) -> tuple[Image.Image, str | None]:
  """Any PIL mode as 8-bit RGB, and the conversion's name ("mode_<mode>"; None if RGB already).

  Transparent pixels are shown on white, as a browser would. 16-bit modes are scaled from the
  type's range (PIL's own convert clips them at 255); "I" from 255 when its values fit 8 bits,
  else from its maximum, like "F".
  """
  mode = image.mode
  if mode == "RGB":
    return image, None
  if mode in _DEEP_MODES:
    array = np.asarray(image).astype(np.float64)
    top = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
    if mode == "I" and array.max() <= 255:
      top = 255.0
    array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array, "L").convert("RGB"), f"mode_{mode}"
  if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB"), f"mode_{mode}"
  return image.convert("RGB"), f"mode_{mode}"


def to_rgb(image: Image.Image) -> Image.Image:
  """An RGB view for the model (`rgb_and_conversion`'s rules).

  Raises:
    PhotoError: for a mode with no RGB meaning.
  """
  if image.mode not in ("RGB", *_ALPHA_MODES, *_DEEP_MODES, *_CONVERTIBLE_MODES):
    raise PhotoError(f"unsupported pixel mode {image.mode!r}")
  return rgb_and_conversion(image)[0]


def load_photo(path: str | os.PathLike[str], *, max_side: int | None = 1024) -> np.ndarray:
  """An upright RGB uint8 photo, downscaled so that its longer side <= max_side."""
  with Image.open(path) as image:
    image = rgb_and_conversion(ImageOps.exif_transpose(image))[0]
    if max_side and max(image.size) > max_side:
      scale = max_side / max(image.size)
      size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
      image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image)


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
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    with open(tmp, "wb") as fp:
      write_crop(photo, box, fp, fmt=fmt, size=size, quality=quality)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_crop(photo: Photo, box: Sequence[int], fp, *, fmt: str,
               size: tuple[int, int] | None = None, quality: int = 92) -> None:
  """`save_crop` into a binary file object (an HTTP response's buffer): the same format, ICC
  profile and EXIF rules."""
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
  crop.save(fp, format=fmt, **options)


def canvas_shape(width: int, height: int, image_size: int,
                 buckets: Sequence[float] | None = None, stride: int = 32, *,
                 canvas_hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
  """(canvas height, canvas width, photo height, photo width) of a photo on the model's canvas.

  The photo's longer side is resized to S = image_size. Without `buckets` the canvas is S x S.
  With them (fractions of S, ascending, the last 1.0) the canvas's shorter side is the smallest
  bucket that holds the photo's, each bucket rounded up to a multiple of `stride` so that the
  backbone's token grid stays aligned with the canvas: with (9/16, 3/4, 1) a 3:2 or 4:3 photo at
  S = 320 sits on 320 x 256, a 16:9 one on 320 x 192. With `canvas_hw` instead, the canvas is
  that (height, width) and the photo is resized to fit inside it (image_size is not used).
  """
  if canvas_hw is not None:
    canvas_h, canvas_w = (int(v) for v in canvas_hw)
    scale = min(canvas_h / height, canvas_w / width)
    return (canvas_h, canvas_w, min(canvas_h, max(1, round(height * scale))),
            min(canvas_w, max(1, round(width * scale))))
  scale = image_size / max(width, height)
  new_w = min(image_size, max(1, round(width * scale)))
  new_h = min(image_size, max(1, round(height * scale)))
  if not buckets:
    return image_size, image_size, new_h, new_w
  sides = [min(image_size, -(-round(f * image_size) // stride) * stride) for f in buckets]
  fit = lambda side: next((b for b in sides if b >= side), image_size)
  return fit(new_h), fit(new_w), new_h, new_w


def canvas(image: Image.Image, image_size: int, buckets: Sequence[float] | None = None, *,
           canvas_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The model's input: (float32 [H, W, 3] in [0, 1], the photo at the top-left; valid (h, w)
  as fractions of the canvas's height and width).

  The longer side is resized to S = image_size with antialiased bilinear resampling, as in
  training. The canvas is S x S, or with `buckets` the bucket that holds it, or `canvas_hw`
  (`canvas_shape`).
  """
  rgb = to_rgb(image)
  canvas_h, canvas_w, new_h, new_w = canvas_shape(*rgb.size, image_size, buckets,
                                                  canvas_hw=canvas_hw)
  # reducing_gap first box-averages photos 4x the canvas or more: about twice as fast, and
  # 0.5/255 from a plain antialiased resize on average (FCDB photos at 192 px).
  small = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=2.0)
  out = np.zeros((canvas_h, canvas_w, 3), np.float32)
  out[:new_h, :new_w] = np.asarray(small, np.float32) / 255.0
  return out, np.array([new_h / canvas_h, new_w / canvas_w], np.float32)


def from_canvas(canvas_pixels: np.ndarray, valid_hw: np.ndarray) -> np.ndarray:
  """The photo part of a canvas (`canvas`, or an eval batch's image) as uint8 [h, w, 3]: the
  photo as the model saw it, for previews."""
  h, w = (max(1, int(round(float(v) * side)))
          for v, side in zip(valid_hw, canvas_pixels.shape[:2]))
  return (np.clip(canvas_pixels[:h, :w], 0, 1) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------- where photos come from
def list_photos(root: epath.PathLike) -> list[epath.Path]:
  """Every photo file (by suffix, `IMAGE_SUFFIXES`) below `root`, recursively, sorted.

  (epath's `rglob` is not available on every file system that TFDS supports.)
  """
  root = epath.Path(root)
  if not root.exists():
    return []
  found = []
  for folder, dirnames, filenames in root.walk():
    dirnames.sort()
    found.extend(epath.Path(folder) / f for f in filenames
                 if epath.Path(f).suffix.lower() in IMAGE_SUFFIXES)
  return sorted(found)


def skimage_photo_paths(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[pathlib.Path]:
  """The paths of scikit-image's bundled photos that are present on disk."""
  # Imported here: scikit-image is slow to import and only the sample photos need it.
  import skimage.data  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(skimage.data.__file__).parent
  return [root / name for name in names if (root / name).is_file()]


# ----------------------------------------------------------------------------------------- ids
def _key(stem: str) -> str:
  return re.sub(r"[^A-Za-z0-9.-]+", "-", stem).strip("-") or "photo"


def photo_ids(paths: Sequence[pathlib.PurePath]) -> list[str]:
  """Short ids from file names: [A-Za-z0-9.-] only, unique (a hash suffix if needed).

  The CAD generator names the variants of a photo `<its id>_<k>`.
  """
  ids = [_key(p.stem) for p in paths]
  counts: dict[str, int] = {}
  for i in ids:
    counts[i] = counts.get(i, 0) + 1
  return [f"{i}-{zlib.crc32(str(p).encode()):08x}" if counts[i] > 1 else i
          for i, p in zip(ids, paths)]


def photo_key(image_id: str | bytes) -> str:
  """The id a photo has in CAD names: its file stem with [^A-Za-z0-9.-] runs replaced by "-".

  Database ids are what the photo TFDS builders store (e.g. "people/IMG 7.jpg"); CAD images are
  named `<photo key>_<k>` (`photo_ids`). Keys let a CAD example find its source photo in the
  database.
  """
  if isinstance(image_id, bytes):
    image_id = image_id.decode("utf-8")
  stem = image_id.rsplit("/", 1)[-1]
  if "." in stem:
    stem = stem.rsplit(".", 1)[0]
  return _key(stem)


def source_photo_id(stem: str) -> str:
  """A CAD variant's `<id>_<k>` -> `<id>` (the photo the variant was made from)."""
  head, sep, tail = stem.rpartition("_")
  return head if sep and tail.isdigit() else stem
