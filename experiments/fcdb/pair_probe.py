r"""Do frozen backbone features tell which of two crops people prefer? A linear probe.

  python -m experiments.fcdb.pair_probe [--config=configs/fcdb_cpu.py] [--data_dir=data/tfds]

For every rated crop pair of FCDB's training slice train[:85%] and validation slice train[85%:],
each crop is described by the frozen ImageNet backbone's stride-32 map (the features the CPU
recipe caches) averaged over a 4 x 4 grid of bilinear samples inside the crop ("inside"), the
map's mean over the rest of the photo ("outside"), and its geometry (area, centre offset,
margins, log aspect ratio). A logistic regression on the difference of two crops' descriptions
(no intercept, so swapping the crops flips the prediction; L2 penalty; the 1,280-channel
descriptions reduced to their first 96 principal components on the training slice) learns the
preferred crop on the training pairs and is scored like the `pairs` protocol on the validation
pairs: the share won by the crop it prefers, on all pairs and on those won by 4 or 5 of 5 votes.

Prints one JSON line per description: what a model could read from the features it is given,
next to the trained model's given-box scores (experiments/fcdb/RESULTS.md). Then the same
richest description scored by a ranking head of its own (a one-hidden-layer MLP per crop,
trained on the pairs alone with a pairwise logistic loss), one line per L2 penalty: whether a
nonlinear scorer that shares nothing with the set-prediction losses reads more.
"""

import json

from absl import app
from absl import flags
from flax import nnx
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from scipy import optimize

from procrop_jax import box_ops
from procrop_jax import input_pipeline
from procrop_jax import model_zoo
from procrop_jax.models import procrop

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  config_flags.DEFINE_config_file("config", "configs/fcdb_cpu.py",
                                  "The recipe's config (its data and backbone).")
  flags.DEFINE_string("train_split", "train[:85%]", "Pairs the probe learns from.")
  flags.DEFINE_string("eval_split", "train[85%:]", "Pairs it is scored on (never the test "
                      "split while tuning).")
  flags.DEFINE_float("penalty", 1e-3, "L2 penalty on the standardised weights.")
  flags.DEFINE_integer("mlp_hidden", 128, "Hidden units of the MLP ranking head.")
  flags.DEFINE_list("mlp_penalties", ["1e-4", "1e-3", "1e-2", "3e-2", "1e-1"],
                    "L2 penalties of the MLP ranking head, one row each.")

GRID = 4  # Samples per side inside a crop.
COMPONENTS = 96
DESCRIPTIONS = {"geometry": ("geometry",), "inside": ("inside",),
                "inside + geometry": ("inside", "geometry"),
                "inside + outside + geometry": ("inside", "outside", "geometry")}


def samples_in_boxes(fmap: np.ndarray, valid_hw: np.ndarray, boxes: np.ndarray,
                     points: int) -> np.ndarray:
  """[N, points, points, C]: the model's in-box samples (`procrop.sample_in_boxes`, the box
  content queries' reading) of fmap [h, w, C] on a points x points lattice inside each of boxes
  [N, 4] (x1, y1, x2, y2 of the photo, which covers the canvas's top-left valid_hw)."""
  h, w, c = fmap.shape
  samples = procrop.sample_in_boxes(
      jnp.asarray(fmap, jnp.float32).reshape(1, h * w, c), jnp.array([[h, w]], jnp.float32),
      jnp.asarray(valid_hw, jnp.float32)[None],
      box_ops.xyxy_to_cxcywh(jnp.asarray(boxes, jnp.float32))[None], points)
  return np.asarray(samples).reshape(len(boxes), points, points, c)


def mean_in_boxes(fmap: np.ndarray, valid_hw: np.ndarray, boxes: np.ndarray,
                  grid: int = GRID) -> np.ndarray:
  """[N, C]: the mean of `samples_in_boxes` on a grid x grid lattice."""
  return samples_in_boxes(fmap, valid_hw, boxes, grid).mean(axis=(1, 2))


def geometry(box: np.ndarray) -> np.ndarray:
  """A crop's shape and place (box: normalised x1, y1, x2, y2 of the photo)."""
  w, h = box[2] - box[0], box[3] - box[1]
  return np.array([w * h, np.sqrt(w * h), (box[0] + box[2]) / 2 - 0.5,
                   (box[1] + box[3]) / 2 - 0.5, box[0], box[1], 1 - box[2], 1 - box[3],
                   np.log(max(w, 1e-3) / max(h, 1e-3))])


def describe(fmap: np.ndarray, valid_hw: np.ndarray, boxes: np.ndarray) -> dict[str, np.ndarray]:
  """inside / outside / geometry of a photo's crops boxes [N, 4]; fmap covers the canvas, the
  photo its top-left valid_hw (fractions of the canvas)."""
  boxes = np.asarray(boxes, np.float32)
  inside = mean_in_boxes(fmap, valid_hw, boxes)
  whole = mean_in_boxes(fmap, valid_hw, np.array([[0.0, 0.0, 1.0, 1.0]]), grid=2 * GRID)
  area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
  outside = (whole - area * inside) / np.maximum(1.0 - area, 1e-3)
  return {"inside": inside, "outside": outside,
          "geometry": np.stack([geometry(box) for box in boxes])}


