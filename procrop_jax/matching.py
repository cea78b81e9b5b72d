"""Exact Hungarian matching in pure JAX (jit-able, vmap-able, no host callbacks).

`linear_sum_assignment` is the shortest-augmenting-path algorithm with dual potentials
(Kuhn-Munkres as refined by Jonker and Volgenant; the O(n^2 m) form of e-maxx.ru's "Hungarian
algorithm"), written with `jax.lax` loops so it compiles for CPU, GPU and TPU and runs batched
under `jax.vmap`. It finds a minimum-cost assignment exactly (up to floating-point rounding of the
potentials), like `scipy.optimize.linear_sum_assignment`.

`hungarian_match` builds the DETR matching cost between predicted crops and padded ground-truth
crops and solves it per image.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from procrop_jax import box_ops


def _solve_rows(cost: jax.Array, row_mask: jax.Array) -> jax.Array:
  """Assigns every unmasked row of `cost [n, m]` (n <= m) to a distinct column.

  Returns the column of each row, int32 [n], -1 for masked rows.
  """
  n, m = cost.shape
  dtype = cost.dtype
  inf = jnp.array(jnp.inf, dtype)
  # 1-based indices with a dummy row/column 0, as in the textbook formulation: column 0 holds the
  # row being inserted, p[j] == 0 means column j is free.
  c = jnp.zeros((n + 1, m + 1), dtype).at[1:, 1:].set(cost)

  def insert_row(i, state):
    u, v, p = state
    active = row_mask[i - 1]
    # A masked row starts with p[0] == 0, so neither loop below runs and nothing changes.
    p = p.at[0].set(jnp.where(active, i, 0))

    def search_cond(s):
      _, _, p_, _, _, _, j0, it = s
      # The iteration cap only guards against non-finite costs; with finite ones the search ends
      # after at most (rows assigned so far + 1) <= m steps.
      return (p_[j0] != 0) & (it <= m)

    def search_body(s):
      u, v, p_, minv, used, way, j0, it = s
      used = used.at[j0].set(True)
      i0 = p_[j0]
      reduced = c[i0] - u[i0] - v
      free = ~used
      better = free & (reduced < minv)
      minv = jnp.where(better, reduced, minv)
      way = jnp.where(better, j0, way)
      candidates = jnp.where(free, minv, inf)
      j1 = jnp.argmin(candidates)
      delta = candidates[j1]
      # Used columns hold distinct rows, free ones add 0, so the scatter-add has no conflicts.
      u = u.at[p_].add(jnp.where(used, delta, 0))
      v = jnp.where(used, v - delta, v)
      minv = jnp.where(free, minv - delta, minv)
      return u, v, p_, minv, used, way, j1.astype(jnp.int32), it + 1

    minv = jnp.full((m + 1,), inf)
    used = jnp.zeros((m + 1,), bool)
    way = jnp.zeros((m + 1,), jnp.int32)
    u, v, p, _, _, way, j0, _ = jax.lax.while_loop(
        search_cond, search_body, (u, v, p, minv, used, way, jnp.int32(0), jnp.int32(0)))

    # Augment along the alternating path that ends at the free column j0.
    def augment_body(s):
      p_, j0 = s
      j1 = way[j0]
      return p_.at[j0].set(p_[j1]), j1

    p, _ = jax.lax.while_loop(lambda s: (s[1] != 0) & active, augment_body, (p, j0))
    return u, v, p

  init = (jnp.zeros((n + 1,), dtype), jnp.zeros((m + 1,), dtype), jnp.zeros((m + 1,), jnp.int32))
  _, _, p = jax.lax.fori_loop(1, n + 1, insert_row, init)
  # Invert p (row of each column) into the column of each row; free columns write to a dump slot.
  rows = jnp.where(p[1:] > 0, p[1:] - 1, n)
  col_of_row = jnp.full((n + 1,), -1, jnp.int32).at[rows].set(jnp.arange(m, dtype=jnp.int32))
  return jnp.where(row_mask, col_of_row[:n], -1)


def linear_sum_assignment(cost: jax.Array, *, row_mask: jax.Array | None = None,
                          col_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Minimum-cost assignment of a rectangular cost matrix; a jit-able scipy equivalent.

  Every row (if N <= M) or every column (if N > M) is assigned to a distinct partner on the other
  side so that the summed cost is minimal. Entries of the shorter side can be masked out: they
  take no partner and leave every partner free for the others (used for padded ground truths).

  Args:
    cost: [N, M] finite costs (float; integers are converted to float32).
    row_mask: optional bool [N], False for rows to leave out; only when N <= M.
    col_mask: optional bool [M], False for columns to leave out; only when N >= M.

  Returns:
    (row_ind, col_ind), int32 [min(N, M)]: the k-th pair assigns row row_ind[k] to column
    col_ind[k]. The shorter side's indices are in order (arange); both are -1 for a masked entry.
    Unlike scipy the lengths are static, so masked pairs are kept as -1 rather than dropped.
  """
  cost = jnp.asarray(cost)
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    cost = cost.astype(jnp.float32)
  if cost.ndim != 2:
    raise ValueError(f"cost must be [N, M], got shape {cost.shape}")
  n, m = cost.shape
  if row_mask is not None and col_mask is not None:
    raise ValueError("give row_mask or col_mask, not both")
  if row_mask is not None and n > m:
    raise ValueError("row_mask is only supported for the shorter side (N <= M)")
  if col_mask is not None and n < m:
    raise ValueError("col_mask is only supported for the shorter side (N >= M)")
  if n > m or col_mask is not None:  # The columns are the side to assign: solve the transpose.
    mask = jnp.ones((m,), bool) if col_mask is None else jnp.asarray(col_mask, bool)
    row_ind = _solve_rows(cost.T, mask)
    col_ind = jnp.where(row_ind >= 0, jnp.arange(m, dtype=jnp.int32), -1)
    return row_ind, col_ind
  mask = jnp.ones((n,), bool) if row_mask is None else jnp.asarray(row_mask, bool)
  col_ind = _solve_rows(cost, mask)
  row_ind = jnp.where(col_ind >= 0, jnp.arange(n, dtype=jnp.int32), -1)
  return row_ind, col_ind


