"""The model's steps, with no input pipeline attached: forward, predict, train and eval.

Everything here needs JAX, Flax and optax alone (no TensorFlow): the steps the trainer and the
predictor jit. `train.Trainer` and `inference.Predictor` wrap them with data, checkpoints and
shardings.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from procrop_jax import batch_keys
from procrop_jax import losses
from procrop_jax import model_zoo
from procrop_jax import sharding
from procrop_jax import tta
from procrop_jax.models import efficientnet_lite

State = dict[str, Any]


# ---------------------------------------------------------------------------- the forward pass
def forward(graphdef, params, rest, rng_state, batch, *, train: bool, query_boxes=None,
            with_proposals: bool = False):
  """Runs the model from its split state; returns outputs and the updated non-param state.

  The trainer's steps call it too (with `train=True` and freshly seeded `rng_state` for dropout),
  so training, evaluation and prediction run the model alike.
  """
  model = nnx.merge(graphdef, params, rng_state, rest)
  outputs = model(batch.get("image"), image_valid_hw=batch["image_valid_hw"],
                  reference_tokens=batch.get("reference_tokens"), query_boxes=query_boxes,
                  train=train, features=batch_keys.batch_features(batch),
                  encoding=batch_keys.batch_encoding(batch), with_proposals=with_proposals)
  return outputs, nnx.state(model, nnx.Not(nnx.Any(nnx.Param, nnx.RngState)))


def predict_step(state: dict[str, Any], batch: dict[str, jax.Array], *, graphdef, rng_state,
                 score_given_boxes: bool, flip: bool = False, vote_iou: float = 0.0,
                 rescore: bool = False, keep_encoding: bool = False) -> dict[str, jax.Array]:
  """Inference: proposed crops, or scores for the batch's own boxes when score_given_boxes.

  `flip` adds the mirrored photo's pass and `vote_iou` > 0 votes proposals (see tta.py);
  `rescore` replaces each proposal's score by the given-box path's score of its final box.
  `keep_encoding` also returns the model's "encoding" of the photos; a batch that holds one
  (instead of "image") runs the decoder alone (not with `flip`: its mirrored pass needs pixels).
  """
  if rescore and not score_given_boxes:
    proposals = predict_step(state, batch, graphdef=graphdef, rng_state=rng_state,
                             score_given_boxes=False, flip=flip, vote_iou=vote_iou)
    scored = predict_step(state, {**batch, "boxes": proposals["boxes"]}, graphdef=graphdef,
                          rng_state=rng_state, score_given_boxes=True, flip=flip)
    return {"boxes": proposals["boxes"], "scores": scored["scores"]}
  params = state.get("ema_params", state["params"])
  given = batch["boxes"] if score_given_boxes else None
  if flip:  # Both passes in one batch: [plain; mirrored].
    batch = dict(batch)
    batch["image"] = jnp.concatenate(
        [batch["image"], tta.flip_canvas(batch["image"], batch["image_valid_hw"])])
    for key in ("image_valid_hw", "reference_tokens"):
      if key in batch:
        batch[key] = jnp.concatenate([batch[key], batch[key]])
    if given is not None:
      given = jnp.concatenate([given, tta.flip_boxes(given)])
  outputs, _ = forward(graphdef, params, state["rest"], rng_state, batch, train=False,
                       query_boxes=given)
  boxes, scores = outputs["boxes"], jax.nn.sigmoid(outputs["logits"])
  extra = {"encoding": outputs["encoding"]} if keep_encoding and not flip else {}
  if flip:
    plain, mirrored = jnp.split(boxes, 2), jnp.split(scores, 2)
    if given is None:  # The mirrored pass's proposals join the plain ones.
      boxes = jnp.concatenate([plain[0], tta.flip_boxes(plain[1])], axis=1)
      scores = jnp.concatenate(mirrored, axis=1)
    else:  # A given box's score: the mean over both passes.
      boxes, scores = plain[0], 0.5 * (mirrored[0] + mirrored[1])
  if vote_iou > 0 and given is None:
    boxes = tta.vote_boxes(boxes, scores, vote_iou)
  return {"boxes": boxes, "scores": scores, **extra}


# ----------------------------------------------------------------------------------- optimizer
def _is_backbone(path: tuple[Any, ...]) -> bool:
  return sharding.path_to_string(path).startswith("backbone/")


def frozen_filter(config: ml_collections.ConfigDict
                  ) -> Callable[[tuple[Any, ...], Any], bool] | None:
  """nnx filter of the parameters that never train: the backbone when its learning rate is 0,
  the blocks before the tail when only the last blocks train (`model_zoo.backbone_tail_start`);
  None when everything trains."""
  if config.optim.backbone_learning_rate == 0:
    return lambda path, _: _is_backbone(path)
  start = model_zoo.backbone_tail_start(config)
  if start is None:
    return None
  total = efficientnet_lite.num_blocks(config.model.backbone)
  tail = tuple("backbone/" + p for p in efficientnet_lite.tail_param_prefixes(start, total))
  return lambda path, _: (_is_backbone(path)
                          and not sharding.path_to_string(path).startswith(tail))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with separate backbone/head learning rates, warm-up + decay, and clipping."""
  optim, num_steps = config.optim, config.train.num_steps

  def schedule(peak: float) -> optax.Schedule:
    warmup = min(optim.warmup_steps, max(num_steps - 1, 0))
    if optim.schedule == "cosine":
      return optax.warmup_cosine_decay_schedule(
          0.0, peak, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
          end_value=peak * 0.01)
    if optim.schedule == "constant":
      return optax.join_schedules(
          [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
          [warmup])
    raise ValueError(f"config.optim.schedule={optim.schedule!r}: use 'cosine' or 'constant'.")

  def adamw(peak: float) -> optax.GradientTransformation:
    if peak == 0:
      return optax.set_to_zero()
    # No weight decay on biases and normalisation scales (vectors).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.adamw(schedule(peak), weight_decay=optim.weight_decay, mask=decay_mask)

  is_frozen = frozen_filter(config) or (lambda path, value: False)

  def label(path, value):
    if is_frozen(path, value):
      return "frozen"
    return "backbone" if _is_backbone(path) else "head"

  labels = lambda params: jax.tree_util.tree_map_with_path(label, params)
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.multi_transform({"frozen": optax.set_to_zero(),
                             "backbone": adamw(optim.backbone_learning_rate),
                             "head": adamw(optim.learning_rate)}, labels))


