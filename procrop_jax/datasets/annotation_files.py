"""Annotation files of the builders: a JSON reader that names lines, box parsing and cleaning.

A malformed file stops the build with `AnnotationError` (file and line); an unusable box is
dropped and counted (`clean_boxes`).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from etils import epath
import numpy as np

from procrop_jax.datasets import schema

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


def clean_boxes(boxes_px: np.ndarray, scores: np.ndarray, *, width: int, height: int,
                stats: schema.BuildStats | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
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


def parse_yxyx_lines(path: epath.PathLike, *, default_score: float = schema.DEFAULT_SCORE
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
