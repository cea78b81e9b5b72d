r"""ProCrop train and predict steps on whatever accelerator JAX sees: images/s and compile time.

  python -m experiments.accelerator_step_benchmark [--batch_sizes=32,64] [--steps=20]

For sizing the GPU/TPU recipe (configs/fcdb.py: Lite0 fine-tuned at 320 px, 20,000 steps) and the
frozen, feature-cached CPU recipe (configs/fcdb_cpu.py) on a given machine. Needs only JAX, Flax,
optax and ml_collections (not TensorFlow: synthetic batches, random weights, which do not change
the timing; no dropout), so it runs on a bare accelerator image. One JSON line per measurement:

  fine_tuned   full model, backbone differentiated (configs/fcdb.py, K = 0 and K = 10)
  cached_head  head only from cached backbone features (configs/fcdb_cpu.py)
  predict      inference forward pass (the Cropper's model cost), 30 queries
"""

import json
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import fcdb
from configs import fcdb_cpu
from procrop_jax import losses
from procrop_jax.models import procrop

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["32", "64"], "Batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps after the compiled first one.")


def _batch(config, b, rng, *, references: int, features=None):
  s, m = config.data.image_size, config.data.max_boxes
  xy = rng.uniform(0, 0.4, (b, m, 2))
  batch = {"image_valid_hw": np.ones((b, 2), np.float32),
           "boxes": np.concatenate([xy, xy + 0.5], -1).astype(np.float32),
           "box_scores": np.full((b, m), 5.0, np.float32), "box_mask": np.ones((b, m), bool)}
  if features is None:
    batch["image"] = rng.random((b, s, s, 3), dtype=np.float32)
  else:
    batch.update({f"features_{k}": rng.normal(size=(b,) + v).astype(np.float16)
                  for k, v in features.items()})
  if references:
    t = config.retrieval.tokens_grid ** 2
    batch["reference_tokens"] = rng.normal(size=(b, references, t, 1280)).astype(np.float16)
  return jax.device_put(batch)


def _timed(fn, args, steps):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  out = compiled(*args)
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return compile_s, (time.perf_counter() - start) / steps


def _train_fn(graphdef, tx, loss_config, train_backbone):
  def step(params, opt_state, rest, batch):
    feats = {k[len("features_"):]: v for k, v in batch.items() if k.startswith("features_")}

    def loss_fn(p):
      model = nnx.merge(graphdef, p, rest)
      out = model(batch.get("image"), image_valid_hw=batch["image_valid_hw"],
                  reference_tokens=batch.get("reference_tokens"), train=True,
                  features=feats or None)
      targets = {k: batch[k] for k in ("boxes", "box_scores", "box_mask")}
      return losses.crop_loss(out, targets, loss_config)[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    if not train_backbone:  # As the trainer does: the frozen backbone gets no update.
      grads = jax.tree_util.tree_map_with_path(
          lambda path, g: jnp.zeros_like(g) if "backbone" in jax.tree_util.keystr(path) else g,
          grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def _measure(name, config, b, *, references=0, cached=False):
  model = procrop.ProCrop.from_config(config, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(0)
  features = None
  if cached:
    g = config.data.image_size // 32
    features = {"stride32": (g, g, 1280), "stride16": (2 * g, 2 * g, 112)}
  batch = _batch(config, b, rng, references=references, features=features)
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)
  step = _train_fn(graphdef, tx, config.loss, train_backbone=not cached)
  compile_s, step_s = _timed(step, (params, opt_state, rest, batch), _STEPS.value)
  return {"what": name, "device": jax.devices()[0].device_kind, "batch": b,
          "references": references, "compile_s": round(compile_s, 1),
          "step_ms": round(step_s * 1e3, 2), "images_per_s": round(b / step_s, 1)}


def _measure_predict(config, b):
  model = procrop.ProCrop.from_config(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  batch = _batch(config, b, np.random.default_rng(0), references=0)

  def predict(state, image, valid):
    out = nnx.merge(graphdef, state)(image, image_valid_hw=valid)
    return out["boxes"], jax.nn.sigmoid(out["logits"])

  compile_s, step_s = _timed(predict, (state, batch["image"], batch["image_valid_hw"]),
                             _STEPS.value)
  return {"what": "predict", "device": jax.devices()[0].device_kind, "batch": b,
          "compile_s": round(compile_s, 1), "step_ms": round(step_s * 1e3, 2),
          "images_per_s": round(b / step_s, 1)}


def main(argv):
  del argv
  gpu_recipe, cpu_recipe = fcdb.get_config(), fcdb_cpu.get_config()
  gpu_recipe.model.pretrained = cpu_recipe.model.pretrained = False
  # Without dropout the step needs no RNG state threaded through it (its random bits are a small
  # share of the step).
  gpu_recipe.model.dropout = cpu_recipe.model.dropout = 0.0
  print(json.dumps({"devices": [d.device_kind for d in jax.devices()],
                    "jax": jax.__version__}), flush=True)
  for b in (int(v) for v in _BATCH_SIZES.value):
    for references in (0, gpu_recipe.model.num_references):
      config = gpu_recipe.copy_and_resolve_references()
      config.model.num_references = references
      print(json.dumps(_measure("fine_tuned", config, b, references=references)), flush=True)
    print(json.dumps(_measure("cached_head", cpu_recipe, b, cached=True)), flush=True)
    print(json.dumps(_measure_predict(cpu_recipe, b)), flush=True)


if __name__ == "__main__":
  app.run(main)
