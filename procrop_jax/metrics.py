"""Evaluation protocols for aesthetic image cropping, in exact float64 numpy.

Three protocols are in use in the cropping literature, and papers' code differs in details that
change the numbers. Each one is implemented here after a named reference, and every choice that
is not fixed by the reference is stated where it is made.

* FCDB / FLMS / SACD (`IoUProtocol`): the top-1 box against one or several ground-truth boxes:
  IoU (best over ground truths), boundary displacement error (BDE) against the same ground truth,
  and the best IoU among the top-k boxes (proposal recall).
* GAICD / CPC proposal protocol as used by ProCrop (`ProposalProtocol`): Acc5 / Acc10 at IoU
  thresholds tau, and COCO-style mAP over the good ground-truth crops.
* GAIC ranking protocol (`RankingProtocol`): the model scores the annotated candidate crops;
  Acc_{K/N}, wAcc_{K/N}, SRCC and PCC against the mean opinion scores (MOS).
* Pairwise preferences (`PairwiseProtocol`, FCDB's ranking annotations): the fraction of rated
  crop pairs whose preferred crop the model scores higher.

The aspect-conditioned variant of the IoU protocol (the crop asked for with the ground truth's
aspect ratio, as a cropper that must be told a size is used) reuses `IoUProtocol`; see
evaluate.py.

Conventions at every public function:

* Boxes are `[x1, y1, x2, y2]` in pixels of the original image (names end in `_px`), in
  continuous coordinates: width = x2 - x1, area = (x2 - x1) * (y2 - y1). There is no MATLAB-style
  "+ 1" on widths, as in the Python reference code of all three protocols. Boxes are not clipped
  to the image. A box with x2 < x1 or y2 < y1 is an error (ValueError); a zero-area box is
  allowed and has IoU 0 with everything.
* Image sizes are `(height, width)` in pixels, the order of an image array's shape.
* IoU is unchanged when x and y are scaled independently, so the IoU-only metrics (everything but
  BDE) give the same result for normalised boxes, as long as predictions and ground truth share a
  frame. BDE needs pixels plus the image size, or normalised boxes plus image size (1, 1).
* All rates are fractions in [0, 1] (papers print them as percentages).
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from procrop_jax import box_geometry

# COCO's thresholds, built exactly as pycocotools.cocoeval.Params does (np.linspace without
# rounding), so that an IoU that lands on a threshold is decided the same way.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1,
                                  endpoint=True)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1,
                                     endpoint=True)


# ----------------------------------------------------------------------------------------------
# Boxes.
# ----------------------------------------------------------------------------------------------


def _as_image_size(image_size: ArrayLike) -> tuple[float, float]:
  hw = np.asarray(image_size, dtype=np.float64).reshape(-1)
  if hw.shape != (2,) or not np.all(np.isfinite(hw)) or np.any(hw <= 0):
    raise ValueError(f"image_size must be positive (height, width), got {image_size}")
  return float(hw[0]), float(hw[1])


def boundary_displacement(boxes1_px: ArrayLike, boxes2_px: ArrayLike,
                          image_size: ArrayLike) -> np.ndarray:
  """Pairwise boundary displacement error.

  BDE(a, b) = (|a.x1 - b.x1| / W + |a.x2 - b.x2| / W + |a.y1 - b.y1| / H + |a.y2 - b.y2| / H) / 4,
  the mean over the four edges of the edge displacement, x edges divided by the image width W
  and y edges by the height H (Yan et al., "Learning the change for automatic image cropping",
  CVPR 2013; the same formula as the FCDB/FLMS evaluation code of VPN, GAIC, CACNet and HCIC).

  Args:
    boxes1_px: [N, 4] (or [4]) boxes `[x1, y1, x2, y2]`, pixels.
    boxes2_px: [M, 4] (or [4]) boxes, pixels.
    image_size: (height, width) of the image in pixels.

  Returns:
    [N, M] float64.
  """
  height, width = _as_image_size(image_size)
  a = box_geometry.as_boxes(boxes1_px, "boxes1_px")[:, None, :]
  b = box_geometry.as_boxes(boxes2_px, "boxes2_px")[None, :, :]
  d = np.abs(a - b)
  return ((d[..., 0] + d[..., 2]) / width + (d[..., 1] + d[..., 3]) / height) / 4.0


def iou_and_bde(pred_box_px: ArrayLike, gt_boxes_px: ArrayLike,
                image_size: ArrayLike) -> tuple[float, float, int]:
  """IoU and BDE of one predicted box against one or several ground truths.

  IoU = max_g IoU(p, g). BDE = BDE(p, g*) for the ground truth g* that gave that IoU, as in the
  FLMS protocol (Chen et al., "Automatic image cropping: a computational complexity study",
  CVPR 2016; code of HCIC, Zhang et al. CVPR 2022, `compute_iou_and_disp`). When several ground
  truths share the maximum IoU exactly, g* is the one of them with the smallest BDE (then the
  first). HCIC's code takes the globally smallest-BDE ground truth if its IoU equals the maximum,
  else the first maximum; the two rules differ only when two or more ground truths tie on the
  best IoU and the globally closest one is not among them.

  Args:
    pred_box_px: [4] predicted box, pixels.
    gt_boxes_px: [G, 4] (or [4]) ground-truth boxes, pixels.
    image_size: (height, width) in pixels.

  Returns:
    (iou, bde, index of g* in gt_boxes_px).
  """
  pred = box_geometry.as_boxes(pred_box_px, "pred_box_px")
  if pred.shape[0] != 1:
    raise ValueError(f"pred_box_px: expected one box, got {pred.shape[0]}")
  gts = box_geometry.as_boxes(gt_boxes_px, "gt_boxes_px")
  if gts.shape[0] == 0:
    raise ValueError("gt_boxes_px: no ground-truth box")
  ious = box_geometry.pairwise_box_iou(pred, gts)[0]
  bdes = boundary_displacement(pred, gts, image_size)[0]
  tied = np.flatnonzero(ious == ious.max())
  g = int(tied[np.argmin(bdes[tied])])
  return float(ious[g]), float(bdes[g]), g


def best_iou_top_k(pred_boxes_px: ArrayLike, gt_boxes_px: ArrayLike, k: int) -> float:
  """max over the first k predicted boxes and all ground truths of IoU (proposal recall).

  Args:
    pred_boxes_px: [N, 4] predicted boxes in rank order (best first), pixels. With N < k all N
      are used.
    gt_boxes_px: [G, 4] ground-truth boxes, pixels.
    k: how many top predictions count.
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  preds = box_geometry.as_boxes(pred_boxes_px, "pred_boxes_px")[:k]
  gts = box_geometry.as_boxes(gt_boxes_px, "gt_boxes_px")
  if preds.shape[0] == 0 or gts.shape[0] == 0:
    raise ValueError("best_iou_top_k needs at least one prediction and one ground truth")
  return float(box_geometry.pairwise_box_iou(preds, gts).max())


