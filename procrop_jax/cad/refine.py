"""Rules of a CAD refinement round: which of the model's proposals become extra annotation lines.

A CAD canvas has one pseudo-label, the frame of the professional photo. A refinement round
(`procrop_jax/refine_cad.py`, `main --mode=refine_cad`) lets the current model propose crops on the
canvas and keeps a few as extra boxes, so that the set teaches several good framings of one
composition instead of one. A proposal is kept when, in this order:

1. its score is above `min_score`;
2. its aspect ratio (width / height) is within `aspect_tolerance` (relative) of a common one,
   `ratios` or an inverse; the box is then snapped to exactly that ratio (same centre, whole
   pixels, inside the canvas: `aspect.snap_box`), and the rules below see the snapped box;
3. it overlaps the pseudo-label: IoU(snapped box, pseudo-label) > `min_label_iou`. IoU is the
   reading of "overlaps by more than 80%" that bounds both ways a crop can leave the
   professional's composition: IoU > t implies that more than a fraction t of the crop lies on
   the photo's real pixels (not the out-painted margin) and that it keeps more than t of the
   photo. Intersection over the crop's area alone would keep a small crop of a corner of the
   photo; intersection over the pseudo-label's area alone would keep a crop that is mostly
   out-painting;
4. it is not a near-duplicate: its IoU with the pseudo-label and with every box kept before it
   (proposals are visited best score first) is at most `duplicate_iou`. A copy of the
   pseudo-label adds nothing, so the pseudo-label counts as kept;
5. fewer than `max_boxes` were kept before it.

Everything here is a pure function of the pseudo-label and the proposals: a round that sees the
same proposals writes the same lines.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from procrop_jax import aspect
from procrop_jax import box_geometry

# Width / height; their inverses (portrait) are common too.
COMMON_RATIOS = (1.0, 5 / 4, 4 / 3, 7 / 5, 3 / 2, 16 / 9)


@dataclasses.dataclass(frozen=True)
class Rules:
  """What a proposal needs to become an extra annotation line (see the module docstring)."""
  ratios: tuple[float, ...] = COMMON_RATIOS
  aspect_tolerance: float = 0.03
  min_label_iou: float = 0.8
  min_score: float = 0.4
  duplicate_iou: float = 0.9
  max_boxes: int = 4

  @classmethod
  def from_config(cls, config: Mapping[str, Any] | None) -> "Rules":
    """From `config.refine`; fields it lacks (a run older than refinement) keep their defaults."""
    config = config or {}
    values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    if "ratios" in values:
      values["ratios"] = tuple(float(r) for r in values["ratios"])
    return cls(**values)


def snapped_ratio(box: Sequence[float], ratios: Sequence[float], tolerance: float
                  ) -> float | None:
  """The common ratio (or inverse) nearest `box`'s width / height, if within `tolerance`
  relative to it; else None."""
  x1, y1, x2, y2 = (float(v) for v in box)
  if x2 <= x1 or y2 <= y1:
    return None
  ratio = (x2 - x1) / (y2 - y1)
  targets = np.array(sorted(set(ratios) | {1 / r for r in ratios}))
  errors = np.abs(ratio / targets - 1.0)
  best = int(np.argmin(errors))
  return float(targets[best]) if errors[best] <= tolerance else None


def select(proposals_px: np.ndarray, scores: np.ndarray, label_px: Sequence[float],
           canvas_wh: tuple[int, int], rules: Rules = Rules()
           ) -> tuple[np.ndarray, np.ndarray]:
  """The proposals that become extra annotation lines, best first.

  Args:
    proposals_px: [N, 4] x1y1x2y2 pixel boxes on the canvas.
    scores: [N] the model's scores.
    label_px: the pseudo-label, x1y1x2y2 pixels.
    canvas_wh: the canvas's (width, height) in pixels.
    rules: the thresholds.

  Returns:
    (boxes [K, 4] int64 x1y1x2y2 whole pixels, snapped; scores [K] float64), K <= max_boxes.
  """
  proposals_px = np.asarray(proposals_px, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  kept_boxes: list[tuple[int, int, int, int]] = []
  kept_scores: list[float] = []
  taken = [tuple(float(v) for v in label_px)]  # Near-duplicates of these are dropped.
  for i in np.argsort(-scores, kind="stable"):
    if len(kept_boxes) >= rules.max_boxes:
      break
    if not scores[i] > rules.min_score:
      continue
    ratio = snapped_ratio(proposals_px[i], rules.ratios, rules.aspect_tolerance)
    if ratio is None:
      continue
    box = aspect.snap_box(proposals_px[i], canvas_wh, ratio)
    if not box_geometry.pairwise_box_iou(box, label_px)[0, 0] > rules.min_label_iou:
      continue
    if box_geometry.pairwise_box_iou(box, taken).max() > rules.duplicate_iou:
      continue
    kept_boxes.append(box)
    kept_scores.append(float(scores[i]))
    taken.append(box)
  return (np.asarray(kept_boxes, np.int64).reshape(-1, 4), np.asarray(kept_scores, np.float64))


def diversity(boxes_px: np.ndarray) -> float:
  """1 - the mean IoU over pairs of a canvas's boxes: 0 for one box (or identical ones)."""
  boxes_px = np.asarray(boxes_px, np.float64).reshape(-1, 4)
  if len(boxes_px) < 2:
    return 0.0
  iou = box_geometry.pairwise_box_iou(boxes_px, boxes_px)
  upper = np.triu_indices(len(boxes_px), k=1)
  return float(1.0 - iou[upper].mean())
