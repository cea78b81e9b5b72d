r"""Fine-tunes the whole model, backbone included, from FCDB photos on one accelerator.

The CPU recipe (configs/fcdb_cpu.py) trains the head on cached features of a frozen backbone;
this measures what training the backbone too adds, starting from the shipped model. It runs the
trainer's own step (`procrop_jax.steps.train_step`) but feeds it without TensorFlow, so a bare
accelerator image with JAX, Flax, optax and ml_collections runs it:

  # here (TensorFlow): the photos, boxes and rated pairs, and the ImageNet backbone
  python -m experiments.fcdb.accelerator_finetune --mode=pack --pack_dir=.accel
  # on the accelerator: one training process per backbone learning rate, side by side
  python -m experiments.fcdb.accelerator_finetune --mode=train --pack_dir=.accel \
      --out=$OUT --backbone_learning_rates=1e-5,3e-5 --train_seconds=300
  # here: the best run's parameters -> a shipped-model folder, scored by the project's pipeline
  python -m experiments.fcdb.accelerator_finetune --mode=export --params=OUT/run0 \
      --export_dir=/tmp/fcdb_lite0_ft

Packing keeps each photo at `--pack_side` px on its longer side (JPEG); training draws the
recipe's augmentation (the box-keeping crop, flip, colour jitter: input_pipeline.preprocess) on
the accelerator, resampling with separable bilinear weights that widen when they shrink
(antialiased, like tf.image.resize). Validation (train[85%:]) runs every `--eval_every` steps
with the shipped model's inference settings; each process keeps its best EMA parameters by
validation IoU. The figures it prints are indicative (JPEG re-encoding, its own resampling):
`--mode=export` re-scores the parameters with the project's own evaluation. Figures of two runs
on one H200 (from the shipped model, and from ImageNet weights): experiments/fcdb/RESULTS.md,
runs 21 and 22.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

_TRAIN_SPLIT, _VAL_SPLIT = "train[:85%]", "train[85%:]"
_PACK_FILE, _BACKBONE_FILE = "fcdb_pack.npz", "backbone.npz"


def define_flags():
  flags.DEFINE_enum("mode", None, ["pack", "train", "worker", "export"], "What to do.",
                    required=True)
  flags.DEFINE_string("pack_dir", ".accel", "Folder of the packed photos and backbone.")
  flags.DEFINE_integer("pack_side", 400, "Longer side of the packed photos, px.")
  flags.DEFINE_integer("jpeg_quality", 88, "JPEG quality of the packed photos.")
  flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory (pack).")
  flags.DEFINE_string("out", "/tmp/accelerator_finetune",
                      "Where each process writes its log and best parameters (OUT/runN).")
  flags.DEFINE_list("backbone_learning_rates", ["1e-5", "3e-5"],
                    "One training process per value, side by side on the accelerator.")
  flags.DEFINE_float("learning_rate", 5e-5, "Head learning rate (peak).")
  flags.DEFINE_enum("schedule", "constant", ["constant", "cosine"],
                    "Learning-rate schedule after the warm-up. Constant by default: the loop "
                    "stops on `train_seconds`, which could cut a cosine short; the EMA and the "
                    "choice of the best evaluation do the annealing.")
  flags.DEFINE_integer("warmup_steps", 100, "Linear warm-up steps.")
  flags.DEFINE_integer("batch_size", 32, "Photos per step.")
  flags.DEFINE_integer("num_steps", 20000, "Most steps (and the cosine schedule's length).")
  flags.DEFINE_integer("eval_every", 250, "Steps between validation passes.")
  flags.DEFINE_float("train_seconds", 300.0, "Wall-clock budget of a process's training loop "
                     "(it stops early, keeping its best, when the schedule does not fit).")
  flags.DEFINE_enum("init", "shipped", ["shipped", "imagenet"],
                    "Start from the shipped model, or from ImageNet weights and a new head.")
  flags.DEFINE_integer("worker", 0, "Index of this process's learning rate (worker mode).")
  flags.DEFINE_string("params", None, "Folder of a run's best_head.npz and best_backbone.npz "
                      "(export mode).")
  flags.DEFINE_string("export_dir", "/tmp/fcdb_lite0_ft", "Shipped-model folder to write.")


# --------------------------------------------------------------------------------- packing
def pack(pack_dir: str, pack_side: int, jpeg_quality: int, data_dir: str) -> None:
  """Writes the photos (JPEG at `pack_side`), boxes and pairs of both slices, and the backbone.

  The backbone is stored as float16 (the device's working tree is limited to 64 MiB)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from procrop_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top

  config = model_zoo.load_config()
  max_boxes, max_pairs = config.data.max_boxes, config.data.max_pairs
  builder = tfds.builder("fcdb", data_dir=data_dir)
  out = pathlib.Path(pack_dir)
  out.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for name, split in (("train", _TRAIN_SPLIT), ("val", _VAL_SPLIT)):
    jpegs, sizes, boxes, masks, pairs, weights = [], [], [], [], [], []
    source = builder.as_data_source(split)
    for example in (source[i] for i in range(len(source))):
      # The input pipeline's own layout (boxes by score, pairs preferred-first with their vote
      # margin, both padded), unaugmented, at the packed size.
      view = input_pipeline.preprocess(example, seed=None, image_size=pack_side,
                                       max_boxes=max_boxes, max_pairs=max_pairs,
                                       image=tf.convert_to_tensor(example["image"]))
      h, w = np.round(view["image_valid_hw"].numpy() * pack_side).astype(int)
      image = tf.cast(tf.round(view["image"][:h, :w] * 255.0), tf.uint8)
      jpegs.append(tf.io.encode_jpeg(image, quality=jpeg_quality).numpy())
      sizes.append(np.asarray(example["image_size"], np.int32))
      boxes.append(view["boxes"].numpy())
      masks.append(view["box_mask"].numpy())
      pairs.append(view["pair_boxes"].numpy())
      weights.append(view["pair_weights"].numpy())
    lengths = np.array([len(j) for j in jpegs], np.int64)
    arrays.update({
        f"{name}_jpeg": np.frombuffer(b"".join(jpegs), np.uint8),
        f"{name}_jpeg_end": np.cumsum(lengths),
        f"{name}_image_size": np.stack(sizes), f"{name}_boxes": np.stack(boxes),
        f"{name}_box_mask": np.stack(masks), f"{name}_pair_boxes": np.stack(pairs),
        f"{name}_pair_weights": np.stack(weights)})
    print(f"{split}: {len(jpegs)} photos, {lengths.sum() / 1e6:.1f} MB of JPEG", flush=True)
  np.savez(out / _PACK_FILE, **arrays)
  model = model_zoo.create_model(config)
  np.savez(out / _BACKBONE_FILE, **{k: v.astype(np.float16)
                                     for k, v in model_zoo.backbone_arrays(model).items()})
  print(f"Wrote {out / _PACK_FILE} and {out / _BACKBONE_FILE}", flush=True)


def _decode_all(buffer: np.ndarray, ends: np.ndarray, side: int):
  """JPEGs -> uint8 [N, side, side, 3] (top-left, zero padding) and content (h, w) [N, 2]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  starts = np.concatenate([[0], ends[:-1]])

  def decode(i):
    return np.asarray(Image.open(io.BytesIO(buffer[starts[i]:ends[i]].tobytes())).convert("RGB"))

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    photos = list(pool.map(decode, range(len(ends))))
  canvas = np.zeros((len(photos), side, side, 3), np.uint8)
  hw = np.zeros((len(photos), 2), np.float32)
  for i, photo in enumerate(photos):
    canvas[i, :photo.shape[0], :photo.shape[1]] = photo
    hw[i] = photo.shape[:2]
  return canvas, hw


# ----------------------------------------------------------------------- augmentation (host)
def draw_views(rng: np.random.Generator, boxes, box_mask, pair_boxes, pair_weights,
               content_hw, *, crop_probability: float, flip_probability: float = 0.5):
  """The recipe's geometric augmentation for a batch (input_pipeline.preprocess's rules).

  Returns the source windows [B, 4] (x1, y1, x2, y2 in the packed photo's pixels), flips [B],
  and the boxes, mask and pairs in the window's normalised frame.
  """
  n = len(boxes)
  h, w = content_hw[:, 0], content_hw[:, 1]
  target = np.where(box_mask[:, :1, None], boxes[:, :1], [[0.0, 0.0, 1.0, 1.0]])[:, 0]
  u = rng.random((n, 4))
  window = np.stack([u[:, 0] * target[:, 0], u[:, 1] * target[:, 1],
                     target[:, 2] + u[:, 2] * (1 - target[:, 2]),
                     target[:, 3] + u[:, 3] * (1 - target[:, 3])], 1)
  crop = rng.random(n) < crop_probability
  window = np.where(crop[:, None], window, [0.0, 0.0, 1.0, 1.0])
  x1 = np.clip(np.floor(window[:, 0] * w), 0, w - 1)
  y1 = np.clip(np.floor(window[:, 1] * h), 0, h - 1)
  x2 = np.clip(np.ceil(window[:, 2] * w), x1 + 1, w)
  y2 = np.clip(np.ceil(window[:, 3] * h), y1 + 1, h)
  scale = np.stack([w, h, w, h], 1)[:, None]
  offset = np.stack([x1, y1, x1, y1], 1)[:, None]
  size = np.stack([x2 - x1, y2 - y1, x2 - x1, y2 - y1], 1)[:, None]
  frame = lambda b: (b * scale - offset) / size
  new_boxes = frame(boxes)
  new_pairs = frame(pair_boxes.reshape(n, -1, 4))
  eps = 1e-3
  inside = lambda b: np.all((b[..., :2] >= -eps) & (b[..., 2:] <= 1 + eps), -1)
  new_mask = box_mask & inside(new_boxes)
  new_weights = pair_weights * np.all(inside(new_pairs).reshape(n, -1, 2), -1)
  new_boxes, new_pairs = np.clip(new_boxes, 0, 1), np.clip(new_pairs, 0, 1)
  flip = rng.random(n) < flip_probability
  mirror = lambda b: np.stack([1 - b[..., 2], b[..., 1], 1 - b[..., 0], b[..., 3]], -1)
  new_boxes = np.where(flip[:, None, None], mirror(new_boxes), new_boxes)
  new_pairs = np.where(flip[:, None, None], mirror(new_pairs), new_pairs)
  new_boxes = np.where(new_mask[..., None], new_boxes, 0.0)
  return (np.stack([x1, y1, x2, y2], 1).astype(np.float32), flip,
          {"boxes": new_boxes.astype(np.float32), "box_mask": new_mask,
           "pair_boxes": new_pairs.reshape(pair_boxes.shape).astype(np.float32),
           "pair_weights": new_weights.astype(np.float32)})


# ------------------------------------------------------------------ resampling (accelerator)
def resample(sources, windows, flips, size: int):
  """Windows of the sources -> [B, size, size, 3] canvases in [0, 1] and valid (h, w) / size.

  sources: uint8 [B, L, L, 3] (content top-left); windows: [B, 4] pixel (x1, y1, x2, y2);
  flips: bool [B]. The window's longer side becomes `size`, aspect kept, placed top-left;
  rows and columns past the content are zero, as input_pipeline pads.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  side = sources.shape[1]
  x1, y1, x2, y2 = (windows[:, i] for i in range(4))
  scale = size / jnp.maximum(x2 - x1, y2 - y1)  # [B]
  out_h = jnp.clip(jnp.round((y2 - y1) * scale), 1, size)
  out_w = jnp.clip(jnp.round((x2 - x1) * scale), 1, size)

  def weights(start, stop, out_len, mirrored):
    j = jnp.arange(size, dtype=jnp.float32)[None, :]  # output index
    j = jnp.where(mirrored[:, None], out_len[:, None] - 1 - j, j)
    centre = start[:, None] + (j + 0.5) * ((stop - start) / out_len)[:, None] - 0.5
    support = jnp.maximum(1.0, (stop - start) / out_len)[:, None, None]  # widen to antialias
    k = jnp.arange(side, dtype=jnp.float32)[None, None, :]
    w = jnp.maximum(0.0, 1.0 - jnp.abs(k - centre[..., None]) / support)
    w = jnp.where((k >= start[:, None, None]) & (k < stop[:, None, None]), w, 0.0)
    w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-8)
    valid = jnp.arange(size)[None, :] < out_len[:, None]
    return jnp.where(valid[..., None], w, 0.0)

  no_flip = jnp.zeros_like(flips)
  wy = weights(y1, y2, out_h, no_flip)  # [B, S, L]
  wx = weights(x1, x2, out_w, flips)  # [B, S, L]
  image = sources.astype(jnp.float32) / 255.0
  image = jnp.einsum("bil,blmc->bimc", wy, image)
  image = jnp.einsum("bjm,bimc->bijc", wx, image)
  return image, jnp.stack([out_h, out_w], 1) / size


