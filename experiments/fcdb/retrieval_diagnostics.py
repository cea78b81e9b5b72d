r"""Why retrieval does not help the FCDB recipe: do the retrieved compositions say where to crop?

  python -m experiments.fcdb.retrieval_diagnostics [--config=configs/fcdb_cpu.py] [--k=10]

The recipe's references are the expert crops of train[:85%], found by the layout embedding
(`procrop_jax/retrieval/embedding.py`: the frozen stride-32 map pooled on a 4 x 4 grid, cells
projected on their principal axes, cosine similarity). Before asking why the fusion does not
use them, this asks whether they hold the information at all, on the validation slice
train[85%:], with no training:

1. Box transfer. Each validation photo retrieves its K nearest expert crops (by its own layout
   embedding against theirs, as the model's retrieval does); the mean of those crops' boxes in
   their own photos is a crop for the query. If photos that look alike were cropped alike, this
   beats the mean box of the whole training slice. Also for K nearest whole training photos.
2. Layout matching (the method's premise: a good crop of the query looks like the professional
   compositions retrieved for it). Every candidate crop on a fixed lattice of the query is
   embedded the same way; the candidate most similar to the K references is the crop. Scored
   against the same choice with K random expert crops as references, and by how well the
   similarity orders the candidates by their IoU with the expert's crop (mean Spearman per
   photo).

3. A prior on a trained model's proposals (`--model`, the shipped one by default): its top-1
   without voting, and re-ranked by score + w * IoU with the mean box of the K nearest training
   photos, over a grid of K and w (does the model already know what the neighbours know?).

All layouts come from one descriptor: the map sampled bilinearly on an 8 x 8 lattice inside a
box and averaged to 4 x 4 cells (a crop region read from its photo's map, where the database
runs the backbone on the cut-out crop; a close stand-in at this stride). Prints one JSON line
per figure; IoU as in the `iou` protocol (normalised boxes: IoU is unchanged by scaling axes).
"""

import itertools
import json

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from scipy import stats

from experiments.fcdb import pair_probe
from experiments.fcdb import selection_diagnostics
from procrop_jax import box_geometry
from procrop_jax.retrieval import embedding

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  config_flags.DEFINE_config_file("config", "configs/fcdb_cpu.py",
                                  "The recipe's config (its data, backbone and retrieval grids).")
  flags.DEFINE_string("database_split", "train[:85%]", "Photos whose expert crops are the "
                      "references (the recipe's database).")
  flags.DEFINE_string("eval_split", "train[85%:]", "Query photos (never the test split).")
  flags.DEFINE_integer("k", 10, "References per query.")
  flags.DEFINE_integer("seed", 0, "Seed of the random references.")
  flags.DEFINE_string("model", "fcdb_lite0", "Trained run or shipped model whose proposals get "
                      "the neighbours' prior (empty: skip).")
  flags.DEFINE_list("prior_k", ["5", "10", "20", "40"], "Neighbours of the prior's rows.")
  flags.DEFINE_list("prior_weights", ["0.05", "0.1", "0.2", "0.4"], "Weights of the prior.")

SAMPLES = 8  # Lattice points per side inside a box, averaged down to the tokens grid.


def box_tokens(fmap: np.ndarray, valid_hw: np.ndarray, boxes: np.ndarray, grid: int
               ) -> np.ndarray:
  """[N, grid * grid, C]: fmap [h, w, C] read inside each of boxes [N, 4] (normalised x1, y1,
  x2, y2 of the photo, which covers the canvas's top-left valid_hw), row-major cells."""
  samples = pair_probe.samples_in_boxes(fmap, valid_hw, boxes, SAMPLES)
  f, c = SAMPLES // grid, samples.shape[-1]
  cells = samples.reshape(len(boxes), grid, f, grid, f, c).mean(axis=(2, 4))
  return cells.reshape(len(boxes), grid * grid, c)


def candidate_boxes(step: float = 0.1, max_margin: float = 0.3) -> np.ndarray:
  """[N, 4] crops whose four margins each take 0, step, ..., max_margin of the photo."""
  margins = np.arange(0.0, max_margin + 1e-6, step)
  return np.array([[l, t, 1 - r, 1 - b] for l, t, r, b in itertools.product(margins, repeat=4)],
                  np.float32)


