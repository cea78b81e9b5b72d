"""Keep regions: boxes a crop must contain (a user's `--keep` box or `--focus` point, or a face).

The constraint lives in candidate generation, not in a filter: every candidate box (a free
proposal, a grid box or a snapped proposal of a fixed ratio, a refined neighbour) is moved, and
grown only as much as needed, to contain the regions (`constrain`), so every box the model
scores keeps them and the best-scored one is chosen among those. When no box of the requested
shape inside the photo can hold them all (a tall 4:5 crop of two faces far apart, say), the
candidates keep the largest subset that fits (`keepable_subset`), earlier regions first: the
user's, then larger faces. A region may have a tight form (a face without the margin for hair
and chin, `Regions.tight`): when the regions with their margins do not all fit but more of the
tight ones do, the tight ones are kept. A region may also be whole-or-out
(`Regions.whole_or_out`: the cropper's smaller faces): a candidate that leaves it (almost)
entirely out is left as it is, and only one that would cut it is made to contain it. A crop's
`not_kept` names the regions it fails (`Regions.left_out`).

Regions are pixel boxes [x1, y1, x2, y2] of the upright photo, rounded outwards to whole pixels
and clipped to the photo; a region with no area inside the photo can never be kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Sequence

import numpy as np

from procrop_jax import box_geometry

Box = tuple[int, int, int, int]
# Every subset of at most this many regions is tried; beyond it, regions are added greedily.
_EXHAUSTIVE = 8


@dataclasses.dataclass(frozen=True)
class Regions:
  """A photo's keep regions [K, 4] (whole pixels, `as_regions`) and their tight forms [K, 4]:
  the least of each a crop must hold for it to count as kept (a face without its margins; the
  region itself for a user's box). `whole_or_out` bool [K] marks the regions (faces) a crop may
  also leave out entirely: only cutting them is refused (None: none of them)."""
  boxes: np.ndarray
  tight: np.ndarray
  whole_or_out: np.ndarray | None = None

  def __post_init__(self):
    flags = np.zeros(len(self.boxes), bool) if self.whole_or_out is None else self.whole_or_out
    object.__setattr__(self, "whole_or_out", np.asarray(flags, bool))

  def __len__(self) -> int:
    return len(self.boxes)

  def left_out(self, box: Sequence[float]) -> np.ndarray:
    """bool [K]: the regions the box fails: a region it does not contain, except a
    whole-or-out one it leaves (almost) entirely out, which it keeps whole in that sense."""
    outside = fraction_kept(box, self.tight) <= CUT_LOW
    return ~contained(box, self.tight) & ~(self.whole_or_out & outside)


def to_contain(regions: Regions, ratio: float | None, size: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The boxes [K', 4] candidates of the ratio are made to contain, those boxes' tight forms,
  and which of them are whole-or-out. The required ones are their keepable subset (or that of
  their tight forms where it keeps more of them); the whole-or-out ones all follow, contained
  only by a candidate that would otherwise cut them, so they never displace a required one."""
  required = np.nonzero(~regions.whole_or_out & valid(regions.boxes))[0]
  chosen = required[keepable_subset(regions.boxes[required], ratio, size)]
  form = regions.boxes
  if len(chosen) < len(required):
    tight = required[keepable_subset(regions.tight[required], ratio, size)]
    if len(tight) > len(chosen):
      chosen, form = tight, regions.tight
  optional = np.nonzero(regions.whole_or_out & valid(regions.boxes))[0]
  boxes = np.concatenate([form[chosen], regions.boxes[optional]]).reshape(-1, 4)
  tight_forms = np.concatenate([regions.tight[chosen], regions.tight[optional]]).reshape(-1, 4)
  return boxes, tight_forms, np.arange(len(boxes)) >= len(chosen)


def as_regions(regions: Sequence[Sequence[float]] | np.ndarray | None, size: tuple[int, int]
               ) -> np.ndarray:
  """Regions [K, 4] as whole pixels (rounded outwards) clipped to a (width, height) photo."""
  if regions is None or not len(regions):
    return np.zeros((0, 4), np.int64)
  boxes = box_geometry.as_boxes(regions, "keep regions")
  width, height = size
  out = np.stack([np.floor(boxes[:, 0]), np.floor(boxes[:, 1]),
                  np.ceil(boxes[:, 2]), np.ceil(boxes[:, 3])], axis=1)
  out = np.clip(out, 0, [width, height, width, height])
  return out.astype(np.int64)


def focus_region(x: float, y: float) -> tuple[float, float, float, float]:
  """A focal point as the one-pixel region a crop must contain."""
  return (math.floor(x), math.floor(y), math.floor(x) + 1, math.floor(y) + 1)


def valid(regions: np.ndarray) -> np.ndarray:
  """bool [K]: the regions with an area inside the photo (the only ones a crop can keep)."""
  regions = np.asarray(regions).reshape(-1, 4)
  return (regions[:, 2] > regions[:, 0]) & (regions[:, 3] > regions[:, 1])


def contained(box: Sequence[float], regions: np.ndarray) -> np.ndarray:
  """bool [K]: which regions lie inside the box (and have an area)."""
  regions = np.asarray(regions, np.float64).reshape(-1, 4)
  x1, y1, x2, y2 = (float(v) for v in box)
  inside = ((regions[:, 0] >= x1) & (regions[:, 1] >= y1)
            & (regions[:, 2] <= x2) & (regions[:, 3] <= y2))
  return inside & valid(regions)


def fraction_kept(box: Sequence[float], regions: np.ndarray) -> np.ndarray:
  """float [K]: the part of each region's area inside the box (0 for an empty region)."""
  regions = np.asarray(regions, np.float64).reshape(-1, 4)
  inside = box_geometry.pairwise_intersection(regions, box)[:, 0]
  area = (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1])
  return np.where(area > 0, inside / np.where(area > 0, area, 1.0), 0.0)