def _descending_order(scores: np.ndarray) -> np.ndarray:
  """Indices by descending score; ties keep input order.

  This is Python's `sorted(..., reverse=True)` order (stable), which the GAIC reference code
  uses, and pycocotools' `np.argsort(-scores, kind='mergesort')`.
  """
  return np.argsort(-scores, kind="stable")


def _as_scores(scores: ArrayLike, n: int, name: str) -> np.ndarray:
  s = np.asarray(scores, dtype=np.float64).reshape(-1)
  if s.shape[0] != n:
    raise ValueError(f"{name}: expected {n} scores, got {s.shape[0]}")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name}: scores must be finite")
  return s


# ----------------------------------------------------------------------------------------------
# GAICD / CPC proposal protocol.
# ----------------------------------------------------------------------------------------------


def select_positive_crops(gt_mos: ArrayLike, *, mos_threshold: float | None = 4.0,
                          top_k: int | None = None) -> np.ndarray:
  """Which annotated crops of a GAICD image count as ground truth for mAP.

  Follows Jia et al., "Rethinking image cropping: exploring diverse compositions from global
  views", CVPR 2022 (`datasets/gaic.py`, `prepare_original_data`, whose defaults ProCrop keeps):
  the crops with MOS >= mos_threshold (default 4.0, their `--good_thresh`), or, with top_k set
  instead, the top_k crops by MOS (ties broken by annotation order). If no crop passes the
  threshold, all crops that share the maximum MOS are used. Their optional NMS over the good
  crops is off by default (`--nms_thresh 0`) and is not implemented.

  Args:
    gt_mos: [G] mean opinion scores.
    mos_threshold: MOS a crop needs; None to use top_k.
    top_k: number of best crops; None to use mos_threshold.

  Returns:
    Sorted indices into gt_mos.
  """
  mos = np.asarray(gt_mos, dtype=np.float64).reshape(-1)
  if mos.size == 0:
    raise ValueError("gt_mos is empty")
  if (mos_threshold is None) == (top_k is None):
    raise ValueError("set exactly one of mos_threshold and top_k")
  if top_k is not None:
    if top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {top_k}")
    return np.sort(_descending_order(mos)[:top_k])
  keep = np.flatnonzero(mos >= mos_threshold)
  if keep.size == 0:
    keep = np.flatnonzero(mos == mos.max())
  return keep