def focal_score_cost(logits: jax.Array, *, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
  """Matching cost of calling a query positive: focal(target 1) - focal(target 0), as in
  Deformable/Conditional DETR. Shape of `logits`."""
  prob = jax.nn.sigmoid(logits)
  pos = alpha * (1 - prob) ** gamma * -jax.nn.log_sigmoid(logits)
  neg = (1 - alpha) * prob ** gamma * -jax.nn.log_sigmoid(-logits)
  return pos - neg


def match_cost_matrix(logits: jax.Array, boxes_cxcywh: jax.Array, gt_boxes: jax.Array, *,
                      score_weight: float = 2.0, l1_weight: float = 5.0,
                      giou_weight: float = 2.0, focal_alpha: float = 0.25,
                      focal_gamma: float = 2.0) -> jax.Array:
  """DETR matching cost between N predictions and M ground-truth boxes of one image.

  Args:
    logits: [N] score logits.
    boxes_cxcywh: [N, 4] predicted boxes (cx, cy, w, h), normalised to the image.
    gt_boxes: [M, 4] ground-truth boxes, normalised xyxy.

  Returns:
    [N, M] cost: score_weight * focal cost + l1_weight * L1 distance of the (cx, cy, w, h)
    vectors (as DETR) + giou_weight * (-GIoU).
  """
  gt_cxcywh = box_ops.xyxy_to_cxcywh(gt_boxes)
  score = focal_score_cost(logits, alpha=focal_alpha, gamma=focal_gamma)[:, None]
  l1 = jnp.abs(boxes_cxcywh[:, None, :] - gt_cxcywh[None, :, :]).sum(-1)
  giou = box_ops.pairwise_generalized_box_iou(box_ops.cxcywh_to_xyxy(boxes_cxcywh), gt_boxes)
  cost = score_weight * score + l1_weight * l1 - giou_weight * giou
  # Keep the solver's arithmetic finite even for degenerate predictions.
  return jnp.nan_to_num(cost, nan=1e4, posinf=1e4, neginf=-1e4)


def match_weights(loss_config: Mapping[str, Any]) -> dict[str, float]:
  """Keyword arguments of `hungarian_match` from config.loss."""
  return dict(score_weight=loss_config["match_score_cost"],
              l1_weight=loss_config["match_l1_cost"],
              giou_weight=loss_config["match_giou_cost"],
              focal_alpha=loss_config["focal_alpha"],
              focal_gamma=loss_config["focal_gamma"])


def hungarian_match(outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array], *,
                    score_weight: float = 2.0, l1_weight: float = 5.0, giou_weight: float = 2.0,
                    focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> jax.Array:
  """Matches each valid ground-truth crop to a distinct predicted crop, per image.

  Args:
    outputs: "logits" [B, N] and "boxes_cxcywh" [B, N, 4] (or only "boxes" [B, N, 4] xyxy).
    targets: "boxes" [B, M, 4] normalised xyxy and "box_mask" [B, M] (False for padding).
      Requires N >= M.
    score_weight, l1_weight, giou_weight, focal_alpha, focal_gamma: see `match_cost_matrix`.

  Returns:
    int32 [B, M]: the query matched to each ground-truth box, -1 for padded boxes. No gradient.
  """
  logits = jax.lax.stop_gradient(outputs["logits"])
  if "boxes_cxcywh" in outputs:
    pred = outputs["boxes_cxcywh"]
  else:
    pred = box_ops.xyxy_to_cxcywh(outputs["boxes"])
  pred = jax.lax.stop_gradient(pred)
  gt = targets["boxes"].astype(pred.dtype)
  mask = targets["box_mask"].astype(bool)
  if pred.shape[1] < gt.shape[1]:
    raise ValueError(f"need at least as many queries ({pred.shape[1]}) as padded ground-truth "
                     f"boxes ({gt.shape[1]})")

  def one(lg, pb, gb, mk):
    cost = match_cost_matrix(lg, pb, gb, score_weight=score_weight, l1_weight=l1_weight,
                             giou_weight=giou_weight, focal_alpha=focal_alpha,
                             focal_gamma=focal_gamma)
    row_ind, _ = linear_sum_assignment(cost, col_mask=mk)
    return row_ind

  return jax.vmap(one)(logits, pred, gt, mask)