CUT_LOW, CUT_HIGH = 0.05, 0.95  # A region is cut when more than 5% but less than 95% is inside.


def cut(box: Sequence[float], regions: np.ndarray, *, low: float = CUT_LOW,
        high: float = CUT_HIGH) -> np.ndarray:
  """bool [K]: regions the box cuts: more than `low` but less than `high` of each inside it
  (issue 31's measure of a cut face)."""
  kept = fraction_kept(box, regions)
  return (kept > low) & (kept < high)


def _union(regions: np.ndarray) -> np.ndarray:
  return np.concatenate([regions[:, :2].min(0), regions[:, 2:].max(0)])


def _ratio_size(min_w: int, min_h: int, ratio: float | None, size: tuple[int, int]
                ) -> tuple[int, int] | None:
  """The smallest whole-pixel (w, h) >= (min_w, min_h) of the ratio (as `aspect.snap_box`
  rounds it: the longer side from the shorter) inside the photo; None if none fits."""
  width, height = size
  if ratio is None:
    w, h = max(min_w, 1), max(min_h, 1)
  elif ratio >= 1:
    h = max(min_h, math.ceil(min_w / ratio), 1)
    while round(h * ratio) < min_w:
      h += 1
    w = max(round(h * ratio), 1)
  else:
    w = max(min_w, math.ceil(min_h * ratio), 1)
    while round(w / ratio) < min_h:
      w += 1
    h = max(round(w / ratio), 1)
  return (w, h) if w <= width and h <= height else None


def fits(regions: np.ndarray, ratio: float | None, size: tuple[int, int]) -> bool:
  """Whether some box of the ratio inside the photo contains all the regions."""
  if not len(regions):
    return True
  u = _union(regions)
  return _ratio_size(int(u[2] - u[0]), int(u[3] - u[1]), ratio, size) is not None