def colour_jitter(images, valid_hw, u, *, brightness_delta=0.1, contrast=(0.8, 1.25),
                  saturation=(0.8, 1.25)):
  """input_pipeline._colour_jitter on a batch (u: uniform [B, 3]); padding stays zero.

  The defaults restate input_pipeline.Augmentation's (that module imports TensorFlow, which the
  accelerator image lacks); a test keeps them equal.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  size = images.shape[1]
  rows = jnp.arange(size)[None, :, None] < jnp.round(valid_hw[:, 0] * size)[:, None, None]
  cols = jnp.arange(size)[None, None, :] < jnp.round(valid_hw[:, 1] * size)[:, None, None]
  valid = (rows & cols)[..., None]
  brightness = (2.0 * u[:, 0] - 1.0) * brightness_delta
  log_range = lambda r, t: jnp.exp(np.log(r[0]) + t * (np.log(r[1]) - np.log(r[0])))
  c, s = log_range(contrast, u[:, 1]), log_range(saturation, u[:, 2])
  per_image = lambda v: v[:, None, None, None]
  gray = (images * jnp.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)
  images = gray + per_image(s) * (images - gray)
  mean = (gray * valid).sum((1, 2, 3)) / jnp.maximum(valid.sum((1, 2, 3)), 1)
  images = (per_image(mean) + per_image(c) * (images - per_image(mean))
            + per_image(brightness))
  return jnp.where(valid, jnp.clip(images, 0.0, 1.0), 0.0)


# --------------------------------------------------------------------------- training
def _load_pack(pack_dir: str):
  with np.load(pathlib.Path(pack_dir) / _PACK_FILE) as data:
    return {k: data[k] for k in data.files}


def worker(flag_values) -> None:
  """One training process: its backbone learning rate, its best parameters and its log."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from procrop_jax import metrics  # pylint: disable=g-import-not-at-top
  from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top
  from procrop_jax import steps  # pylint: disable=g-import-not-at-top

  start = time.time()
  lr = float(flag_values.backbone_learning_rates[flag_values.worker])
  run_dir = pathlib.Path(flag_values.out) / f"run{flag_values.worker}"
  run_dir.mkdir(parents=True, exist_ok=True)
  log = open(run_dir / "log.jsonl", "a")  # pylint: disable=consider-using-with

  def report(record):
    record = {"worker": flag_values.worker, "backbone_lr": lr, "init": flag_values.init,
              "elapsed_s": round(time.time() - start, 1), **record}
    print(json.dumps(record), flush=True)
    log.write(json.dumps(record) + "\n")
    log.flush()

  with np.load(pathlib.Path(flag_values.pack_dir) / _BACKBONE_FILE) as data:
    backbone = {k: data[k] for k in data.files}
  shipped = model_zoo.load(backbone=backbone)
  config = shipped.config.copy_and_resolve_references()
  model = shipped.model
  if flag_values.init == "imagenet":
    model = model_zoo.create_model(config, load_weights=False)
    model_zoo.set_variables(model, backbone, source=_BACKBONE_FILE)
  config.optim.backbone_learning_rate = lr
  config.optim.learning_rate = flag_values.learning_rate
  config.optim.trainable_backbone_blocks = -1
  config.train.num_steps = flag_values.num_steps
  config.optim.schedule = flag_values.schedule
  config.optim.warmup_steps = flag_values.warmup_steps
  config.train.batch_size = flag_values.batch_size
  size = config.data.image_size

  data = _load_pack(flag_values.pack_dir)
  side = flag_values.pack_side
  train_src, train_hw = _decode_all(data["train_jpeg"], data["train_jpeg_end"], side)
  val_src, val_hw = _decode_all(data["val_jpeg"], data["val_jpeg_end"], side)
  report({"event": "decoded", "train": len(train_src), "val": len(val_src),
          "devices": [d.device_kind for d in jax.devices()]})

  graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
  tx = steps.create_optimizer(config)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
           "opt_state": tx.init(params), "ema_params": jax.tree.map(jnp.copy, params)}
  train_step = jax.jit(functools.partial(
      steps.train_step, graphdef=graphdef, rng_state=rng_state, tx=tx, loss_config=config.loss,
      ema_decay=config.optim.ema_decay, base_key=jax.random.key(config.seed),
      is_frozen=steps.frozen_filter(config)), donate_argnums=0)
  options = dict(config.inference)
  predict = jax.jit(functools.partial(steps.predict_step, graphdef=graphdef, rng_state=rng_state,
                                      score_given_boxes=False, flip=options["flip"],
                                      vote_iou=options["vote_iou"]))
  score = jax.jit(functools.partial(steps.predict_step, graphdef=graphdef, rng_state=rng_state,
                                    score_given_boxes=True))

  @jax.jit
  def render(sources, windows, flips, jitter):
    images, valid_hw = resample(sources, windows, flips, size)
    return colour_jitter(images, valid_hw, jitter), valid_hw

  sources = jax.device_put(train_src)
  val_windows = np.concatenate([np.zeros_like(val_hw), val_hw[:, ::-1]], 1)
  val_images, val_valid = jax.jit(functools.partial(resample, size=size))(
      jax.device_put(val_src), val_windows, np.zeros(len(val_src), bool))

  def evaluate():
    """The validation slice through the project's own protocols (metrics.py)."""
    crops, pairs = metrics.IoUProtocol(top_ks=(5,)), metrics.PairwiseProtocol()
    n, chunk = len(val_src), 50
    for i in range(0, n, chunk):
      idx = np.arange(i, min(i + chunk, n))
      idx = np.pad(idx, (0, chunk - len(idx)), mode="edge")
      batch = {"image": val_images[idx], "image_valid_hw": val_valid[idx]}
      out = jax.device_get(predict(state, batch))
      pair_boxes = data["val_pair_boxes"][idx].reshape(chunk, -1, 4)
      given = jax.device_get(score(state, {**batch, "boxes": pair_boxes})["scores"])
      for row, j in enumerate(idx[:min(chunk, n - i)]):
        h, w = data["val_image_size"][j]
        px = np.array([w, h, w, h], np.float32)
        crops.add(j, out["boxes"][row] * px, data["val_boxes"][j][data["val_box_mask"][j]] * px,
                  (h, w), pred_scores=out["scores"][row])
        scores = given[row].reshape(-1, 2)
        pairs.add(j, scores[:, 0], scores[:, 1], data["val_pair_weights"][j])
    found = {**crops.result(), **pairs.result()}
    return {k: found[k] for k in ("iou", "bde", "iou_top5", "pair_acc", "pair_acc_strong")}

  # The starting point counts as a candidate (and saving it early surfaces any failure to save).
  best = {"step": 0, **evaluate()}
  report({"event": "eval", **best})
  save_params(run_dir, _flat(state["ema_params"]))
  rng = np.random.default_rng(config.seed + flag_values.worker)
  n_train, bsz = len(train_src), flag_values.batch_size
  keys = ("boxes", "box_mask", "pair_boxes", "pair_weights")
  loop_start, step = time.time(), 0
  while step < flag_values.num_steps:
    idx = rng.choice(n_train, bsz, replace=False)
    windows, flips, targets = draw_views(
        rng, data["train_boxes"][idx], data["train_box_mask"][idx],
        data["train_pair_boxes"][idx], data["train_pair_weights"][idx], train_hw[idx],
        crop_probability=config.data.crop_probability)
    images, valid_hw = render(sources[idx], windows, flips, rng.random((bsz, 3)))
    batch = {"image": images, "image_valid_hw": valid_hw,
             "box_scores": np.where(targets["box_mask"], 5.0, 0.0).astype(np.float32),
             **{k: targets[k] for k in keys}}
    state, step_metrics = train_step(state, batch)
    step += 1
    out_of_time = time.time() - loop_start > flag_values.train_seconds
    if step == 20:
      jax.block_until_ready(state)
      report({"event": "timing", "step": step,
              "loss": float(step_metrics["loss"]), "loop_s": round(time.time() - loop_start, 1)})
    if step % flag_values.eval_every == 0 or step == flag_values.num_steps or out_of_time:
      result = evaluate()
      report({"event": "eval", "step": step, "loss": float(step_metrics["loss"]), **result})
      if result["iou"] > best["iou"]:
        best = {"step": step, **result}
        save_params(run_dir, _flat(state["ema_params"]))
    if out_of_time:
      report({"event": "stopped", "step": step, "reason": "train_seconds"})
      break
  report({"event": "best", **best})