def best_crop_indices(gt_mos: ArrayLike, *, ties: str = "any") -> np.ndarray:
  """The best-scored crop(s) of an image, against which Acc5 / Acc10 are measured.

  Args:
    gt_mos: [G] mean opinion scores.
    ties: "any": every crop whose MOS equals the maximum (a prediction hits if it matches any of
      them); "first": only the first of those in annotation order. Jia et al.'s code takes
      whichever tied crop `torch.sort` puts first, which is not specified; 490 of GAICD's 1236
      images have a tie for the best MOS, so this choice moves Acc.

  Returns:
    Sorted indices into gt_mos.
  """
  mos = np.asarray(gt_mos, dtype=np.float64).reshape(-1)
  if mos.size == 0:
    raise ValueError("gt_mos is empty")
  best = np.flatnonzero(mos == mos.max())
  if ties == "any":
    return best
  if ties == "first":
    return best[:1]
  raise ValueError(f"ties must be 'any' or 'first', got {ties!r}")


def proposal_hit(pred_boxes_px: ArrayLike, best_boxes_px: ArrayLike, *, k: int,
                 tau: float) -> bool:
  """Whether any of the top-k predictions reaches IoU >= tau with a best crop.

  Acc_k at tau (Jia et al. CVPR 2022, `gaic_evaluator.get_acc`) is the share of images where this
  holds.

  Args:
    pred_boxes_px: [N, 4] predictions in rank order (best first), pixels; N < k uses all N, and
      N = 0 never hits.
    best_boxes_px: [B, 4] the best-scored ground-truth crop(s), pixels (`best_crop_indices`).
    k: number of top predictions.
    tau: IoU threshold (inclusive).
  """
  preds = box_geometry.as_boxes(np.asarray(pred_boxes_px, dtype=np.float64).reshape(-1, 4),
                    "pred_boxes_px")[:k]
  if preds.shape[0] == 0:
    return False
  return bool(np.any(box_geometry.pairwise_box_iou(preds, best_boxes_px) >= tau))


def match_detections(ious: np.ndarray, iou_thresholds: Sequence[float]) -> np.ndarray:
  """COCO's greedy matching of score-sorted detections to ground truths, per IoU threshold.

  As in pycocotools `COCOeval.evaluateImg` (no crowd or ignored boxes): detections in the given
  order each take, among ground truths not yet taken, the one with the highest IoU provided that
  IoU >= threshold (capped at 1 - 1e-10); on an exact IoU tie the later ground truth wins,
  as in pycocotools.

  Args:
    ious: [D, G] IoU of detections (sorted by descending score) with ground truths.
    iou_thresholds: [T] thresholds.

  Returns:
    [T, D] bool, True where the detection is a true positive.
  """
  ious = np.asarray(ious, dtype=np.float64)
  num_det, num_gt = ious.shape
  matched = np.zeros((len(iou_thresholds), num_det), dtype=bool)
  for t, threshold in enumerate(iou_thresholds):
    taken = np.zeros(num_gt, dtype=bool)
    threshold = min(float(threshold), 1 - 1e-10)
    for d in range(num_det):
      candidates = np.where(~taken & (ious[d] >= threshold), ious[d], -np.inf)
      if num_gt == 0 or not np.isfinite(candidates.max()):
        continue
      g = num_gt - 1 - int(np.argmax(candidates[::-1]))  # last index of the maximum
      taken[g] = True
      matched[t, d] = True
  return matched


