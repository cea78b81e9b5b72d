"""ProCrop's set-prediction loss: Hungarian matching, then focal + L1 + GIoU on every decoder layer.

For each decoder layer (the final one and, with `aux_loss`, every earlier one) the predictions are
matched one-to-one to the valid ground-truth crops (`matching.hungarian_match`), and

* score: sigmoid focal loss (alpha 0.25, gamma 2) over all queries, weight 2. Targets:
  - a matched query: 1 (every ground-truth crop counts as a good crop; its own score only enters
    through the soft targets below, as in the reference code);
  - an unmatched query whose predicted box has IoU >= `soft_label_iou` (0.85) with a valid
    ground-truth box: the soft target `clip(0.5 * (s - 2) / 1.5, 0, 0.5)` where s is the score
    of the ground-truth box it overlaps most (the reference code's rule; on GAICD's 1-5 scale a
    crop scored 2 or less gives 0, 3.5 or more gives 0.5). A near-duplicate of a good crop is
    thus not pushed to 0, which would contradict the matched query next to it;
  - any other query: 0.
  With `score_target="iou"` (quality targets, as in GFL's quality focal loss / VarifocalNet)
  every query's target is instead the IoU of its box with the ground truth it overlaps most,
  and the loss is BCE * |target - p| ** gamma: the score then estimates how good the box is,
  which is what choosing the top-1 crop needs.
* L1 between the matched (cx, cy, w, h) vectors, weight 5 (DETR's box parametrisation).
* GIoU loss 1 - GIoU of the matched boxes, weight 2.

Every term is summed over the batch and divided by the number of valid ground-truth boxes in the
batch (at least 1), as in DETR; the total is the weighted sum over terms and layers.

Given boxes. When the model also scored the batch's rated crop pairs through its given-box path
(outputs["given_logits"], the final layer's, for `pair_boxes` flattened to [B, 2P]):
* rank (`rank_weight`): a logistic pairwise loss, softplus(-(l_preferred - l_other)), weighted by
  each pair's vote margin (ties and padding weigh 0), averaged over the weights;
* given_iou (`given_iou_weight`): the quality focal loss of each given box's score against its IoU
  with the ground truth, as the proposals' "iou" score targets: a given box's score and a
  proposal's score then estimate the same thing, so a user's own crop can be compared with the
  model's.
* gt_rank (`gt_rank_weight`): the expert's crop against every rated crop of its photo. The
  expert crop (the first ground-truth box) is scored after the pairs' boxes, and a logistic loss
  asks it to outscore each of them, weighted by 1 - IoU(rated crop, expert crop): a rated crop
  that nearly is the expert's carries no order.
"""

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from procrop_jax import box_ops
from procrop_jax import matching


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Elementwise focal loss (Lin et al. 2017) for soft targets in [0, 1] (torchvision's form)."""
  prob = jax.nn.sigmoid(logits)
  ce = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
  p_t = prob * targets + (1 - prob) * (1 - targets)
  loss = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return loss


def quality_focal_loss(logits: jax.Array, targets: jax.Array, *, gamma: float = 2.0
                       ) -> jax.Array:
  """Elementwise quality focal loss (Li et al. 2020): BCE(p, t) * |t - p| ** gamma, t in [0, 1]."""
  prob = jax.nn.sigmoid(logits)
  ce = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
  return ce * jnp.abs(targets - prob) ** gamma


def iou_score_targets(pred_boxes: jax.Array, targets: Mapping[str, jax.Array]) -> jax.Array:
  """Per-query quality targets [B, N]: IoU of each box with the valid ground truth it overlaps
  most (0 without any), with no gradient."""
  mask = targets["box_mask"].astype(bool)
  iou = box_ops.pairwise_box_iou(jax.lax.stop_gradient(pred_boxes),
                                 targets["boxes"].astype(pred_boxes.dtype))  # [B, N, M]
  return jnp.max(jnp.where(mask[:, None, :], iou, 0.0), axis=-1, initial=0.0)


def soft_score_target(box_scores: jax.Array) -> jax.Array:
  """The reference code's soft target for near-duplicates of a crop scored s:
  clip(0.5 * (s - 2) / 1.5, 0, 0.5)."""
  return jnp.clip(0.5 * (box_scores - 2.0) / 1.5, 0.0, 0.5)


def score_targets(pred_boxes: jax.Array, query_idx: jax.Array, targets: Mapping[str, jax.Array],
                  *, soft_label_iou: float = 0.85) -> jax.Array:
  """Per-query score targets [B, N]: 1 for matched, the soft target for unmatched near-duplicates
  (IoU >= soft_label_iou with a valid ground truth), else 0. See the module docstring.

  Args:
    pred_boxes: [B, N, 4] predicted xyxy boxes (no gradient flows through the targets).
    query_idx: [B, M] matched query per ground truth, -1 for padding.
    targets: "boxes" [B, M, 4], "box_scores" [B, M], "box_mask" [B, M].
  """
  n = pred_boxes.shape[1]
  mask = targets["box_mask"].astype(bool)
  matched = jnp.any((query_idx[:, :, None] == jnp.arange(n)) & mask[:, :, None], axis=1)
  iou = box_ops.pairwise_box_iou(jax.lax.stop_gradient(pred_boxes),
                                 targets["boxes"].astype(pred_boxes.dtype))  # [B, N, M]
  iou = jnp.where(mask[:, None, :], iou, -1.0)
  best = jnp.argmax(iou, axis=-1)
  best_iou = jnp.take_along_axis(iou, best[..., None], axis=-1)[..., 0]
  best_score = jnp.take_along_axis(targets["box_scores"].astype(pred_boxes.dtype), best, axis=-1)
  soft = jnp.where(best_iou >= soft_label_iou, soft_score_target(best_score), 0.0)
  return jnp.where(matched, 1.0, soft)


def layer_loss(outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
               loss_config: Mapping[str, Any], num_boxes: jax.Array) -> dict[str, jax.Array]:
  """Unweighted loss terms ("score", "l1", "giou") of one decoder layer's predictions."""
  cfg = loss_config
  if "boxes_cxcywh" in outputs:
    pred_cxcywh = outputs["boxes_cxcywh"]
  else:
    pred_cxcywh = box_ops.xyxy_to_cxcywh(outputs["boxes"])
  pred_xyxy = box_ops.cxcywh_to_xyxy(pred_cxcywh)
  query_idx = matching.hungarian_match(
      {"logits": outputs["logits"], "boxes_cxcywh": pred_cxcywh}, targets,
      **matching.match_weights(cfg))
  mask = targets["box_mask"].astype(pred_cxcywh.dtype)
  gt = targets["boxes"].astype(pred_cxcywh.dtype)

  safe_idx = jnp.maximum(query_idx, 0)[..., None]
  matched_cxcywh = jnp.take_along_axis(pred_cxcywh, safe_idx, axis=1)  # [B, M, 4]
  l1 = jnp.abs(matched_cxcywh - box_ops.xyxy_to_cxcywh(gt)).sum(-1)
  giou = box_ops.generalized_box_iou(box_ops.cxcywh_to_xyxy(matched_cxcywh), gt)

  # Overlaps for the score targets use the boxes as the model reports them (clipped to the image).
  reported = jnp.clip(pred_xyxy, 0.0, 1.0)
  mode = cfg["score_target"]
  if mode == "iou":
    focal = quality_focal_loss(outputs["logits"], iou_score_targets(reported, targets),
                               gamma=cfg["focal_gamma"])
  elif mode == "matched":
    score_target = score_targets(reported, query_idx, targets,
                                 soft_label_iou=cfg["soft_label_iou"])
    focal = sigmoid_focal_loss(outputs["logits"], score_target, alpha=cfg["focal_alpha"],
                               gamma=cfg["focal_gamma"])
  else:
    raise ValueError(f"config.loss.score_target={mode!r}: use 'matched' or 'iou'")
  return {
      "score": focal.sum() / num_boxes,
      "l1": (l1 * mask).sum() / num_boxes,
      "giou": ((1 - giou) * mask).sum() / num_boxes,
  }


def pair_ranking_loss(given_logits: jax.Array, pair_weights: jax.Array) -> jax.Array:
  """Weighted logistic loss that the preferred crop of each pair scores higher.

  Args:
    given_logits: [B, 2P] logits of the pairs' boxes, (preferred, other) interleaved.
    pair_weights: [B, P] vote margins; 0 skips a pair (ties, padding, cut by augmentation).
  """
  logits = given_logits.reshape(pair_weights.shape + (2,))
  loss = jax.nn.softplus(logits[..., 1] - logits[..., 0])
  return (loss * pair_weights).sum() / jnp.maximum(pair_weights.sum(), 1e-6)


def given_iou_loss(given_logits: jax.Array, given_boxes: jax.Array, given_mask: jax.Array,
                   targets: Mapping[str, jax.Array], *, gamma: float) -> jax.Array:
  """Quality focal loss of given boxes' scores against their IoU with the ground truth, averaged
  over the boxes of `given_mask` [B, Q]."""
  quality = iou_score_targets(given_boxes, targets)
  loss = quality_focal_loss(given_logits, quality, gamma=gamma)
  mask = given_mask.astype(loss.dtype)
  return (loss * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def gt_ranking_loss(gt_logits: jax.Array, box_logits: jax.Array, box_iou: jax.Array,
                    box_mask: jax.Array) -> jax.Array:
  """Logistic loss that the expert crop outscores each rated crop of its photo.

  Args:
    gt_logits: [B] logits of the expert crops (0 weight where `box_mask` is all False).
    box_logits: [B, Q] logits of the rated crops.
    box_iou: [B, Q] IoU of each rated crop with its photo's expert crop.
    box_mask: [B, Q] the rated crops to use.
  """
  weights = (1.0 - box_iou) * box_mask.astype(box_logits.dtype)
  loss = jax.nn.softplus(box_logits - gt_logits[:, None])
  return (loss * weights).sum() / jnp.maximum(weights.sum(), 1e-6)


def given_box_terms(outputs: Mapping[str, Any], targets: Mapping[str, jax.Array],
                    loss_config: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The weighted given-box terms ("loss_rank", "loss_given_iou" and, with gt_rank_weight,
  "loss_gt_rank"; see the module docstring). The given boxes are the pairs' boxes, then (with
  gt_rank_weight) each photo's first ground-truth box (`given_boxes`)."""
  cfg = loss_config
  weights = targets["pair_weights"].astype(jnp.float32)
  num_pair_boxes = 2 * weights.shape[1]
  logits = outputs["given_logits"][:, :num_pair_boxes]
  boxes = targets["pair_boxes"].reshape(logits.shape + (4,)).astype(logits.dtype)
  # A pair the augmentation cut has weight 0; its boxes may lie outside the image: skip both.
  mask = jnp.repeat(weights > 0, 2, axis=1)
  terms = {
      "loss_rank": cfg["rank_weight"] * pair_ranking_loss(logits, weights),
      "loss_given_iou": cfg["given_iou_weight"] * given_iou_loss(
          logits, boxes, mask, targets, gamma=cfg["focal_gamma"]),
  }
  if cfg["gt_rank_weight"]:
    gt_logits = outputs["given_logits"][:, num_pair_boxes]
    gt_boxes = targets["boxes"][:, :1].astype(logits.dtype)
    box_iou = box_ops.box_iou(boxes, jnp.broadcast_to(gt_boxes, boxes.shape))
    box_mask = mask & targets["box_mask"][:, :1].astype(bool)
    terms["loss_gt_rank"] = cfg["gt_rank_weight"] * gt_ranking_loss(gt_logits, logits, box_iou,
                                                                     box_mask)
  return terms


def uses_given_boxes(loss_config: Mapping[str, Any]) -> bool:
  """True when the loss needs the rated pairs scored through the given-box path."""
  return bool(loss_config["rank_weight"] or loss_config["given_iou_weight"]
              or loss_config["gt_rank_weight"])


def given_boxes(batch: Mapping[str, jax.Array], loss_config: Mapping[str, Any]) -> jax.Array:
  """The boxes the given-box terms score, [B, Q, 4]: the pairs' boxes flattened, then (with
  gt_rank_weight) the first ground-truth box."""
  boxes = batch["pair_boxes"].reshape(batch["pair_boxes"].shape[0], -1, 4)
  if loss_config["gt_rank_weight"]:
    boxes = jnp.concatenate([boxes, batch["boxes"][:, :1].astype(boxes.dtype)], axis=1)
  return boxes


def crop_loss(outputs: Mapping[str, Any], targets: Mapping[str, jax.Array],
              loss_config: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The total training loss and its terms. Pure and jit-able.

  Args:
    outputs: the model's output dict ("logits", "boxes_cxcywh" or "boxes", and "aux": a list of
      such dicts for the earlier decoder layers).
    targets: "boxes" [B, M, 4] normalised xyxy, "box_scores" [B, M], "box_mask" [B, M]; with
      "given_logits" in outputs also "pair_boxes" [B, P, 2, 4] and "pair_weights" [B, P].
    loss_config: config.loss (focal_alpha, focal_gamma, score/l1/giou weights, match_* costs,
      soft_label_iou, aux_loss, rank_weight, given_iou_weight).

  Returns:
    (total, terms): terms has the final layer's weighted "loss_score", "loss_l1", "loss_giou",
    the same with suffix "_{i}" for auxiliary layer i, "loss_rank" and "loss_given_iou" when the
    given boxes were scored, and "num_boxes".
  """
  cfg = loss_config
  weights = {"score": cfg["score_weight"], "l1": cfg["l1_weight"], "giou": cfg["giou_weight"]}
  num_boxes = jnp.maximum(targets["box_mask"].astype(jnp.float32).sum(), 1.0)
  layers = [("", outputs)]
  if cfg["aux_loss"]:
    layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux", ()))]
  terms = {}
  for suffix, layer_outputs in layers:
    for name, value in layer_loss(layer_outputs, targets, cfg, num_boxes).items():
      terms[f"loss_{name}{suffix}"] = weights[name] * value
  if "given_logits" in outputs:
    terms.update(given_box_terms(outputs, targets, cfg))
  total = sum(terms.values())
  terms["num_boxes"] = num_boxes
  return total, terms
