r"""Where one training step's time goes: backbone, encoder/decoder, matching, losses, optimizer.

  python -m experiments.step_profile [--image_size=320] [--batch_size=8] [--steps=5]
      [--train_backbone] [--trace_dir=DIR]

Each part is jitted on its own and timed on the same synthetic batch (median of `--steps` runs
after a warm-up), then the whole train step (`steps.train_step`, as the trainer jits it):

  backbone        the Lite0 forward pass (its backward too with --train_backbone)
  head            the encoder/decoder's forward and backward: the differentiated loss minus the
                  backbone, the matching and the losses
  matching        `matching.hungarian_match` for the final and every auxiliary decoder layer
                  (what `losses.crop_loss` solves), its cost matrices included
  losses          `losses.crop_loss` minus its matching
  optimizer       the step minus the differentiated loss: the update, clipping, the finite check

Parts jitted apart do not fuse across their borders, so the shares are approximate; they sum
close to the step (the last JSON line compares). `--trace_dir` also records a `jax.profiler`
trace of 3 whole steps (open it in TensorBoard's or Perfetto's trace viewer). One JSON line per
part, then a summary. Synthetic data and random weights: the timing does not depend on them.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from typing import Any, Callable

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from experiments import train_benchmark
from procrop_jax import losses
from procrop_jax import matching
from procrop_jax import steps
from procrop_jax import train

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 320, "Canvas side S.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed runs of each part after its warm-up.")
_TRAIN_BACKBONE = flags.DEFINE_bool("train_backbone", False, "Differentiate the backbone too.")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "", "Also write a jax.profiler trace here.")


def _median_seconds(fn: Callable[[], Any], runs: int) -> float:
  jax.block_until_ready(fn())  # Compiles and warms up.
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  config = train_benchmark.timing_config(_IMAGE_SIZE.value, _BATCH.value, _TRAIN_BACKBONE.value)
  # The rated pairs' terms need pairs in the batch; the plain DETR losses are profiled.
  for field in ("rank_weight", "given_iou_weight", "gt_rank_weight"):
    if field in config.loss:
      config.loss[field] = 0.0
  runs = _STEPS.value
  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.Trainer(config, workdir)
    batch = trainer.device_batch(train_benchmark.synthetic_batch(config,
                                                                 np.random.default_rng(0)))
    state, graphdef, rng_state = trainer.state, trainer.graphdef, trainer.rng_state
    is_frozen = steps.frozen_filter(config)
    frozen, trainable = (nnx.split_state(state["params"], is_frozen, ...)
                         if is_frozen is not None else ({}, state["params"]))
    targets = {k: batch[k] for k in ("boxes", "box_scores", "box_mask")}
    model = nnx.merge(graphdef, state["params"], rng_state, state["rest"])
    backbone_graph, backbone_state = nnx.split(model.backbone)

    def backbone_forward(backbone_state, image):
      return nnx.merge(backbone_graph, backbone_state)(image)

    # Every array enters as an argument: one closed over is a constant XLA would fold.
    def outputs_of(params, batch):
      # Reseeded inside the traced function, as train_step does (dropout advances the RNG).
      step_rng = steps._reseed(rng_state, jax.random.key(0))  # pylint: disable=protected-access
      outputs, _ = steps.forward(graphdef, params, state["rest"], step_rng, batch, train=True)
      return outputs

    def loss_of(trainable_params, batch):
      params = nnx.merge_state(frozen, trainable_params) if frozen else trainable_params
      return losses.crop_loss(outputs_of(params, batch), batch, config.loss)[0]

    outputs = jax.jit(outputs_of)(state["params"], batch)
    layers = [outputs] + (list(outputs.get("aux", ())) if config.loss.aux_loss else [])
    match_weights = matching.match_weights(config.loss)

    def match_all(layers, targets):
      return [matching.hungarian_match(o, targets, **match_weights) for o in layers]

    def losses_only(outputs, targets):
      return losses.crop_loss(outputs, targets, config.loss)[0]

    if _TRAIN_BACKBONE.value:
      backbone_fn = jax.jit(jax.grad(lambda s, x: sum(
          jax.numpy.sum(v) for v in jax.tree.leaves(backbone_forward(s, x)))))
    else:
      backbone_fn = jax.jit(backbone_forward)
    loss_grad = jax.jit(jax.value_and_grad(loss_of))
    match_fn = jax.jit(match_all)
    loss_fn = jax.jit(losses_only)
    step_fn = trainer.train_step

    seconds = {
        "backbone": _median_seconds(lambda: backbone_fn(backbone_state, batch["image"]), runs),
        "matching": _median_seconds(lambda: match_fn(layers, targets), runs),
        "losses_with_matching": _median_seconds(lambda: loss_fn(outputs, targets), runs),
        "loss_and_grad": _median_seconds(lambda: loss_grad(trainable, batch), runs),
    }
    # The step donates its state: each run feeds the next its own output.
    holder = {"state": jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state)}

    def one_step():
      holder["state"], metrics = step_fn(holder["state"], batch)
      return metrics

    seconds["step"] = _median_seconds(one_step, runs)
    if _TRACE_DIR.value:
      with jax.profiler.trace(_TRACE_DIR.value):
        for _ in range(3):
          jax.block_until_ready(one_step())

  parts = {
      "backbone": seconds["backbone"],
      "head": (seconds["loss_and_grad"] - seconds["backbone"]
               - seconds["losses_with_matching"]),
      "matching": seconds["matching"],
      "losses": seconds["losses_with_matching"] - seconds["matching"],
      "optimizer": seconds["step"] - seconds["loss_and_grad"],
  }
  common = {"image_size": _IMAGE_SIZE.value, "batch_size": _BATCH.value,
            "train_backbone": _TRAIN_BACKBONE.value, "device_kind": jax.devices()[0].device_kind,
            "decoder_layers_matched": len(layers)}
  for name, value in parts.items():
    print(json.dumps({**common, "part": name, "ms": round(1e3 * value, 1),
                      "share_of_step": round(value / seconds["step"], 3)}), flush=True)
  print(json.dumps({**common, "part": "summary", "step_ms": round(1e3 * seconds["step"], 1),
                    "images_per_s": round(_BATCH.value / seconds["step"], 2),
                    "parts_sum_ms": round(1e3 * sum(parts.values()), 1),
                    "isolated_ms": {k: round(1e3 * v, 1) for k, v in seconds.items()},
                    "trace_dir": _TRACE_DIR.value or None}), flush=True)


if __name__ == "__main__":
  app.run(main)