def average_precision(matched: np.ndarray, scores: np.ndarray, num_gt: int, *,
                      recall_thresholds: np.ndarray = COCO_RECALL_THRESHOLDS) -> np.ndarray:
  """COCO's 101-point interpolated average precision, per IoU threshold.

  As pycocotools `COCOeval.accumulate`: all detections of all images are sorted by descending
  score (stable, so ties keep image order then rank order); precision is made monotone from the
  right; at each recall threshold r, precision is taken at the first detection whose recall
  reaches r, and is 0 where recall never reaches r. AP is the mean of the 101 values.
  (pycocotools divides by tp + fp + eps; tp + fp >= 1 here, so the eps, which only moves the
  last bit, is left out and a perfect ranking gives exactly 1.)

  Args:
    matched: [T, D] true-positive flags of all detections (`match_detections` per image,
      concatenated).
    scores: [D] their scores.
    num_gt: total number of ground truths.
    recall_thresholds: [R] recall points.

  Returns:
    [T] AP per IoU threshold; nan where num_gt == 0.
  """
  matched = np.asarray(matched, dtype=bool)
  if num_gt == 0:
    return np.full(matched.shape[0], np.nan)
  order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
  tp = np.cumsum(matched[:, order], axis=1, dtype=np.float64)
  fp = np.cumsum(~matched[:, order], axis=1, dtype=np.float64)
  aps = np.zeros(matched.shape[0])
  for t in range(matched.shape[0]):
    if tp.shape[1] == 0:
      continue
    recall = tp[t] / num_gt
    precision = np.maximum.accumulate((tp[t] / (tp[t] + fp[t]))[::-1])[::-1]
    idx = np.searchsorted(recall, recall_thresholds, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    aps[t] = sampled.mean()
  return aps


# ----------------------------------------------------------------------------------------------
# GAIC ranking protocol.
# ----------------------------------------------------------------------------------------------


def _check_ranking_inputs(pred_scores: ArrayLike, mos: ArrayLike, k: int,
                          n: int) -> tuple[np.ndarray, np.ndarray]:
  m = np.asarray(mos, dtype=np.float64).reshape(-1)
  if not np.all(np.isfinite(m)):
    raise ValueError("mos must be finite")
  p = _as_scores(pred_scores, m.shape[0], "pred_scores")
  if not 1 <= k <= n <= m.shape[0]:
    raise ValueError(f"need 1 <= K <= N <= number of crops, got K={k}, N={n}, {m.shape[0]} crops")
  return p, m


def ranking_accuracy(pred_scores: ArrayLike, mos: ArrayLike, *, k: int, n: int) -> float:
  """Acc_{K/N} of one image: the share of the top-K predicted crops that are in the top N by MOS.

  Zeng et al., "Reliable and efficient image cropping: a grid anchor based approach", CVPR 2019,
  and "Grid anchor based image cropping: a new benchmark and an efficient model", TPAMI 2020:
  Acc_{K/N} = 1/(T K) sum_i sum_{j=1..K} [c_ij in S_i(N)], averaged over T images by the caller.
  As in their code (`TrainModel.py`, `test`): the top K are taken by descending predicted score
  with ties in annotation order, and "in the top N" is MOS(c) >= the N-th largest MOS, so crops
  that tie with the N-th crop count.

  Args:
    pred_scores: [C] predicted scores of the annotated candidate crops.
    mos: [C] their mean opinion scores.
    k: K, number of returned crops.
    n: N, size of the reference set.
  """
  p, m = _check_ranking_inputs(pred_scores, mos, k, n)
  nth_best_mos = m[_descending_order(m)[n - 1]]
  top_k = _descending_order(p)[:k]
  return float(np.count_nonzero(m[top_k] >= nth_best_mos)) / k


def weighted_ranking_accuracy(pred_scores: ArrayLike, mos: ArrayLike, *, k: int, n: int,
                              beta: float = 1.0) -> float:
  """wAcc_{K/N} of one image: Acc_{K/N} weighted by how far each returned crop is from its rank.

  Zeng et al. TPAMI 2020, eq. (7): with r_1 <= ... <= r_K the MOS ranks of the K returned crops
  (0-based position in the descending-MOS order, ties in annotation order), sorted ascending,
      wAcc_{K/N} = 1/K sum_{j=0..K-1} [r_j < N] exp(-beta (r_j - j) / N),   beta = 1.
  This is exactly their code: `exp(-0.2 (r - j))` for N = 5 and `exp(-0.1 (r - j))` for N = 10.
  Unlike Acc, membership here uses the rank, not MOS ties: a crop that ties with the N-th MOS but
  sorts after it does not count.

  Args:
    pred_scores: [C] predicted scores of the annotated candidate crops.
    mos: [C] their mean opinion scores.
    k: K, number of returned crops.
    n: N, size of the reference set.
    beta: decay, 1 in the reference.
  """
  p, m = _check_ranking_inputs(pred_scores, mos, k, n)
  rank_of = np.empty(m.shape[0], dtype=np.int64)
  rank_of[_descending_order(m)] = np.arange(m.shape[0])
  ranks = np.sort(rank_of[_descending_order(p)[:k]])
  j = np.arange(k)
  weights = np.exp(-beta * (ranks - j) / n)
  return float(np.sum(np.where(ranks < n, weights, 0.0))) / k


def _stats():
  # Imported on first use: scipy.stats adds ~0.75 s to the start-up of `procrop crop`, which
  # imports this module for its box functions; only the ranking correlations need it.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return stats


def average_ranks(x: ArrayLike) -> np.ndarray:
  """1-based ranks, ties get the mean of their ranks (scipy.stats.rankdata, method='average')."""
  return _stats().rankdata(np.asarray(x, dtype=np.float64).reshape(-1), method="average")


def _as_pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, dtype=np.float64).reshape(-1)
  y = np.asarray(y, dtype=np.float64).reshape(-1)
  if x.shape != y.shape or x.size < 2:
    raise ValueError(f"need two equal-length inputs of length >= 2, got {x.size} and {y.size}")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError("inputs must be finite")
  return x, y