def frozen_maps(config, split: str):
  """Yields (batch, stride-32 maps [B, h, w, C] float32) over a split's photos, unaugmented,
  through config.model's frozen ImageNet backbone."""
  model = model_zoo.create_model(config, seed=0)
  features = nnx.jit(lambda m, x: m.backbone_features(x)["stride32"])
  for batch in input_pipeline.create_eval_iterator(config.data, global_batch_size=8,
                                                   split=split):
    yield batch, np.asarray(features(model, jnp.asarray(batch["image"])), np.float32)


def pair_descriptions(config, split: str):
  """(preferred, other) descriptions and vote margins of the rated pairs of a split."""
  preferred, other, margins = [], [], []
  for batch, fmaps in frozen_maps(config, split):
    for i in np.flatnonzero(batch["valid"]):
      rated = batch["pair_weights"][i] > 0  # Not ties, not padding.
      if rated.any():
        pairs = batch["pair_boxes"][i][rated]
        preferred.append(describe(fmaps[i], batch["image_valid_hw"][i], pairs[:, 0]))
        other.append(describe(fmaps[i], batch["image_valid_hw"][i], pairs[:, 1]))
        margins.append(batch["pair_weights"][i][rated])
  stack = lambda rows: {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  return stack(preferred), stack(other), np.concatenate(margins)


def fit_logistic(x: np.ndarray, penalty: float) -> np.ndarray:
  """Weights of P(first preferred) = sigmoid(x @ weights), every row's first preferred."""
  def loss_and_grad(weights):
    margin = x @ weights
    loss = np.mean(np.logaddexp(0.0, -margin)) + penalty * weights @ weights
    grad = -x.T @ (0.5 * (1.0 - np.tanh(margin / 2))) / len(x) + 2 * penalty * weights
    return loss, grad
  return optimize.minimize(loss_and_grad, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B",
                           options={"maxiter": 1000}).x


def fit_ranking_mlp(preferred: np.ndarray, other: np.ndarray, *, hidden: int, penalty: float,
                    steps: int = 1500, seed: int = 0):
  """A score s(x) = w . gelu(W x + b) learned so that s(preferred) > s(other) (pairwise
  logistic loss, L2 penalty on the weights, full-batch Adam); returns s as a function of [N, D]."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  k1, k2 = jax.random.split(jax.random.key(seed))
  d = preferred.shape[1]
  params = {"w1": jax.random.normal(k1, (d, hidden)) / np.sqrt(d), "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden,)) / np.sqrt(hidden)}
  score = lambda p, x: jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"]

  def loss(p):
    margin = score(p, preferred) - score(p, other)
    return (jnp.mean(jnp.logaddexp(0.0, -margin))
            + penalty * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2)))

  tx = optax.adam(1e-3)

  @jax.jit
  def step(p, state):
    grads = jax.grad(loss)(p)
    updates, state = tx.update(grads, state)
    return optax.apply_updates(p, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return lambda x: np.asarray(score(params, jnp.asarray(x, jnp.float32)))


def main(argv):
  del argv
  config = FLAGS.config
  train, val = (pair_descriptions(config, s) for s in (FLAGS.train_split, FLAGS.eval_split))
  # Principal components of the feature descriptions, from the training crops only.
  for key in ("inside", "outside"):
    rows = np.concatenate([train[0][key], train[1][key]])
    mean = rows.mean(0)
    _, _, components = np.linalg.svd(rows - mean, full_matrices=False)
    for preferred, other, _ in (train, val):
      preferred[key] = (preferred[key] - mean) @ components[:COMPONENTS].T
      other[key] = (other[key] - mean) @ components[:COMPONENTS].T
  differences = lambda split, keys: np.concatenate(
      [split[0][k] - split[1][k] for k in keys], axis=1)
  strong = val[2] >= 0.6 - 1e-6  # Won by 4 or 5 of 5 votes.
  for name, keys in DESCRIPTIONS.items():
    x_train, x_val = differences(train, keys), differences(val, keys)
    scale = x_train.std(0) + 1e-6
    weights = fit_logistic(x_train / scale, FLAGS.penalty)
    right = (x_val / scale) @ weights > 0
    print(json.dumps({"description": name, "train_pairs": len(x_train),
                      "val_pairs": len(x_val),
                      "train_accuracy": round(float(np.mean(x_train / scale @ weights > 0)), 3),
                      "pairs": round(float(right.mean()), 3),
                      "pairs_4_5_votes": round(float(right[strong].mean()), 3)}), flush=True)
  # A ranking head of its own: a small MLP scoring each crop, trained on the pairs alone.
  keys = DESCRIPTIONS["inside + outside + geometry"]
  crops = {name: [np.concatenate([split[side][k] for k in keys], axis=1) for side in (0, 1)]
           for name, split in (("train", train), ("val", val))}
  pooled = np.concatenate(crops["train"])
  mean, scale = pooled.mean(0), pooled.std(0) + 1e-6
  (train_a, train_b), (val_a, val_b) = ([(x - mean) / scale for x in crops[name]]
                                        for name in ("train", "val"))
  for penalty in FLAGS.mlp_penalties:
    score = fit_ranking_mlp(train_a, train_b, hidden=FLAGS.mlp_hidden, penalty=float(penalty))
    right = score(val_a) > score(val_b)
    print(json.dumps({"description": "inside + outside + geometry, MLP ranking head",
                      "hidden": FLAGS.mlp_hidden, "penalty": float(penalty),
                      "train_accuracy": round(float(np.mean(score(train_a) > score(train_b))), 3),
                      "pairs": round(float(right.mean()), 3),
                      "pairs_4_5_votes": round(float(right[strong].mean()), 3)}), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
