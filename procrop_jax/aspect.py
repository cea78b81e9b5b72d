"""Crops of a fixed aspect ratio: candidate boxes of exactly that ratio, chosen by the model.

Most requests fix the ratio (a 1:1 avatar, a 16:9 banner, a 4:5 post). The model proposes free
crops; a crop of a given ratio is chosen among candidate boxes of that ratio (to within a pixel)
by the given-box scoring path:

1. the grid: the largest box of the ratio inside the photo at `Candidates.grid_scales` scales,
   at `grid_positions` x `grid_positions` places;
2. the model's free proposals snapped to the ratio: for each, the largest box of the ratio inside
   it and the smallest one containing it (moved, or shrunk, into the photo), on its centre;
3. a local refinement of the best `refine_top` candidates of steps 1-2: each moved by every
   (scale, x shift, y shift) of `Candidates.refine_moves` (shifts in units of its size), scored
   in a second pass.

With keep regions (keep.py: a user's boxes, faces), every candidate of steps 1-3 is moved and
grown to contain them before it is scored.

Every pass scores a fixed number of boxes per request (short lists are padded by repeating), so
the forward pass compiles once whatever the photo and the ratio. `choose` is shared by the
`Cropper` and the aspect-conditioned evaluation protocol, so what is measured is what users get.
The decoder's cost grows with the number of boxes scored: `FAST` (the cropper's and the
evaluation's default) scores far fewer than `DENSE`; experiments/README.md has what each costs
and scores.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from procrop_jax import keep as keep_lib

Move = tuple[float, float, float]  # (scale, x shift, y shift) of a box, shifts in its size.


def cube_moves(scales: Sequence[float] = (0.94, 1.0, 1.06), shift: float = 0.04
               ) -> tuple[Move, ...]:
  """Every scale with every x and y shift of -shift, 0, +shift; the box itself left out."""
  return tuple((scale, dx, dy) for scale in scales for dy in (-shift, 0.0, shift)
               for dx in (-shift, 0.0, shift) if (scale, dx, dy) != (1.0, 0.0, 0.0))


def square_moves(scales: Sequence[float] = (0.94, 1.06), shift: float = 0.04
                 ) -> tuple[Move, ...]:
  """The 8 shifts around the box at its own scale, and the box scaled in place."""
  return (cube_moves((1.0,), shift)
          + tuple((scale, 0.0, 0.0) for scale in scales if scale != 1.0))


CUBE_MOVES = cube_moves()  # 26 neighbours.
SQUARE_MOVES = square_moves()  # 10 neighbours.


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Which candidate boxes of a ratio are scored (see the module docstring)."""
  grid_scales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
  grid_positions: int = 5
  refine_top: int = 3
  proposals: int | None = None  # The best-scored proposals snapped; None: all of them.
  refine_moves: tuple[Move, ...] = CUBE_MOVES

  @property
  def grid_count(self) -> int:
    # The largest box of a ratio (scale 1) spans the photo's width or height: it only moves
    # along the other side, to grid_positions distinct places.
    return sum(self.grid_positions if scale == 1.0 else self.grid_positions ** 2
               for scale in self.grid_scales)

  @property
  def refine_count(self) -> int:
    return self.refine_top * len(self.refine_moves)

  def snapped_count(self, num_proposals: int) -> int:
    """How many of `num_proposals` proposals are snapped to the ratio."""
    return num_proposals if self.proposals is None else min(self.proposals, num_proposals)

  def first_pass_count(self, num_proposals: int) -> int:
    """Boxes scored per request in the first pass (grid + snapped proposals)."""
    return self.grid_count + 2 * self.snapped_count(num_proposals)


DENSE = Candidates()
# 23 boxes per request instead of DENSE's 268, and as good on FCDB's validation slice
# (experiments/README.md): the snapped proposals and the local refinement find the crop; the
# grid rarely does.
FAST = Candidates(grid_scales=(1.0,), grid_positions=3, refine_top=1, proposals=5,
                  refine_moves=SQUARE_MOVES)

# score_fn(boxes [B, Q, 4] normalised xyxy) -> scores [B, Q]: the model's given-box path.
ScoreFn = Callable[[np.ndarray], np.ndarray]
Box = tuple[int, int, int, int]


def _place(centre: float, length: int, limit: int) -> int:
  return int(min(max(round(centre - length / 2), 0), limit - length))