def pearson(x: ArrayLike, y: ArrayLike) -> float:
  """Pearson correlation (scipy.stats.pearsonr); nan when either input is constant."""
  x, y = _as_pair(x, y)
  if np.ptp(x) == 0 or np.ptp(y) == 0:  # Undefined; scipy would also warn.
    return math.nan
  return float(np.clip(_stats().pearsonr(x, y)[0], -1.0, 1.0))


def spearman(x: ArrayLike, y: ArrayLike) -> float:
  """Spearman rank correlation with average ranks for ties (scipy.stats.spearmanr); nan when
  either input is constant."""
  x, y = _as_pair(x, y)
  if np.ptp(x) == 0 or np.ptp(y) == 0:
    return math.nan
  return float(np.clip(_stats().spearmanr(x, y)[0], -1.0, 1.0))


# ----------------------------------------------------------------------------------------------
# Dataset-level accumulators.
# ----------------------------------------------------------------------------------------------


class _Protocol:
  """Shared bookkeeping: one `add` per image, ids unique, `per_image` kept for inspection."""

  def __init__(self) -> None:
    self.per_image: dict[Any, dict[str, float]] = {}

  def _register(self, image_id: Any, record: dict[str, float]) -> None:
    if image_id in self.per_image:
      raise ValueError(f"image {image_id!r} was already added")
    self.per_image[image_id] = record

  def _mean(self, key: str) -> float:
    return float(np.mean([r[key] for r in self.per_image.values()]))

  def _require_images(self) -> None:
    if not self.per_image:
      raise ValueError(f"{type(self).__name__}.result() called before any add()")

  def __len__(self) -> int:
    return len(self.per_image)


class IoUProtocol(_Protocol):
  """FCDB / FLMS / SACD protocol: IoU and BDE of the top-1 crop, best IoU of the top k.

  Per image (`iou_and_bde`, `best_iou_top_k`), then the plain mean over images, as in the
  reference code (sum / count). Result keys:
    iou: mean of max_g IoU(top-1, g).
    bde: mean BDE of the top-1 against the ground truth that gave its IoU.
    iou_top{k}: mean of max over the top-k predictions and all g of IoU, for each k in top_ks.
    num_images.
  """

  def __init__(self, *, top_ks: Sequence[int] = (5, 10)) -> None:
    super().__init__()
    self.top_ks = tuple(int(k) for k in top_ks)

  def add(self, image_id: Any, pred_boxes_px: ArrayLike, gt_boxes_px: ArrayLike,
          image_size: ArrayLike, *, pred_scores: ArrayLike | None = None) -> dict[str, float]:
    """Adds one image.

    Args:
      image_id: any hashable, unique per image.
      pred_boxes_px: [N, 4] (or [4]) predicted boxes, pixels. In rank order (best first) unless
        pred_scores is given, in which case they are sorted by descending score (ties keep order).
      gt_boxes_px: [G, 4] (or [4]) ground-truth boxes, pixels.
      image_size: (height, width) in pixels.
      pred_scores: optional [N] scores of the predictions.

    Returns:
      This image's values (also kept in `per_image`).
    """
    preds = box_geometry.as_boxes(pred_boxes_px, "pred_boxes_px")
    if preds.shape[0] == 0:
      raise ValueError("pred_boxes_px: no predicted box")
    if pred_scores is not None:
      preds = preds[_descending_order(_as_scores(pred_scores, preds.shape[0], "pred_scores"))]
    iou, bde, _ = iou_and_bde(preds[0], gt_boxes_px, image_size)
    record = {"iou": iou, "bde": bde}
    for k in self.top_ks:
      record[f"iou_top{k}"] = best_iou_top_k(preds, gt_boxes_px, k)
    self._register(image_id, record)
    return record

  def result(self) -> dict[str, float]:
    self._require_images()
    keys = ["iou", "bde"] + [f"iou_top{k}" for k in self.top_ks]
    out = {key: self._mean(key) for key in keys}
    out["num_images"] = len(self.per_image)
    return out


