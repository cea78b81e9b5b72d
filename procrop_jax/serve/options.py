"""A request's options (`aspect`, `size`, `top_k`, `format`, `box`) from its query string,
its multipart fields or a JSON `options` field; a wrong one is a 422 naming it.

`aspect=free` asks for free crops beside fixed ones; no aspect and no size means free crops.

The parsing rules are the command line's (`cropper.parse_aspect`, `cropper.parse_size`), so
`?aspect=16:9&size=1080x1080` asks what `procrop crop --aspect 16:9 --size 1080x1080` does.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Mapping, Sequence

from procrop_jax import cropper as cropper_lib
from procrop_jax.serve import errors

FORMATS = ("json", "image")
MAX_TOP_K = 20  # Crops per aspect: more is never useful, and each one costs a box in the reply.
MAX_TARGETS = 8  # Aspects and sizes per request: each fixed one scores its own candidates.
MAX_BOXES = 256  # Boxes per /v1/score request (the model scores them in one padded pass).
_CROP_KEYS = {"aspect", "size", "top_k", "format"}


@dataclasses.dataclass(frozen=True)
class CropOptions:
  targets: tuple[cropper_lib.Target, ...]
  top_k: int = 3
  format: str = "json"


def _invalid(message: str) -> errors.ApiError:
  return errors.ApiError(422, "bad_options", message)


def merged(query: Iterable[tuple[str, str]], fields: Iterable[tuple[str, Any]] = ()
           ) -> dict[str, list[Any]]:
  """name -> values from the query string and form fields; a field `options` holding a JSON
  object adds its entries (a list value counts as repeated)."""
  values: dict[str, list[Any]] = {}
  for name, value in [*query, *fields]:
    if name == "options":
      try:
        extra = json.loads(value)
      except (TypeError, ValueError) as e:
        raise _invalid(f"options: not JSON ({e})") from None
      if not isinstance(extra, dict):
        raise _invalid("options: expected a JSON object, e.g. {\"aspect\": [\"16:9\"]}")
      for key, item in extra.items():
        values.setdefault(key, []).extend(item if isinstance(item, list) and key != "boxes"
                                          else [item])
      continue
    values.setdefault(name, []).append(value)
  return values


def _one(values: Mapping[str, list[Any]], name: str, default: Any) -> Any:
  found = values.get(name, [])
  if len(found) > 1:
    raise _invalid(f"{name}: given {len(found)} times; give it once")
  return found[0] if found else default


def _unknown(values: Mapping[str, list[Any]], known: set[str]) -> None:
  unknown = sorted(set(values) - known)
  if unknown:
    raise _invalid(f"unknown option(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")


def crop_options(values: Mapping[str, list[Any]]) -> CropOptions:
  """The options of a /v1/crop request (see `merged`)."""
  _unknown(values, _CROP_KEYS)
  targets = []
  for name, parse in (("aspect", cropper_lib.parse_aspect), ("size", cropper_lib.parse_size)):
    for value in values.get(name, []):
      if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _invalid(f"{name}: expected text such as 16:9, got {value!r}")
      if name == "aspect" and str(value).strip().lower() == "free":
        targets.append(cropper_lib.FREE)  # Free crops beside fixed ones (the web page's).
        continue
      try:
        targets.append(parse(str(value)))
      except ValueError as e:
        raise _invalid(str(e)) from None
  if len(targets) > MAX_TARGETS:
    raise _invalid(f"{len(targets)} aspects and sizes: at most {MAX_TARGETS} per request")
  if len({t.label for t in targets}) != len(targets):
    raise _invalid("the same aspect or size is given twice")
  top_k = _one(values, "top_k", 3)
  try:
    top_k = int(top_k)
  except (TypeError, ValueError):
    raise _invalid(f"top_k: {top_k!r} is not a whole number") from None
  if not 1 <= top_k <= MAX_TOP_K:
    raise _invalid(f"top_k: {top_k} is not in 1..{MAX_TOP_K}")
  fmt = _one(values, "format", "json")
  if fmt not in FORMATS:
    raise _invalid(f"format: {fmt!r}; use json or image")
  return CropOptions(tuple(targets) or (cropper_lib.FREE,), top_k, fmt)


def score_boxes(values: Mapping[str, list[Any]]) -> list[tuple[float, float, float, float]]:
  """The boxes of a /v1/score request: `box=x1,y1,x2,y2` (repeatable) or `boxes` (JSON
  [[x1, y1, x2, y2], ...]); pixels of the upright photo."""
  _unknown(values, {"box", "boxes"})
  boxes: list[Any] = []
  for text in values.get("box", []):
    boxes.append(str(text).split(",") if not isinstance(text, list) else text)
  for value in values.get("boxes", []):
    if isinstance(value, str):
      try:
        value = json.loads(value)
      except ValueError as e:
        raise _invalid(f"boxes: not JSON ({e})") from None
    if not isinstance(value, list):
      raise _invalid("boxes: expected a JSON list of [x1, y1, x2, y2]")
    boxes.extend(value)
  if not boxes:
    raise _invalid("no boxes: give box=x1,y1,x2,y2 (repeatable) or boxes=[[x1,y1,x2,y2],...]")
  if len(boxes) > MAX_BOXES:
    raise _invalid(f"{len(boxes)} boxes: at most {MAX_BOXES} per request")
  parsed = []
  for box in boxes:
    try:
      if isinstance(box, (str, bytes)) or len(box) != 4:
        raise ValueError
      x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
      raise _invalid(f"box {box!r}: expected four numbers x1,y1,x2,y2") from None
    if not x1 < x2 or not y1 < y2:
      raise _invalid(f"box {box!r}: needs x1 < x2 and y1 < y2")
    parsed.append((x1, y1, x2, y2))
  return parsed


def check_inside(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> None:
  """422 for a box outside a (width, height) photo."""
  width, height = size
  for box in boxes:
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
      raise _invalid(f"box {list(box)} is outside the {width}x{height} photo")