def snap_box(box: Sequence[float], size: tuple[int, int], ratio: float | None = None) -> Box:
  """A pixel box [x1, y1, x2, y2] of a (width, height) photo as whole pixels inside it.

  With `ratio` the box keeps its centre and takes whole-pixel sides of that width / height: the
  longer side is rounded from the shorter (so the ratio holds to within half a pixel), shrunk if
  needed to fit the photo; at least 1 x 1.
  """
  width, height = size
  x1, y1, x2, y2 = (float(v) for v in box)
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  if ratio is None:
    w = min(max(round(x2 - x1), 1), width)
    h = min(max(round(y2 - y1), 1), height)
  elif ratio >= 1:
    h = min(max(round(y2 - y1), 1), height)
    h = min(h, max(int((width + 0.5) / ratio), 1))  # round(h * ratio) <= width.
    w = min(max(round(h * ratio), 1), width)
  else:
    w = min(max(round(x2 - x1), 1), width)
    w = min(w, max(int((height + 0.5) * ratio), 1))  # round(w / ratio) <= height.
    h = min(max(round(w / ratio), 1), height)
  x, y = _place(cx, w, width), _place(cy, h, height)
  return (x, y, x + w, y + h)


def _check_ratio(ratio: float) -> None:
  if not ratio > 0:
    raise ValueError(f"aspect ratio must be > 0 (width / height), got {ratio}")


def grid_candidates(ratio: float, size: tuple[int, int], *,
                    scales: Sequence[float] = DENSE.grid_scales,
                    positions: int = DENSE.grid_positions) -> np.ndarray:
  """Distinct whole-pixel boxes [M, 4] of a (width, height) photo with width / height = ratio.

  The largest box of that ratio inside the photo at each scale, at positions x positions places.
  M <= Candidates(scales, positions).grid_count (fewer where boxes coincide).
  """
  _check_ratio(ratio)
  width, height = size
  full_w = min(width, height * ratio)
  full_h = full_w / ratio
  boxes = []
  for scale in scales:
    w, h = full_w * scale, full_h * scale
    # A box that spans a side (within a pixel) has one place along it.
    places = lambda slack: np.linspace(0.0, 1.0, positions) if slack >= 1.0 else [0.5]
    for fy in places(height - h):
      for fx in places(width - w):
        x1, y1 = fx * (width - w), fy * (height - h)
        boxes.append(snap_box((x1, y1, x1 + w, y1 + h), size, ratio))
  return np.array(list(dict.fromkeys(boxes)), np.int64)  # Distinct, first-seen order.


def _centred(box: Sequence[float], w: float, h: float) -> tuple[float, float, float, float]:
  cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
  return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def proposal_candidates(proposals_px: np.ndarray, ratio: float, size: tuple[int, int]
                        ) -> np.ndarray:
  """[2N, 4] whole-pixel boxes of the ratio: the largest inside, and the smallest containing,
  each proposal [N, 4] (pixels), on its centre and inside the photo."""
  _check_ratio(ratio)
  boxes = []
  for box in np.asarray(proposals_px, np.float64).reshape(-1, 4):
    w, h = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    inner = (w, w / ratio) if w / h <= ratio else (h * ratio, h)
    outer = (h * ratio, h) if w / h <= ratio else (w, w / ratio)
    for bw, bh in (inner, outer):
      boxes.append(snap_box(_centred(box, bw, bh), size, ratio))
  return np.array(boxes, np.int64).reshape(-1, 4)


def refine_candidates(boxes_px: np.ndarray, ratio: float, size: tuple[int, int],
                      moves: Sequence[Move] = CUBE_MOVES) -> np.ndarray:
  """Whole-pixel boxes of the ratio near each box of [K, 4]: [K * len(moves), 4], the box
  scaled by each move's scale and shifted by its x and y shifts times the box's size."""
  out = []
  for box in np.asarray(boxes_px, np.float64).reshape(-1, 4):
    w, h = box[2] - box[0], box[3] - box[1]
    for scale, dx, dy in moves:
      moved = _centred(box + np.array([dx * w, dy * h] * 2), w * scale, h * scale)
      out.append(snap_box(moved, size, ratio))
  return np.array(out, np.int64).reshape(-1, 4)


def _fixed(boxes: np.ndarray, count: int) -> np.ndarray:
  """`boxes` [M, 4] repeated (or cut) to exactly `count` rows."""
  return np.resize(boxes, (count, 4))