class ProposalProtocol(_Protocol):
  """GAICD / CPC proposal protocol as used by ProCrop (after Jia et al. CVPR 2022).

  Acc_k at tau: the share of images where any of the top-k predictions (by descending score)
  has IoU >= tau with the best-scored ground-truth crop (`proposal_hit`, `best_crop_indices`).
  mAP: COCO-style over the positive ground-truth crops of all images (`select_positive_crops`):
  greedy matching per image in score order (`match_detections`), at most max_detections per image,
  101-point interpolated AP over all images pooled (`average_precision`), averaged over the IoU
  thresholds 0.50:0.05:0.95. Jia et al.'s own evaluator reports AP at single high thresholds
  (0.85 to 0.95) instead; those are given as ap_tau{t}.

  Result keys (t formatted with two decimals, e.g. "0.90"):
    acc{k}: Acc_k at the first tau of taus (0.85 by default), for each k in ks (acc5, acc10).
    acc{k}_tau{t}: Acc_k at every tau (acc5_tau0.85, acc5_tau0.90, acc10_tau0.85, ...).
    map: mean AP over map_iou_thresholds.
    ap_tau{t}: AP at each single tau in taus.
    num_images, num_positives (total ground-truth crops for mAP).
  """

  def __init__(self, *, ks: Sequence[int] = (5, 10), taus: Sequence[float] = (0.85, 0.90),
               mos_threshold: float | None = 4.0, positive_top_k: int | None = None,
               best_ties: str = "any",
               map_iou_thresholds: Sequence[float] = tuple(COCO_IOU_THRESHOLDS),
               max_detections: int | None = 100) -> None:
    """See the class docstring; mos_threshold / positive_top_k go to `select_positive_crops`,
    best_ties to `best_crop_indices`; max_detections None keeps all predictions."""
    super().__init__()
    self.ks = tuple(int(k) for k in ks)
    self.taus = tuple(float(t) for t in taus)
    if not self.ks or not self.taus:
      raise ValueError("ks and taus must be non-empty")
    if (mos_threshold is None) == (positive_top_k is None):
      raise ValueError("set exactly one of mos_threshold and positive_top_k "
                       "(mos_threshold=None to select by positive_top_k)")
    best_crop_indices([0.0], ties=best_ties)  # validates the name early
    self.mos_threshold = mos_threshold
    self.positive_top_k = positive_top_k
    self.best_ties = best_ties
    self.map_iou_thresholds = tuple(float(t) for t in map_iou_thresholds)
    self.max_detections = max_detections
    self._thresholds = self.map_iou_thresholds + self.taus
    self._matched: list[np.ndarray] = []
    self._scores: list[np.ndarray] = []
    self._num_positives = 0

  def add(self, image_id: Any, pred_boxes_px: ArrayLike, pred_scores: ArrayLike,
          gt_boxes_px: ArrayLike, gt_mos: ArrayLike | None = None) -> dict[str, float]:
    """Adds one image.

    Args:
      image_id: any hashable, unique per image.
      pred_boxes_px: [N, 4] predicted boxes, pixels (N may be 0).
      pred_scores: [N] their scores; predictions are ranked by descending score, ties in order.
      gt_boxes_px: [G, 4] all annotated crops of the image, pixels.
      gt_mos: [G] their mean opinion scores, or None when all crops are equally good (e.g. FLMS
        expert crops): then every crop is both positive and best.

    Returns:
      This image's hits (1.0 / 0.0 per `acc{k}_tau{t}`) and its number of positives.
    """
    preds = box_geometry.as_boxes(np.asarray(pred_boxes_px, dtype=np.float64).reshape(-1, 4),
                      "pred_boxes_px")
    scores = _as_scores(pred_scores, preds.shape[0], "pred_scores")
    gts = box_geometry.as_boxes(gt_boxes_px, "gt_boxes_px")
    if gts.shape[0] == 0:
      raise ValueError("gt_boxes_px: no ground-truth crop")
    if gt_mos is None:
      best = positives = np.arange(gts.shape[0])
    else:
      mos = _as_scores(gt_mos, gts.shape[0], "gt_mos")
      best = best_crop_indices(mos, ties=self.best_ties)
      positives = select_positive_crops(mos, mos_threshold=self.mos_threshold,
                                        top_k=self.positive_top_k)
    order = _descending_order(scores)
    preds, scores = preds[order], scores[order]

    record = {}
    for k in self.ks:
      for tau in self.taus:
        record[f"acc{k}_tau{tau:.2f}"] = float(proposal_hit(preds, gts[best], k=k, tau=tau))
    record["num_positives"] = float(positives.size)

    if self.max_detections is not None:
      preds, scores = preds[:self.max_detections], scores[:self.max_detections]
    ious = box_geometry.pairwise_box_iou(preds, gts[positives])
    self._register(image_id, record)
    self._matched.append(match_detections(ious, self._thresholds))
    self._scores.append(scores)
    self._num_positives += positives.size
    return record

  def result(self) -> dict[str, float]:
    self._require_images()
    out = {}
    for k in self.ks:
      out[f"acc{k}"] = self._mean(f"acc{k}_tau{self.taus[0]:.2f}")
    for k in self.ks:
      for tau in self.taus:
        out[f"acc{k}_tau{tau:.2f}"] = self._mean(f"acc{k}_tau{tau:.2f}")
    aps = average_precision(np.concatenate(self._matched, axis=1),
                            np.concatenate(self._scores), self._num_positives)
    num_map = len(self.map_iou_thresholds)
    out["map"] = float(aps[:num_map].mean()) if num_map else math.nan
    for tau, ap in zip(self.taus, aps[num_map:]):
      out[f"ap_tau{tau:.2f}"] = float(ap)
    out["num_images"] = len(self.per_image)
    out["num_positives"] = self._num_positives
    return out


