"""The schema every cropping builder produces, and the parsing they share.

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
the build with `AnnotationError`, which names the file and line.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import inspect
import io
import json
import threading
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from procrop_jax import photos

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

# Flickr's placeholder is white apart from a small grey icon and one line of text:
# 98.4% (500x374 version) and 99.5% (1024x768 version) of its pixels are near white.
# The whitest real photo of FCDB is at 84%.
_PLACEHOLDER_WHITE_FRACTION = 0.95
_MIN_SIDE = 16
# Boxes a little outside the image are clipped (annotation tools round outwards);
# farther out they are dropped.
_BOX_TOLERANCE_FRACTION = 0.01
_BOX_TOLERANCE_PX = 2.0


class AnnotationError(ValueError):
  """A malformed annotation file; the message names the file and line."""

  def __init__(self, path: Any, line: int | None, message: str):
    where = f"{path}:{line}" if line is not None else f"{path}"
    super().__init__(f"{where}: {message}")
    self.path = str(path)
    self.line = line


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


# ------------------------------------------------------------------------- images


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
    raise SkipExample("empty_file")
  try:
    image = Image.open(io.BytesIO(data))
    source_format = image.format
  except Image.UnidentifiedImageError as e:
    raise SkipExample("not_an_image", str(e)) from e
  except Exception as e:  # pylint: disable=broad-except
    raise SkipExample("corrupt_image", str(e)) from e
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
    raise SkipExample("corrupt_image", str(e)) from e
  width, height = image.size
  if min(width, height) < _MIN_SIDE:
    raise SkipExample("too_small", f"{width}x{height}")
  if check_placeholder and _is_placeholder(image):
    raise SkipExample("placeholder")
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


# -------------------------------------------------------------------------- boxes


def clean_boxes(boxes_px: np.ndarray, scores: np.ndarray, *, width: int, height: int,
                stats: BuildStats | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Drops unusable boxes and clips the slightly-outside ones.

  Args:
    boxes_px: [N, 4] x1y1x2y2 pixels in the upright frame.
    scores: [N].
    width, height: the image's size.
    stats: where dropped boxes are counted.

  Returns:
    (boxes_px [K, 4] float32, scores [K] float32, reasons): `reasons[i]` is why box i
    was dropped, or "" where it was kept.
  """
  boxes_px = np.asarray(boxes_px, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  tol_x = max(_BOX_TOLERANCE_PX, _BOX_TOLERANCE_FRACTION * width)
  tol_y = max(_BOX_TOLERANCE_PX, _BOX_TOLERANCE_FRACTION * height)
  reasons = []
  for x1, y1, x2, y2 in boxes_px:
    if not np.all(np.isfinite([x1, y1, x2, y2])) or x2 - x1 <= 0 or y2 - y1 <= 0:
      reasons.append("box_zero_area")
    elif x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
      reasons.append("box_outside_image")
    else:
      reasons.append("")
  keep = np.array([not r for r in reasons], bool)
  kept = boxes_px[keep].copy()
  if len(kept):
    kept[:, [0, 2]] = np.clip(kept[:, [0, 2]], 0, width)
    kept[:, [1, 3]] = np.clip(kept[:, [1, 3]], 0, height)
    # Clipping can squash a box that was mostly outside to nothing.
    empty = (kept[:, 2] - kept[:, 0] < 1) | (kept[:, 3] - kept[:, 1] < 1)
    if np.any(empty):
      for i, idx in enumerate(np.flatnonzero(keep)):
        if empty[i]:
          reasons[idx] = "box_outside_image"
      keep[np.flatnonzero(keep)[empty]] = False
      kept = kept[~empty]
  if stats is not None:
    for r in reasons:
      if r:
        stats.drop_box(r)
  return kept.astype(np.float32), scores[keep].astype(np.float32), reasons


def make_example(image_id: str, image: LoadedImage, boxes_px: np.ndarray,
                 scores: np.ndarray) -> dict[str, Any]:
  """The feature dict of one example (boxes already cleaned, upright frame)."""
  boxes_px = np.asarray(boxes_px, np.float32).reshape(-1, 4)
  scale = np.array([image.width, image.height, image.width, image.height], np.float32)
  return {
      "image": image.encoded,
      "image_id": image_id,
      "image_size": np.array([image.height, image.width], np.int32),
      "boxes_px": boxes_px,
      "boxes": np.clip(boxes_px / scale, 0.0, 1.0).astype(np.float32),
      "box_scores": np.asarray(scores, np.float32).reshape(-1),
  }


def build_example(image_id: str, data: bytes | None, boxes_px: np.ndarray | None,
                  scores: np.ndarray | None, stats: BuildStats, *,
                  require_box: bool = True, require_first_box: bool = False,
                  check_placeholder: bool = True,
                  pairs_px: np.ndarray | None = None,
                  pair_votes: np.ndarray | None = None) -> dict[str, Any] | None:
  """Loads, validates and assembles one example; counts and returns None if skipped.

  Args:
    image_id: the example's id.
    data: the image file's bytes, or None where the file is missing.
    boxes_px: [N, 4] x1y1x2y2 in pixels of the image as stored (before EXIF rotation).
    scores: [N].
    stats: counters of the split.
    require_box: skip the example when no usable box is left.
    require_first_box: skip it when the first box is unusable (ProCrop's pseudo-label).
    check_placeholder: detect near-blank placeholder images.
    pairs_px: optional [P, 2, 4] crop pairs (x1y1x2y2 pixels of the image as stored) that people
      compared; with `pair_votes` [P, 2] (votes for each crop) they become the "pair_boxes" and
      "pair_votes" features (`pair_features`).
    pair_votes: see pairs_px.
  """
  stats.entry()
  try:
    if data is None:
      raise SkipExample("missing_file")
    image = load_image(data, check_placeholder=check_placeholder)
  except SkipExample as e:
    stats.skip(e.reason, image_id)
    return None
  if boxes_px is None:
    boxes_px, scores = np.zeros((0, 4)), np.zeros((0,))
  boxes_px = orient_boxes(boxes_px, image.orientation, image.stored_width,
                          image.stored_height)
  kept, kept_scores, reasons = clean_boxes(boxes_px, scores, width=image.width,
                                           height=image.height, stats=stats)
  if (require_first_box and reasons and reasons[0]) or (require_box and not len(kept)):
    stats.skip(next((r for r in reasons if r), "no_valid_box"), image_id)
    return None
  stats.keep(image.conversion)
  example = make_example(image_id, image, kept, kept_scores)
  if pairs_px is not None:
    example.update(pair_features(image, pairs_px, pair_votes, stats))
  return example


def pair_features(image: LoadedImage, pairs_px: np.ndarray, votes: np.ndarray,
                  stats: BuildStats | None = None) -> dict[str, np.ndarray]:
  """Compared crop pairs in the upright frame, normalised; a pair with an unusable box is dropped.

  Returns {"pair_boxes": float32 [P', 2, 4] normalised x1y1x2y2, "pair_votes": int32 [P', 2]}.
  """
  pairs_px = np.asarray(pairs_px, np.float64).reshape(-1, 4)
  votes = np.asarray(votes, np.int32).reshape(-1, 2)
  upright = orient_boxes(pairs_px, image.orientation, image.stored_width, image.stored_height)
  cleaned, _, reasons = clean_boxes(upright, np.zeros(len(upright)), width=image.width,
                                    height=image.height)
  usable = np.array([not r for r in reasons], bool).reshape(-1, 2)
  boxes = np.zeros((len(usable) * 2, 4), np.float32)
  boxes[np.array([not r for r in reasons], bool)] = cleaned
  keep = usable.all(axis=1)
  if stats is not None:
    for _ in range(int((~keep).sum())):
      stats.drop_box("pair_box_unusable")
  scale = np.array([image.width, image.height, image.width, image.height], np.float32)
  boxes = np.clip(boxes / scale, 0.0, 1.0).reshape(-1, 2, 4)[keep]
  return {"pair_boxes": boxes.astype(np.float32), "pair_votes": votes[keep]}


# ---------------------------------------------------------------- annotation files


def _line_of(text: str, offset: int) -> int:
  return text.count("\n", 0, offset) + 1


def _skip_ws(text: str, pos: int) -> int:
  while pos < len(text) and text[pos] in " \t\r\n":
    pos += 1
  return pos


def iter_json_items(path: epath.PathLike) -> Iterator[tuple[Any, Any, int]]:
  """Yields (key, value, line) for each item of a top-level JSON list or object.

  The key is the list index or the object key; the line is where the value starts, so
  that a semantic error in one entry can name its line.

  Raises:
    AnnotationError: on a syntax error or a top level that is neither list nor object.
  """
  path = epath.Path(path)
  text = path.read_text()
  decoder = json.JSONDecoder()
  pos = _skip_ws(text, 0)
  if pos >= len(text) or text[pos] not in "[{":
    raise AnnotationError(path, _line_of(text, pos), "expected a JSON list or object")
  is_list, closer = text[pos] == "[", "]" if text[pos] == "[" else "}"
  pos = _skip_ws(text, pos + 1)
  index = 0
  try:
    if pos < len(text) and text[pos] == closer:
      return
    while True:
      if is_list:
        key = index
      else:
        key, pos = decoder.raw_decode(text, pos)
        if not isinstance(key, str):
          raise AnnotationError(path, _line_of(text, pos), "expected a string key")
        pos = _skip_ws(text, pos)
        if pos >= len(text) or text[pos] != ":":
          raise AnnotationError(path, _line_of(text, pos), "expected ':'")
        pos = _skip_ws(text, pos + 1)
      line = _line_of(text, pos)
      value, pos = decoder.raw_decode(text, pos)
      yield key, value, line
      index += 1
      pos = _skip_ws(text, pos)
      if pos < len(text) and text[pos] == ",":
        pos = _skip_ws(text, pos + 1)
        continue
      if pos < len(text) and text[pos] == closer:
        break
      raise AnnotationError(path, _line_of(text, pos), f"expected ',' or '{closer}'")
  except json.JSONDecodeError as e:
    raise AnnotationError(path, e.lineno, f"invalid JSON: {e.msg}") from e
  if _skip_ws(text, pos + 1) != len(text):
    raise AnnotationError(path, _line_of(text, pos + 1), "extra data after the JSON value")


def as_box_array(value: Any, *, path: Any, line: int, what: str,
                 width: int = 4) -> np.ndarray:
  """Parses a list of `width`-number lists; raises AnnotationError if it is not one."""
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise AnnotationError(path, line, f"{what}: expected numbers, got {value!r:.80}") from e
  if array.ndim == 1 and array.size == width:
    array = array[None]
  if array.size == 0:
    return np.zeros((0, width))
  if array.ndim != 2 or array.shape[1] != width:
    raise AnnotationError(path, line,
                          f"{what}: expected [{width}] or [N, {width}] numbers, "
                          f"got shape {array.shape}")
  return array


CAD_IGNORE_SCORE = -2.0


def parse_yxyx_lines(path: epath.PathLike, *, default_score: float = DEFAULT_SCORE
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Reads a GAIC/ProCrop-style box file: one `y1 x1 y2 x2 [score]` line per box.

  Blank lines are ignored; a missing score is `default_score`; a line whose score is
  -2 is ignored (ProCrop's marker). Commas may separate the numbers.

  Returns:
    (boxes_px [N, 4] as x1y1x2y2 in file order, scores [N]).

  Raises:
    AnnotationError: for a line that is not 4 or 5 numbers, or a file with no lines.
  """
  path = epath.Path(path)
  boxes, scores, lines = [], [], 0
  for number, raw in enumerate(path.read_text().splitlines(), start=1):
    fields = raw.replace(",", " ").split()
    if not fields:
      continue
    lines += 1
    if len(fields) not in (4, 5):
      raise AnnotationError(path, number,
                            f"expected 'y1 x1 y2 x2 [score]', got {len(fields)} fields: {raw!r:.80}")
    try:
      values = [float(v) for v in fields]
    except ValueError as e:
      raise AnnotationError(path, number, f"not a number in {raw!r:.80}") from e
    score = values[4] if len(values) == 5 else default_score
    if score == CAD_IGNORE_SCORE:
      continue
    y1, x1, y2, x2 = values[:4]
    boxes.append([x1, y1, x2, y2])
    scores.append(score)
  if not lines:
    raise AnnotationError(path, 1, "empty annotation file (no box lines)")
  return np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64)


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


def stable_key(text: str) -> int:
  """A hash of `text` that is the same in every process and run."""
  return zlib.crc32(text.encode("utf-8"))


# --------------------------------------------------------------------- builders

_T = TypeVar("_T")
_R = TypeVar("_R")


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], *, workers: int = 2,
                window: int = 64) -> Iterator[_R]:
  """`map` over a small thread pool, results in input order.

  Image decoding and encoding release the GIL, so threads overlap them.
  """
  if workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending: collections.deque[concurrent.futures.Future[_R]] = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


class CropBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the cropping builders: common schema, skip accounting, ArrayRecord.

  Subclasses set `DESCRIPTION`, `CITATION`, `HOMEPAGE`, `MANUAL_DOWNLOAD_INSTRUCTIONS`
  and implement `_split_generators`, wrapping each split's examples in
  `self._counted(split, examples, stats)`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="As released.")]
  DESCRIPTION = ""
  CITATION = ""
  HOMEPAGE = ""
  # Threads that decode images while a split is generated.
  WORKERS = 2

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for packages that are
    # not zipped; the class's file is all it is used for here.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # ArrayRecord gives the input pipeline random access (an O(1) seek to any step).
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=features(),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _counted(self, split: str, examples: Iterable[tuple[str, dict[str, Any] | None]],
               stats: BuildStats) -> Iterator[tuple[str, dict[str, Any]]]:
    """Passes kept examples through; logs and stores the counts when the split ends."""
    for key, example in examples:
      if example is not None:
        yield key, example
    logging.info("%s %s", self.name, stats.summary())
    if stats.skipped or stats.dropped_boxes or stats.converted:
      print(f"[{self.name}] {stats.summary()}", flush=True)
    report = dict(self.info.metadata.get("build_report", {}))
    report[split] = stats.as_dict()
    self.info.metadata["build_report"] = report

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
    return epath.Path(dl_manager.manual_dir)
