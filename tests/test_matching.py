"""Exact Hungarian matching in JAX against scipy.optimize.linear_sum_assignment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from procrop_jax import matching


def _random_costs(rng, count, n, m):
  """Uniform floats, small integers (many ties), constants and wide-range negatives."""
  kinds = [
      lambda: rng.random((n, m)),
      lambda: rng.integers(0, 3, (n, m)),
      lambda: rng.integers(-50, 50, (n, m)),
      lambda: np.full((n, m), 2.0),
      lambda: rng.normal(0, 100, (n, m)),
  ]
  return np.stack([kinds[i % len(kinds)]() for i in range(count)]).astype(np.float32)


def _check_assignment(cost, row_ind, col_ind, mask=None):
  """Valid one-to-one assignment with scipy's optimal total cost."""
  valid = row_ind >= 0
  assert np.array_equal(valid, col_ind >= 0)
  if mask is not None:
    assert np.array_equal(valid, mask)
  r, c = row_ind[valid], col_ind[valid]
  assert len(set(r)) == len(r) and len(set(c)) == len(c)
  if mask is None:
    sub = cost
  elif cost.shape[0] >= cost.shape[1]:
    sub = cost[:, mask]
  else:
    sub = cost[mask]
  ref_r, ref_c = optimize.linear_sum_assignment(sub.astype(np.float64))
  ours = cost[r, c].astype(np.float64).sum()
  best = sub[ref_r, ref_c].astype(np.float64).sum()
  np.testing.assert_allclose(ours, best, rtol=1e-5, atol=1e-4 * (1 + np.abs(cost).max()))


# 8 shapes x 25 matrices = 200 problems, each shape solved in one jit(vmap(...)) call.
@pytest.mark.parametrize("n,m", [(1, 1), (3, 3), (7, 7), (10, 4), (4, 10), (12, 1), (16, 9),
                                 (20, 20)])
def test_matches_scipy_under_jit_and_vmap(n, m):
  rng = np.random.default_rng(n * 100 + m)
  costs = _random_costs(rng, 25, n, m)
  rows, cols = jax.jit(jax.vmap(matching.linear_sum_assignment))(costs)
  k = min(n, m)
  assert rows.shape == cols.shape == (25, k) and rows.dtype == jnp.int32
  for cost, r, c in zip(costs, np.asarray(rows), np.asarray(cols)):
    _check_assignment(cost, r, c)
    # The shorter side comes in order, as documented.
    np.testing.assert_array_equal(r if n <= m else c, np.arange(k))


@pytest.mark.parametrize("n,m", [(12, 6), (6, 6), (5, 5)])
def test_column_mask_leaves_padded_columns_out(n, m):
  rng = np.random.default_rng(7)
  costs = _random_costs(rng, 20, n, m)
  masks = rng.random((20, m)) < 0.6
  masks[0] = False  # No valid column at all.
  masks[1] = True
  solve = jax.jit(jax.vmap(lambda c, mk: matching.linear_sum_assignment(c, col_mask=mk)))
  rows, cols = solve(costs, masks)
  for cost, mask, r, c in zip(costs, masks, np.asarray(rows), np.asarray(cols)):
    if not mask.any():
      assert np.all(r == -1) and np.all(c == -1)
      continue
    _check_assignment(cost, r, c, mask)
    np.testing.assert_array_equal(c[mask], np.arange(m)[mask])


def test_row_mask_for_wide_costs():
  rng = np.random.default_rng(3)
  cost = rng.random((4, 9)).astype(np.float32)
  mask = np.array([True, False, True, True])
  r, c = matching.linear_sum_assignment(cost, row_mask=mask)
  _check_assignment(cost, np.asarray(r), np.asarray(c), mask)


def test_integer_costs_and_mask_errors():
  cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]])  # scipy's documented example: total 5.
  r, c = matching.linear_sum_assignment(cost)
  assert int(cost[np.asarray(r), np.asarray(c)].sum()) == 5
  with pytest.raises(ValueError):
    matching.linear_sum_assignment(np.zeros((3, 5)), col_mask=np.ones(5, bool))
  with pytest.raises(ValueError):
    matching.linear_sum_assignment(np.zeros((5, 3)), row_mask=np.ones(5, bool))


def test_hungarian_match_finds_the_obvious_pairs():
  # Queries 1 and 3 sit on the two ground truths; the third ground truth is padding.
  gt = np.array([[[0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.9], [0, 0, 0, 0]]], np.float32)
  mask = np.array([[True, True, False]])
  far = [0.45, 0.45, 0.55, 0.55]
  pred_xyxy = np.array([[far, gt[0, 1], far, gt[0, 0], far]], np.float32)
  pred = np.concatenate([(pred_xyxy[..., :2] + pred_xyxy[..., 2:]) / 2,
                         pred_xyxy[..., 2:] - pred_xyxy[..., :2]], -1)
  logits = np.zeros((1, 5), np.float32)
  idx = jax.jit(matching.hungarian_match)(
      {"logits": logits, "boxes_cxcywh": pred}, {"boxes": gt, "box_mask": mask})
  np.testing.assert_array_equal(idx, [[3, 1, -1]])
  # The xyxy-only fallback gives the same matching.
  idx2 = jax.jit(matching.hungarian_match)({"logits": logits, "boxes": pred_xyxy},
                                           {"boxes": gt, "box_mask": mask})
  np.testing.assert_array_equal(idx2, idx)


def test_hungarian_match_batch_against_scipy():
  rng = np.random.default_rng(11)
  b, n, m = 6, 12, 5
  xy = rng.uniform(0, 0.5, (b, n, 2))
  pred = np.concatenate([xy + 0.2, rng.uniform(0.1, 0.5, (b, n, 2))], -1).astype(np.float32)
  lo = rng.uniform(0, 0.5, (b, m, 2))
  gt = np.concatenate([lo, lo + rng.uniform(0.1, 0.5, (b, m, 2))], -1).astype(np.float32)
  mask = rng.random((b, m)) < 0.7
  logits = rng.normal(size=(b, n)).astype(np.float32)
  idx = np.asarray(jax.jit(matching.hungarian_match)({"logits": logits, "boxes_cxcywh": pred},
                                                     {"boxes": gt, "box_mask": mask}))
  costs = np.asarray(jax.jit(jax.vmap(matching.match_cost_matrix))(logits, pred, gt))
  for i in range(b):
    cost = costs[i]
    cols = np.arange(m)[mask[i]]
    assert np.all(idx[i][~mask[i]] == -1)
    ref_r, ref_c = optimize.linear_sum_assignment(cost[:, mask[i]])
    np.testing.assert_allclose(cost[idx[i][mask[i]], cols].sum(),
                               cost[:, mask[i]][ref_r, ref_c].sum(), rtol=1e-5)