def _normalised(boxes_px: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  width, height = size
  return boxes_px.astype(np.float64) / [width, height, width, height]


def choose(score_fn: ScoreFn, proposals_px: Sequence[np.ndarray],
           sizes: Sequence[tuple[int, int]], ratios: Sequence[Sequence[float]], *,
           candidates: Candidates = DENSE, refine: bool = True,
           proposal_scores: Sequence[np.ndarray] | None = None,
           keep: Sequence[keep_lib.Regions | np.ndarray] | None = None
           ) -> list[list[tuple[np.ndarray, np.ndarray]]]:
  """Scored candidate crops of each requested ratio for a batch of photos.

  Args:
    score_fn: the given-box scores of a batch, [B, Q, 4] normalised -> [B, Q].
    proposals_px: per photo, the model's free proposals [N, 4] in pixels (same N for all).
    sizes: per photo, (width, height).
    ratios: per photo, the requested width / height ratios (the same count for every photo).
    candidates: which boxes to score.
    refine: also score the neighbours of the best `candidates.refine_top` (a second pass).
    proposal_scores: per photo, the proposals' own scores [N], needed when
      `candidates.proposals` keeps only the best of them.
    keep: per photo, keep regions (`keep.Regions`, or whole-pixel boxes [K, 4]): every
      candidate is moved and grown to contain them, or the most of them one box of the ratio
      can (`keep.constrain`).

  Returns:
    Per photo, per ratio: (boxes [M, 4] whole pixels, distinct, of that ratio; scores [M]),
    best first.
  """
  num_ratios = len(ratios[0])
  if any(len(r) != num_ratios for r in ratios):
    raise ValueError("every photo must ask for the same number of ratios")
  num_proposals = len(proposals_px[0])
  snapped = candidates.snapped_count(num_proposals)
  if snapped < num_proposals:
    if proposal_scores is None:
      raise ValueError("candidates.proposals keeps the best proposals: pass proposal_scores")
    proposals_px = [np.asarray(p)[np.argsort(-np.asarray(s), kind="stable")[:snapped]]
                    for p, s in zip(proposals_px, proposal_scores)]
  count = candidates.first_pass_count(num_proposals)
  pools = []  # [photo][ratio] -> distinct boxes
  given = np.zeros((len(sizes), num_ratios * count, 4))
  for i, size in enumerate(sizes):
    pools.append([])
    for j, ratio in enumerate(ratios[i]):
      boxes = np.concatenate([grid_candidates(ratio, size, scales=candidates.grid_scales,
                                              positions=candidates.grid_positions),
                              proposal_candidates(proposals_px[i], ratio, size)])
      boxes = np.array(list(dict.fromkeys(map(tuple, boxes.tolist()))), np.int64)
      if keep is not None:
        boxes = keep_lib.constrain(boxes, keep[i], ratio, size)
      pools[i].append(boxes)
      given[i, j * count:(j + 1) * count] = _normalised(_fixed(boxes, count), size)
  scores = np.asarray(score_fn(given), np.float64)
  pooled = [[(pools[i][j], scores[i, j * count:j * count + len(pools[i][j])])
             for j in range(num_ratios)] for i in range(len(sizes))]

  refine_count = candidates.refine_count
  if refine and refine_count:
    given = np.zeros((len(sizes), num_ratios * refine_count, 4))
    extra = []
    for i, size in enumerate(sizes):
      extra.append([])
      for j, ratio in enumerate(ratios[i]):
        boxes, s = pooled[i][j]
        best = boxes[np.argsort(-s, kind="stable")[:candidates.refine_top]]
        near = refine_candidates(best, ratio, size, candidates.refine_moves)
        if keep is not None:
          near = keep_lib.constrain(near, keep[i], ratio, size)
        extra[i].append(near)
        block = slice(j * refine_count, (j + 1) * refine_count)
        given[i, block] = _normalised(_fixed(near, refine_count), size)
    scores = np.asarray(score_fn(given), np.float64)
    for i in range(len(sizes)):
      for j in range(num_ratios):
        near = extra[i][j]
        s = scores[i, j * refine_count:j * refine_count + len(near)]
        boxes, old = pooled[i][j]
        pooled[i][j] = (np.concatenate([boxes, near]), np.concatenate([old, s]))

  out = []
  for per_photo in pooled:
    out.append([])
    for boxes, s in per_photo:
      unique = {}
      for box, score in zip(map(tuple, boxes.tolist()), s):
        unique[box] = max(score, unique.get(box, -np.inf))
      order = sorted(unique, key=lambda b: -unique[b])
      out[-1].append((np.array(order, np.int64).reshape(-1, 4),
                      np.array([unique[b] for b in order], np.float64)))
  return out