class RankingProtocol(_Protocol):
  """GAIC ranking protocol (Zeng et al. CVPR 2019 / TPAMI 2020) over the annotated candidates.

  Per image: `ranking_accuracy`, `weighted_ranking_accuracy`, `spearman` and `pearson` of the
  predicted scores against the MOS; then the mean over images, as the reference does.

  SRCC / PCC are undefined (nan) for an image whose predictions or MOS are constant. With
  undefined_correlation="exclude" (default) such images are left out of the srcc / pcc means
  (and counted in num_undefined_srcc / num_undefined_pcc); with "zero" they count as 0. The
  reference code would return nan for the whole set.

  Result keys:
    srcc, pcc.
    acc_{K}_{N}, wacc_{K}_{N} for K = 1..4 and N = 5, 10 (e.g. acc_1_5, wacc_4_10).
    acc_mean_{N}, wacc_mean_{N}: means over K = 1..4 (the papers' \\bar{Acc}_N, \\bar{wAcc}_N).
    num_images, num_undefined_srcc, num_undefined_pcc.
  """

  def __init__(self, *, ks: Sequence[int] = (1, 2, 3, 4), ns: Sequence[int] = (5, 10),
               undefined_correlation: str = "exclude") -> None:
    super().__init__()
    if undefined_correlation not in ("exclude", "zero"):
      raise ValueError(f"undefined_correlation must be 'exclude' or 'zero', "
                       f"got {undefined_correlation!r}")
    self.ks = tuple(int(k) for k in ks)
    self.ns = tuple(int(n) for n in ns)
    self.undefined_correlation = undefined_correlation

  def add(self, image_id: Any, pred_scores: ArrayLike, mos: ArrayLike) -> dict[str, float]:
    """Adds one image.

    Args:
      image_id: any hashable, unique per image.
      pred_scores: [C] predicted scores of the image's annotated candidate crops.
      mos: [C] their mean opinion scores (C >= max(ns)).

    Returns:
      This image's values (also kept in `per_image`).
    """
    record = {"srcc": spearman(pred_scores, mos), "pcc": pearson(pred_scores, mos)}
    for n in self.ns:
      for k in self.ks:
        record[f"acc_{k}_{n}"] = ranking_accuracy(pred_scores, mos, k=k, n=n)
        record[f"wacc_{k}_{n}"] = weighted_ranking_accuracy(pred_scores, mos, k=k, n=n)
    self._register(image_id, record)
    return record

  def _correlation(self, key: str) -> tuple[float, int]:
    values = np.array([r[key] for r in self.per_image.values()])
    undefined = int(np.count_nonzero(np.isnan(values)))
    if self.undefined_correlation == "zero":
      return float(np.nan_to_num(values, nan=0.0).mean()), undefined
    return (float(values[~np.isnan(values)].mean()) if undefined < values.size
            else math.nan), undefined

  def result(self) -> dict[str, float]:
    self._require_images()
    out = {}
    out["srcc"], num_undefined_srcc = self._correlation("srcc")
    out["pcc"], num_undefined_pcc = self._correlation("pcc")
    for prefix in ("acc", "wacc"):
      for n in self.ns:
        for k in self.ks:
          out[f"{prefix}_{k}_{n}"] = self._mean(f"{prefix}_{k}_{n}")
    for prefix in ("acc", "wacc"):
      for n in self.ns:
        out[f"{prefix}_mean_{n}"] = float(np.mean([out[f"{prefix}_{k}_{n}"] for k in self.ks]))
    out["num_images"] = len(self.per_image)
    out["num_undefined_srcc"] = num_undefined_srcc
    out["num_undefined_pcc"] = num_undefined_pcc
    return out