_PARAM_FILES = ("best_head.npz", "best_backbone.npz")


def save_params(folder: pathlib.Path, params) -> None:
  """The head as float16 (as it ships), the backbone as float32, in two files: a file that
  comes back from the accelerator is limited to 16 MiB. (Batch statistics stay the shipped
  model's: `model.freeze_backbone_bn`.)"""
  import jax  # pylint: disable=g-import-not-at-top
  arrays = {name: np.asarray(jax.device_get(v), np.float32) for name, v in params.items()}
  np.savez(folder / _PARAM_FILES[0], **{k: v.astype(np.float16) for k, v in arrays.items()
                                         if not k.startswith("backbone/")})
  np.savez(folder / _PARAM_FILES[1], **{k: v for k, v in arrays.items()
                                         if k.startswith("backbone/")})


def _flat(params):
  """{"a/b/c": array} of an nnx parameter state (the names `model_zoo` stores)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from procrop_jax import sharding  # pylint: disable=g-import-not-at-top
  return {sharding.path_to_string(path): value for path, value in nnx.to_flat_state(params)}


def train(flag_values) -> None:
  """Starts one worker per backbone learning rate side by side, waits, and ranks their bests."""
  out = pathlib.Path(flag_values.out)
  out.mkdir(parents=True, exist_ok=True)
  n = len(flag_values.backbone_learning_rates)
  env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / n:.2f}"}
  argv = [a for a in sys.argv[1:] if not a.startswith("--mode")]
  procs = [subprocess.Popen([sys.executable, "-m", "experiments.fcdb.accelerator_finetune",
                             "--mode=worker", f"--worker={i}", *argv], env=env)
           for i in range(n)]
  codes = [p.wait() for p in procs]
  bests = []
  for i in range(n):
    log = out / f"run{i}" / "log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    bests += [r for r in records if r["event"] == "best"][-1:]
  print(json.dumps({"event": "summary", "exit_codes": codes,
                    "bests": sorted(bests, key=lambda r: -r["iou"])}), flush=True)


# ---------------------------------------------------------------------------- export
def export(params_dir: str, export_dir: str) -> None:
  """A run's parameters -> a shipped-model folder, scored on the validation slice here."""
  from procrop_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  from procrop_jax import model_zoo  # pylint: disable=g-import-not-at-top

  shipped = model_zoo.load()
  for name in _PARAM_FILES:
    path = os.path.join(params_dir, name)
    with np.load(path) as data:
      model_zoo.set_variables(shipped.model, {k: data[k] for k in data.files}, source=path)
  card = {"name": pathlib.Path(export_dir).name,
          "training_command": "python -m experiments.fcdb.accelerator_finetune " + " ".join(
              a for a in sys.argv[1:] if not a.startswith("--mode")),
          "code_version": export_lib.code_version(), "inference": dict(shipped.config.inference)}
  export_lib.ship(shipped.model, shipped.config, export_dir, card=card)


def main(argv):
  del argv
  f = flags.FLAGS
  if f.mode == "pack":
    pack(f.pack_dir, f.pack_side, f.jpeg_quality, f.data_dir)
  elif f.mode == "train":
    train(f)
  elif f.mode == "worker":
    worker(f)
  else:
    export(f.params, f.export_dir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
