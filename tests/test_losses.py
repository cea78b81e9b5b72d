"""Set-prediction loss: focal + L1 + GIoU over matched queries, soft targets, aux layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from procrop_jax import box_ops
from procrop_jax import losses

LOSS_CONFIG = default.get_config().loss


_JITTED = {}


def _crop_loss(outputs, targets, config=LOSS_CONFIG):
  # Jitted once per config: eager dispatch of the matching loops is far slower than a compile.
  if id(config) not in _JITTED:
    _JITTED[id(config)] = jax.jit(lambda o, t: losses.crop_loss(o, t, config))
  return _JITTED[id(config)](outputs, targets)


def _targets():
  boxes = np.array([[[0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.9], [0, 0, 0, 0]],
                    [[0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  return {"boxes": boxes,
          "box_scores": np.array([[4.0, 3.0, 0.0], [5.0, 0.0, 0.0]], np.float32),
          "box_mask": np.array([[True, True, False], [True, False, False]])}


def _outputs(targets, *, perfect_at=(3, 1), logit_hit=8.0, logit_miss=-8.0, n=6):
  """Predictions with the ground truths at the given query slots, small far boxes elsewhere."""
  b = targets["boxes"].shape[0]
  pred = np.tile(np.array([0.45, 0.45, 0.5, 0.5], np.float32), (b, n, 1))
  logits = np.full((b, n), logit_miss, np.float32)
  for i in range(b):
    for j, q in enumerate(perfect_at):
      if targets["box_mask"][i, j]:
        pred[i, q] = targets["boxes"][i, j]
        logits[i, q] = logit_hit
  cxcywh = np.asarray(box_ops.xyxy_to_cxcywh(pred))
  return {"logits": logits, "boxes": pred, "boxes_cxcywh": cxcywh}


def test_focal_loss_hand_values():
  # p = 0.5: ce = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 0.25 for target 1, 0.75 for target 0.
  got = losses.sigmoid_focal_loss(jnp.zeros(2), jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(got, [0.25 * np.log(2) / 4, 0.75 * np.log(2) / 4], rtol=1e-6)
  # Confident correct predictions cost almost nothing.
  assert losses.sigmoid_focal_loss(jnp.array(10.0), jnp.array(1.0)) < 1e-8


def test_soft_score_target_rule():
  np.testing.assert_allclose(losses.soft_score_target(jnp.array([1.0, 2.0, 2.75, 3.5, 5.0])),
                             [0.0, 0.0, 0.25, 0.5, 0.5], atol=1e-6)


def test_score_targets_matched_soft_and_background():
  targets = _targets()
  gt = targets["boxes"]
  near0 = gt[0, 0] + np.array([0.0, 0.0, 0.02, 0.0])  # IoU 0.96 with GT 0 (score 4 -> 0.5).
  near1 = gt[0, 1] + np.array([0.0, 0.0, -0.03, 0.0])  # IoU 0.95 with GT 1 (score 3 -> 1/3).
  loose = np.array([0.1, 0.1, 0.4, 0.4])  # IoU < 0.85 with both.
  pred = np.zeros((2, 5, 4), np.float32)
  pred[0] = [gt[0, 0], near0, near1, loose, gt[0, 1]]
  pred[1] = [gt[1, 0]] * 5  # All on GT 0 (score 5) but only query 2 is matched.
  query_idx = np.array([[0, 4, -1], [2, -1, -1]], np.int32)
  got = jax.jit(losses.score_targets)(pred, query_idx, targets)
  np.testing.assert_allclose(got[0], [1.0, 0.5, 1 / 3, 0.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(got[1], [0.5, 0.5, 1.0, 0.5, 0.5], atol=1e-6)


def test_perfect_predictions_have_near_zero_loss():
  targets = _targets()
  total, terms = _crop_loss(_outputs(targets), targets)
  assert float(terms["num_boxes"]) == 3.0
  assert float(terms["loss_l1"]) < 1e-5 and float(terms["loss_giou"]) < 1e-5
  assert float(terms["loss_score"]) < 1e-3
  assert np.isclose(float(total), sum(float(v) for k, v in terms.items() if k != "num_boxes"))
  # Moving the predictions to other query slots (a permutation) changes nothing.
  _, moved = _crop_loss(_outputs(targets, perfect_at=(0, 5)), targets)
  np.testing.assert_allclose(float(moved["loss_l1"]), float(terms["loss_l1"]), atol=1e-6)


def test_loss_values_by_hand_for_one_box():
  # One ground truth, one query that predicts it shifted by 0.1: L1 on (cx, cy, w, h) = 0.1.
  targets = {"boxes": np.array([[[0.2, 0.2, 0.6, 0.6]]], np.float32),
             "box_scores": np.array([[1.0]], np.float32), "box_mask": np.array([[True]])}
  outputs = {"logits": np.zeros((1, 1), np.float32),
             "boxes_cxcywh": np.array([[[0.5, 0.4, 0.4, 0.4]]], np.float32)}
  _, terms = _crop_loss(outputs, targets)
  np.testing.assert_allclose(terms["loss_l1"], 5.0 * 0.1, rtol=1e-5)
  iou = 0.3 * 0.4 / (0.16 + 0.16 - 0.12)  # Enclosing box == union here, so GIoU == IoU.
  np.testing.assert_allclose(terms["loss_giou"], 2.0 * (1 - iou), rtol=1e-5)
  np.testing.assert_allclose(terms["loss_score"], 2.0 * 0.25 * np.log(2) / 4, rtol=1e-5)


def test_aux_layers_and_no_ground_truth():
  targets = _targets()
  out = _outputs(targets)
  out["aux"] = [_outputs(targets, logit_hit=0.0), _outputs(targets, perfect_at=(2, 4))]
  total, terms = _crop_loss(out, targets)
  for suffix in ("", "_0", "_1"):
    assert {f"loss_score{suffix}", f"loss_l1{suffix}", f"loss_giou{suffix}"} <= set(terms)
  config = LOSS_CONFIG.copy_and_resolve_references()
  config.aux_loss = False
  total_final_only, final_terms = _crop_loss(out, targets, config)
  assert "loss_score_0" not in final_terms and float(total_final_only) < float(total)

  empty = {**targets, "box_mask": np.zeros_like(targets["box_mask"])}
  total, terms = _crop_loss(out, empty)
  assert np.isfinite(float(total)) and float(terms["num_boxes"]) == 1.0
  assert float(terms["loss_l1"]) == 0.0 and float(terms["loss_giou"]) == 0.0


def test_gradients_are_finite_and_reach_boxes_and_logits():
  targets = _targets()
  out = _outputs(targets, logit_hit=0.5, logit_miss=-1.0)
  out["boxes_cxcywh"] = out["boxes_cxcywh"] + 0.03
  del out["boxes"]

  def loss_fn(logits, cxcywh):
    return losses.crop_loss({"logits": logits, "boxes_cxcywh": cxcywh}, targets, LOSS_CONFIG)[0]

  g_logits, g_boxes = jax.jit(jax.grad(loss_fn, argnums=(0, 1)))(out["logits"],
                                                                 out["boxes_cxcywh"])
  assert np.all(np.isfinite(g_logits)) and np.all(np.isfinite(g_boxes))
  assert np.abs(g_boxes[0, 3]).sum() > 0 and np.abs(g_boxes[0, 1]).sum() > 0  # Matched queries.
  assert np.abs(g_boxes[0, 0]).sum() == 0  # Unmatched: no box loss.
  assert np.all(np.abs(g_logits) > 0)


def test_quality_focal_loss_vanishes_where_the_score_equals_its_target():
  targets = jnp.array([0.0, 0.3, 0.9, 1.0])
  at_target = losses.quality_focal_loss(jnp.log(targets / (1 - targets + 1e-12) + 1e-12),
                                        targets)
  np.testing.assert_allclose(at_target, 0.0, atol=1e-6)
  off = losses.quality_focal_loss(jnp.zeros(4), targets)  # p = 0.5 everywhere.
  assert np.all(np.asarray(off) > 0)
  # Further from the target costs more.
  assert (losses.quality_focal_loss(jnp.array([-2.0]), jnp.array([0.9]))
          > losses.quality_focal_loss(jnp.array([1.0]), jnp.array([0.9])))


def test_iou_score_targets_are_each_boxes_best_iou_with_a_valid_ground_truth():
  pred = jnp.array([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], [0.6, 0.6, 0.7, 0.7]]])
  targets = {"boxes": jnp.array([[[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]]]),
             "box_mask": jnp.array([[True, False]])}
  np.testing.assert_allclose(losses.iou_score_targets(pred, targets), [[0.5, 1.0, 0.0]],
                             atol=1e-6)


def test_the_iou_score_target_mode_trains_scores_towards_box_quality():
  outputs = {"logits": jnp.zeros((1, 2)),
             "boxes_cxcywh": jnp.array([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0]]])}
  targets = {"boxes": jnp.array([[[0.0, 0.0, 0.5, 1.0]]]), "box_scores": jnp.array([[5.0]]),
             "box_mask": jnp.array([[True]])}
  config = {"focal_alpha": 0.25, "focal_gamma": 2.0, "score_weight": 1.0, "l1_weight": 0.0,
            "giou_weight": 0.0, "match_score_cost": 1.0, "match_l1_cost": 1.0,
            "match_giou_cost": 1.0, "soft_label_iou": 0.85, "aux_loss": False,
            "score_target": "iou"}
  grad = jax.grad(lambda logits: losses.crop_loss({**outputs, "logits": logits}, targets,
                                                  config)[0])(outputs["logits"])
  # Targets 0.5 and 1.0 from p = 0.5: the first box's score stays, the exact box's rises.
  assert abs(float(grad[0, 0])) < 1e-6 and float(grad[0, 1]) < 0
  with pytest.raises(ValueError, match="score_target"):
    losses.crop_loss(outputs, targets, {**config, "score_target": "nope"})


def test_pair_ranking_loss_is_weighted_and_skips_ties():
  logits = jnp.array([[2.0, 0.0, -1.0, 3.0]])  # Pairs (2 vs 0) and (-1 vs 3).
  loss, grads = jax.value_and_grad(losses.pair_ranking_loss)(logits, jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(loss, np.log1p(np.exp(-2.0)), rtol=1e-6)
  np.testing.assert_array_equal(grads[0, 2:], [0.0, 0.0])  # A tie (weight 0) has no say.
  assert grads[0, 0] < 0 < grads[0, 1]  # Descent raises the preferred crop, lowers the other.
  both = losses.pair_ranking_loss(logits, jnp.array([[0.6, 0.2]]))
  expected = (0.6 * np.log1p(np.exp(-2.0)) + 0.2 * np.log1p(np.exp(4.0))) / 0.8
  np.testing.assert_allclose(both, expected, rtol=1e-6)


def test_ranking_loss_orders_a_pair_after_a_few_steps():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from configs import testing  # pylint: disable=g-import-not-at-top
  from procrop_jax.models import procrop  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.model.num_references = 0
  model = procrop.ProCrop(config.model, image_size=64,
                          tokens_grid=config.retrieval.tokens_grid, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  features = {"stride32": jnp.asarray(rng.normal(size=(1, 2, 2, 1280)), jnp.float32),
              "stride16": jnp.asarray(rng.normal(size=(1, 4, 4, 112)), jnp.float32)}
  a, b = [0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.9]
  boxes = jnp.array([[a, b]])

  @nnx.jit  # Op by op, the forward pass compiled each primitive: most of this test's time.
  def given_logits(model):
    return model(None, features=features, query_boxes=boxes)["logits"]

  first = np.asarray(given_logits(model))[0]
  # Prefer whichever crop the untrained model scores lower: the loss has to reverse the order.
  order = [0, 1] if first[0] < first[1] else [1, 0]
  pair = boxes[:, order]
  weights = jnp.array([[1.0]])
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss_fn = lambda m: losses.pair_ranking_loss(
        m(None, features=features, query_boxes=pair)["logits"], weights)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses_seen = [float(step(model, optimizer)) for _ in range(15)]
  last = np.asarray(given_logits(model))[0]
  assert last[order[0]] > last[order[1]]
  assert losses_seen[-1] < losses_seen[0]


def _one_photo_with_pairs(expert, pairs, weights, expert_score=1.0):
  """Targets of one photo: its expert crop and its rated pairs [(preferred, other), ...]."""
  return {"boxes": np.array([[expert]], np.float32),
          "box_scores": np.array([[expert_score]], np.float32), "box_mask": np.array([[True]]),
          "pair_boxes": np.array([pairs], np.float32),
          "pair_weights": np.array([weights], np.float32)}


def test_given_box_terms_train_scores_to_iou_on_the_same_scale():
  targets = _one_photo_with_pairs(
      [0.1, 0.1, 0.6, 0.7], [[[0.1, 0.1, 0.6, 0.7], [0.5, 0.5, 1.0, 1.0]],
                             [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]]], [1.0, 0.0],
      expert_score=5.0)
  config = dict(LOSS_CONFIG, rank_weight=1.0, given_iou_weight=2.0)
  iou = losses.iou_score_targets(jnp.asarray(targets["pair_boxes"][:, 0]), targets)
  np.testing.assert_allclose(iou[0], [1.0, 0.02 / (0.3 + 0.25 - 0.02)], rtol=1e-5)
  # Logits equal to the IoU targets (and the winner first) leave almost nothing to learn.
  good = np.log(np.clip(iou, 1e-4, 1 - 1e-4) / np.clip(1 - iou, 1e-4, 1))
  given = jnp.array([[good[0, 0], good[0, 1], 9.0, -9.0]])
  terms = losses.given_box_terms({"given_logits": given}, targets, config)
  bad = losses.given_box_terms({"given_logits": given[:, [1, 0, 2, 3]]}, targets, config)
  assert float(terms["loss_given_iou"]) < 1e-3 < float(bad["loss_given_iou"])
  assert float(terms["loss_rank"]) < float(bad["loss_rank"])
  # The second pair (weight 0, its other box outside the image) is ignored by both terms.
  moved = losses.given_box_terms({"given_logits": given.at[0, 2:].set(0.0)}, targets, config)
  np.testing.assert_allclose(moved["loss_given_iou"], terms["loss_given_iou"], rtol=1e-6)
  np.testing.assert_allclose(moved["loss_rank"], terms["loss_rank"], rtol=1e-6)


def test_gt_rank_orders_the_expert_crop_above_each_rated_crop():
  # Pair 1: a crop that is the expert's (no order) and one that overlaps it by 1/3; pair 2 has
  # weight 0 (cut by augmentation): both its boxes are skipped.
  targets = _one_photo_with_pairs(
      [0.0, 0.0, 0.5, 1.0], [[[0.0, 0.0, 0.5, 1.0], [0.25, 0.0, 0.75, 1.0]],
                             [[0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]], [1.0, 0.0])
  config = dict(LOSS_CONFIG, gt_rank_weight=1.0)
  given = losses.given_boxes(targets, config)
  np.testing.assert_array_equal(given[0, -1], targets["boxes"][0, 0])
  assert given.shape == (1, 5, 4)
  # Logits: pair boxes (4), then the expert crop. Only the second box of pair 1 weighs (1 - 1/3).
  logits = jnp.array([[5.0, 1.0, 7.0, 7.0, 3.0]])
  terms = losses.given_box_terms({"given_logits": logits}, targets, config)
  np.testing.assert_allclose(terms["loss_gt_rank"], np.log1p(np.exp(1.0 - 3.0)), rtol=1e-5)
  assert losses.uses_given_boxes(dict(LOSS_CONFIG, gt_rank_weight=0.5))
  assert "loss_gt_rank" not in losses.given_box_terms(
      {"given_logits": logits[:, :4]}, targets, dict(LOSS_CONFIG, rank_weight=1.0))