class PairwiseProtocol(_Protocol):
  """Pairwise crop preferences (FCDB's ranking annotations): does the preferred crop score higher?

  Per pair with a winner (vote margin > 0): correct when the preferred crop's score is strictly
  higher; a tie of scores counts half. Pairs are pooled over images (each pair counts once, as
  in the view-finding literature). Result keys:
    pair_acc: over all pairs with a winner.
    pair_acc_strong: over pairs won by at least `strong_margin` (0.6 = 4 or 5 votes of 5).
    num_pairs, num_pairs_strong, and larger_acc: the same count for "prefer the larger crop"
    (equal areas count half), a baseline that looks at no pixels.
  """

  def __init__(self, *, strong_margin: float = 0.6) -> None:
    super().__init__()
    self.strong_margin = float(strong_margin)

  def add(self, image_id: Any, preferred_scores: ArrayLike, other_scores: ArrayLike,
          margins: ArrayLike, preferred_boxes_px: ArrayLike | None = None,
          other_boxes_px: ArrayLike | None = None) -> dict[str, float]:
    """Adds one image's pairs: scores [P] of the preferred and the other crop, vote margins [P]
    (0 = no winner, skipped), and optionally the boxes [P, 4] (for the larger-crop baseline)."""
    margins = np.asarray(margins, np.float64).reshape(-1)
    win = _as_scores(preferred_scores, margins.size, "preferred_scores")
    lose = _as_scores(other_scores, margins.size, "other_scores")
    valid = margins > 0
    correct = np.where(win > lose, 1.0, np.where(win == lose, 0.5, 0.0))
    strong = valid & (margins >= self.strong_margin - 1e-9)
    record = {"correct": float(correct[valid].sum()), "pairs": float(valid.sum()),
              "correct_strong": float(correct[strong].sum()), "pairs_strong": float(strong.sum())}
    if preferred_boxes_px is not None and other_boxes_px is not None:
      area = lambda b: np.prod(
          np.diff(box_geometry.as_boxes(b, "boxes").reshape(-1, 2, 2), axis=1), -1)[:, 0]
      a_win, a_lose = area(preferred_boxes_px), area(other_boxes_px)
      larger = np.where(a_win > a_lose, 1.0, np.where(a_win == a_lose, 0.5, 0.0))
      record["larger_correct"] = float(larger[valid].sum())
    self._register(image_id, record)
    return record

  def _total(self, key: str) -> float:
    return float(sum(r.get(key, 0.0) for r in self.per_image.values()))

  def result(self) -> dict[str, float]:
    self._require_images()
    pairs, strong = self._total("pairs"), self._total("pairs_strong")
    return {
        "pair_acc": self._total("correct") / pairs if pairs else math.nan,
        "pair_acc_strong": self._total("correct_strong") / strong if strong else math.nan,
        "larger_acc": self._total("larger_correct") / pairs if pairs else math.nan,
        "num_pairs": int(pairs),
        "num_pairs_strong": int(strong),
    }