def keepable_subset(regions: np.ndarray, ratio: float | None, size: tuple[int, int]
                    ) -> np.ndarray:
  """Indices of the most regions that one box of the ratio can contain, earlier ones first.

  With at most `_EXHAUSTIVE` valid regions, the first (in `itertools.combinations` order, so
  earlier regions win ties) of the largest subsets that fit; beyond, regions are added in order
  while they fit.
  """
  regions = np.asarray(regions).reshape(-1, 4)
  candidates = np.nonzero(valid(regions))[0]
  if fits(regions[candidates], ratio, size):
    return candidates
  if len(candidates) <= _EXHAUSTIVE:
    for count in range(len(candidates) - 1, 0, -1):
      for subset in itertools.combinations(candidates, count):
        if fits(regions[list(subset)], ratio, size):
          return np.array(subset, np.int64)
    return np.zeros((0,), np.int64)
  chosen: list[int] = []
  for i in candidates:
    if fits(regions[chosen + [int(i)]], ratio, size):
      chosen.append(int(i))
  return np.array(chosen, np.int64)


def _place(start: int, length: int, low: int, high: int, limit: int) -> int:
  """The start nearest `start` of a span of `length` that covers [low, high] inside [0, limit]."""
  lo, hi = max(high - length, 0), min(low, limit - length)
  return int(min(max(start, lo), hi))


def contain(box: Sequence[float], regions: np.ndarray, ratio: float | None,
            size: tuple[int, int]) -> Box | None:
  """The box moved, and grown (keeping the ratio) only as needed, to contain all the regions.

  Whole pixels inside the (width, height) photo; None when no box of the ratio there can.
  """
  x1, y1, x2, y2 = (int(round(float(v))) for v in box)
  if not len(regions):
    return (x1, y1, x2, y2)
  u = _union(np.asarray(regions).reshape(-1, 4)).astype(np.int64)
  shape = _ratio_size(max(x2 - x1, int(u[2] - u[0])), max(y2 - y1, int(u[3] - u[1])), ratio,
                      size)
  if shape is None:
    return None
  w, h = shape
  # Grown boxes keep their centre before being moved to cover the regions.
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  x = _place(round(cx - w / 2), w, int(u[0]), int(u[2]), size[0])
  y = _place(round(cy - h / 2), h, int(u[1]), int(u[3]), size[1])
  return (x, y, x + w, y + h)


def contain_whole_or_out(box: Sequence[float], keep: np.ndarray, tight: np.ndarray,
                         optional: np.ndarray, ratio: float | None, size: tuple[int, int]
                         ) -> Box | None:
  """The box made to contain the required regions of `keep` and every whole-or-out one whose
  tight form it (as grown) holds more than `CUT_LOW` of; the others it leaves out. Where the
  shape cannot hold a whole-or-out region it reaches, the box keeps the required ones only (and
  cuts it); None when not even those fit."""
  need = ~optional
  out = contain(box, keep[need], ratio, size)
  while out is not None:
    touched = optional & ~need & (fraction_kept(out, tight) > CUT_LOW)
    if not touched.any():
      return out
    grown = contain(box, keep[need | touched], ratio, size)
    if grown is None:
      return out
    need, out = need | touched, grown  # Growing to hold them may reach more: at most K rounds.
  return out


def constrain_each(boxes: np.ndarray, regions: Regions | np.ndarray, ratio: float | None,
                   size: tuple[int, int]) -> list[Box | None]:
  """Each of boxes [N, 4] made to contain what `to_contain` picks of the regions (its
  whole-or-out ones only where the box would cut them), None where the ratio cannot; the boxes
  as they are (whole pixels) without regions."""
  boxes = np.asarray(boxes).reshape(-1, 4)
  if not isinstance(regions, Regions):
    regions = Regions(np.asarray(regions).reshape(-1, 4), np.asarray(regions).reshape(-1, 4))
  if not valid(regions.boxes).any():
    return [tuple(int(v) for v in b) for b in boxes.astype(np.int64)]
  keep, tight, optional = to_contain(regions, ratio, size)  # Once for all the boxes.
  return [contain_whole_or_out(b, keep, tight, optional, ratio, size) for b in boxes]


def constrain(boxes: np.ndarray, regions: Regions | np.ndarray, ratio: float | None,
              size: tuple[int, int]) -> np.ndarray:
  """Distinct boxes [M, 4] (M <= N) of `constrain_each`, in the boxes' order, without the
  Nones."""
  out = constrain_each(boxes, regions, ratio, size)
  return np.array(list(dict.fromkeys(b for b in out if b is not None)), np.int64).reshape(-1, 4)