# ------------------------------------------------------------------------------ step functions
def _targets(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  keys = ("boxes", "box_scores", "box_mask", "pair_boxes", "pair_weights")
  return {k: batch[k] for k in keys if k in batch}


def _reseed(rng_state: nnx.State, key: jax.Array) -> nnx.State:
  """Gives every RNG stream a fresh key derived from `key` (one per stream, so they differ).

  The step's key is folded from the seed and the step number, so dropout is reproducible and a
  resumed run draws what an uninterrupted one would. (Functional, unlike `nnx.reseed`, which
  mutates variables and cannot run under `jax.grad`.)
  """
  leaves, treedef = jax.tree.flatten(rng_state)
  leaves = [jax.random.fold_in(key, i) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, leaves)


def train_step(state: State, batch: dict[str, jax.Array], *, graphdef, rng_state, tx,
               loss_config, ema_decay: float, base_key: jax.Array,
               is_frozen: Callable[[tuple[Any, ...], Any], bool] | None = None
               ) -> tuple[State, dict]:
  """One optimisation step. A non-finite loss or gradient leaves the state unchanged.

  `is_frozen` (an nnx filter, `frozen_filter(config)`) names the parameters that never train.
  """
  dropout_key = jax.random.fold_in(base_key, state["step"])

  # Frozen parameters are not differentiated at all: a frozen backbone's backward pass is most
  # of the step's compute and compile time.
  frozen, trainable = (nnx.split_state(state["params"], is_frozen, ...)
                       if is_frozen is not None else ({}, state["params"]))

  # The ranking loss scores the rated pairs through the given-box path in the same pass.
  pairs = None
  if losses.uses_given_boxes(loss_config):
    if "pair_boxes" not in batch:
      raise ValueError("config.loss.rank_weight / given_iou_weight / gt_rank_weight > 0 need "
                       "rated crop pairs (pair_boxes) in the batch: a dataset with pairs, such "
                       "as fcdb")
    pairs = losses.given_boxes(batch, loss_config)

  def loss_fn(trainable_params):
    params = nnx.merge_state(frozen, trainable_params) if frozen else trainable_params
    # Reseeded here, inside the differentiated function: dropout advances the RNG variables'
    # counts, which NNX allows only at the trace level that created them.
    step_rng_state = _reseed(rng_state, dropout_key)
    outputs, rest = forward(graphdef, params, state["rest"], step_rng_state, batch,
                                      train=True, query_boxes=pairs,
                                      with_proposals=pairs is not None)
    loss, terms = losses.crop_loss(outputs, _targets(batch), loss_config)
    return loss, (terms, rest)

  (loss, (terms, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  if frozen:
    grads = nnx.merge_state(jax.tree.map(jnp.zeros_like, frozen), grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = {
      "step": state["step"] + 1,
      "params": keep_if_finite(params, state["params"]),
      "rest": keep_if_finite(rest, state["rest"]),
      "opt_state": keep_if_finite(opt_state, state["opt_state"]),
  }
  if "ema_params" in state:
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                       state["ema_params"], new_state["params"])
    new_state["ema_params"] = keep_if_finite(ema, state["ema_params"])
  metrics = {"loss": loss, "grad_norm": grad_norm, **terms}
  return new_state, metrics


def eval_step(state: State, batch: dict[str, jax.Array], *, graphdef, rng_state,
              loss_config) -> dict[str, jax.Array]:
  """Loss terms on one batch in inference mode (EMA parameters when present)."""
  params = state.get("ema_params", state["params"])
  outputs, _ = forward(graphdef, params, state["rest"], rng_state, batch, train=False)
  loss, terms = losses.crop_loss(outputs, _targets(batch), loss_config)
  return {"loss": loss, **terms}


