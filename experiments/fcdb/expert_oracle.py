r"""Does the expert's crop predict the rated pairs? Scorers that know it, on FCDB's pairs.

  python -m experiments.fcdb.expert_oracle [--config=configs/fcdb_cpu.py] [--split='train[85%:]']

The given-box path is trained to estimate a crop's IoU with the expert's crop (the score of a
free crop means the same, issue 14), and the pairwise protocol asks it to agree with five
raters comparing two other crops of the photo. This prints, for each scorer that reads the
expert's crop exactly (no pixels), its agreement with the raters' majority, counted by
`metrics.PairwiseProtocol` as the `pairs` protocol counts the model, on the pairs as the input
pipeline hands them to the model (preferred first, weighted by the vote margin, ties at 0):

  iou        the crop's IoU with the expert's crop: what the score is trained to estimate,
             so a perfect estimate of it agrees with the raters this often and no more;
  coverage   the share of the expert's crop the crop keeps;
  precision  the share of the crop inside the expert's crop;
  area       the crop's area (prefer the larger crop, for comparison).

One JSON line per scorer: pair_acc and pair_acc_strong (pairs won by 4 or 5 of 5 votes).
"""

import json
from typing import Callable

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from procrop_jax import input_pipeline
from procrop_jax import metrics

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  config_flags.DEFINE_config_file("config", "configs/fcdb_cpu.py", "The recipe's config (its "
                                  "data: the built FCDB and its pair budget).")
  flags.DEFINE_string("split", "train[85%:]", "Split of the built FCDB whose pairs to score.")


def _area(boxes: np.ndarray) -> np.ndarray:
  return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(
      boxes[..., 3] - boxes[..., 1], 0, None)


def _intersection(boxes: np.ndarray, expert: np.ndarray) -> np.ndarray:
  width = np.minimum(boxes[..., 2], expert[2]) - np.maximum(boxes[..., 0], expert[0])
  height = np.minimum(boxes[..., 3], expert[3]) - np.maximum(boxes[..., 1], expert[1])
  return np.clip(width, 0, None) * np.clip(height, 0, None)


# Each maps crops [..., 4] and the expert's crop [4] (x1, y1, x2, y2, any common frame: every
# ratio below is unchanged by scaling the axes) to scores [...].
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "iou": lambda b, e: _intersection(b, e) / (_area(b) + _area(e) - _intersection(b, e)),
    "coverage": lambda b, e: _intersection(b, e) / _area(e),
    "precision": lambda b, e: _intersection(b, e) / np.maximum(_area(b), 1e-12),
    "area": lambda b, e: _area(b),
}


def score_pairs(batches, scorer: Callable[[np.ndarray, np.ndarray], np.ndarray]
                ) -> dict[str, float]:
  """The pairwise protocol's figures for `scorer` over batches in the input pipeline's layout:
  `boxes` [B, N, 4] (the expert's crop first), `pair_boxes` [B, P, 2, 4] (preferred first),
  `pair_weights` [B, P] (vote margins; 0 for ties and padding) and `valid` [B]."""
  protocol = metrics.PairwiseProtocol()
  photos = ((batch, i) for batch in batches for i in np.flatnonzero(batch["valid"]))
  for photo, (batch, i) in enumerate(photos):
    scores = scorer(np.asarray(batch["pair_boxes"][i], np.float64),
                    np.asarray(batch["boxes"][i][0], np.float64))
    protocol.add(photo, scores[:, 0], scores[:, 1], batch["pair_weights"][i])
  return protocol.result()


_KEYS = ("boxes", "pair_boxes", "pair_weights", "valid")


def main(argv):
  del argv
  # The pairs only (the photos are decoded and dropped): every scorer reads the same batches.
  batches = [{k: batch[k] for k in _KEYS} for batch in input_pipeline.create_eval_iterator(
      FLAGS.config.data, global_batch_size=8, split=FLAGS.split)]
  for name, scorer in SCORERS.items():
    result = score_pairs(batches, scorer)
    print(json.dumps({"scorer": name, "split": FLAGS.split,
                      **{k: result[k] for k in ("pair_acc", "pair_acc_strong", "num_pairs",
                                                "num_pairs_strong")}}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