def nearest(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
  """[Q, k] rows of keys by descending cosine (both L2-normalised)."""
  return np.argsort(-(queries @ keys.T), axis=1)[:, :k]


def layout_choice(candidates: np.ndarray, references: np.ndarray) -> tuple[int, np.ndarray]:
  """The candidate (embeddings [N, D]) most similar on average to references [K, D], and every
  candidate's mean similarity."""
  similarity = (candidates @ references.T).mean(axis=1)
  return int(np.argmax(similarity)), similarity


def _photos(config, split: str):
  """(expert boxes [N, 4], stride-32 maps [N, h, w, C], valid_hw [N, 2]) of a split."""
  boxes, fmaps, valid_hw = [], [], []
  for batch, out in pair_probe.frozen_maps(config, split):
    for i in np.flatnonzero(batch["valid"]):
      boxes.append(batch["boxes"][i][0])
      fmaps.append(out[i].astype(np.float16))  # float16: the training slice's maps take 0.3 GB.
      valid_hw.append(batch["image_valid_hw"][i])
  return np.array(boxes, np.float32), np.stack(fmaps), np.array(valid_hw, np.float32)


def main(argv):
  del argv
  config, k = FLAGS.config, FLAGS.k
  grid = config.retrieval.tokens_grid
  db_boxes, db_maps, db_hw = _photos(config, FLAGS.database_split)
  q_boxes, q_maps, q_hw = _photos(config, FLAGS.eval_split)
  whole = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
  crop_tokens = np.concatenate([box_tokens(m, hw, b[None], grid)
                                for m, hw, b in zip(db_maps, db_hw, db_boxes)])
  projection = embedding.fit_projection(
      crop_tokens, tokens_grid=grid, embedding_grid=config.retrieval.embedding_grid,
      embedding_dim=config.retrieval.embedding_dim)
  crops = projection(crop_tokens)
  db_photos = projection(np.concatenate([box_tokens(m, hw, whole, grid)
                                         for m, hw in zip(db_maps, db_hw)]))
  queries = projection(np.concatenate([box_tokens(m, hw, whole, grid)
                                       for m, hw in zip(q_maps, q_hw)]))
  rng = np.random.default_rng(FLAGS.seed)
  random_rows = np.stack([rng.choice(len(crops), k, replace=False) for _ in queries])

  def report(name, predicted):
    ious = np.array([box_geometry.pairwise_box_iou(p[None], gt[None])[0, 0]
                     for p, gt in zip(predicted, q_boxes)])
    print(json.dumps({"figure": name, "k": k, "iou": round(float(ious.mean()), 4),
                      "photos": len(ious)}), flush=True)

  report("box transfer: mean box of the training slice",
         np.broadcast_to(db_boxes.mean(0), q_boxes.shape))
  crop_neighbours = nearest(queries, crops, k)
  # Every training photo by similarity: the first k here, a grid of K for the prior below.
  photo_order = nearest(queries, db_photos, len(db_photos))
  report("box transfer: K nearest expert crops", db_boxes[crop_neighbours].mean(1))
  report("box transfer: K nearest training photos", db_boxes[photo_order[:, :k]].mean(1))
  report("box transfer: K random expert crops", db_boxes[random_rows].mean(1))

  candidates = candidate_boxes()
  choices = {"nearest": [], "random": [], "oracle": [], "largest": []}
  correlations = {"nearest": [], "random": []}
  for i, (fmap, hw, gt) in enumerate(zip(q_maps, q_hw, q_boxes)):
    embedded = projection(box_tokens(fmap, hw, candidates, grid))
    ious = box_geometry.pairwise_box_iou(candidates, gt[None])[:, 0]
    for name, rows in (("nearest", crop_neighbours[i]), ("random", random_rows[i])):
      best, similarity = layout_choice(embedded, crops[rows])
      choices[name].append(candidates[best])
      correlations[name].append(stats.spearmanr(similarity, ious).statistic)
    choices["oracle"].append(candidates[np.argmax(ious)])
    choices["largest"].append(candidates[0])
  for name, picked in choices.items():
    report(f"layout matching: the candidate chosen by {name} references"
           if name in correlations else f"layout matching: the {name} candidate", picked)
  for name, values in correlations.items():
    print(json.dumps({"figure": f"layout matching: Spearman(similarity to {name} references, "
                      "IoU with the expert crop), mean per photo",
                      "k": k, "value": round(float(np.nanmean(values)), 4)}))

  if FLAGS.model:
    data = selection_diagnostics.proposals(FLAGS.model, FLAGS.eval_split)
    if not np.allclose(data["gt"], q_boxes, atol=1e-4):
      raise ValueError(f"{FLAGS.model}'s photos of {FLAGS.eval_split} come in another order")
    print(json.dumps({"figure": "prior: the model's top-1, no voting", "model": FLAGS.model,
                      **selection_diagnostics.score_choice(
                          selection_diagnostics.top1_choice(data["boxes"], data["scores"]),
                          data)}))
    for neighbours_k in map(int, FLAGS.prior_k):
      prior_box = db_boxes[photo_order[:, :neighbours_k]].mean(1)
      overlap = np.stack([box_geometry.pairwise_box_iou(b, p[None])[:, 0]
                          for b, p in zip(data["boxes"], prior_box)])
      for weight in map(float, FLAGS.prior_weights):
        chosen = selection_diagnostics.top1_choice(data["boxes"], data["scores"] + weight * overlap)
        print(json.dumps({"figure": "prior: re-ranked by score + w * IoU with the K nearest "
                          "training photos' mean box", "k": neighbours_k, "w": weight,
                          **selection_diagnostics.score_choice(chosen, data)}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
