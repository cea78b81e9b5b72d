r"""Does the expert's crop predict the rated pairs? Scorers that know it, on FCDB's pairs.

  python -m experiments.fcdb.expert_oracle [--split='train[85%:]'] [--data_dir=data/tfds]

The given-box path is trained to estimate a crop's IoU with the expert's crop (the score of a
free crop means the same, issue 14), and the pairwise protocol asks it to agree with five
raters comparing two other crops of the photo. This prints, for each scorer that reads the
expert's crop exactly (no pixels), its agreement with the raters' majority, counted by
`metrics.PairwiseProtocol` as the `pairs` protocol counts the model:

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
import numpy as np
import tensorflow_datasets as tfds

from procrop_jax import metrics
import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  flags.DEFINE_string("split", "train[85%:]", "Split of the built FCDB whose pairs to score.")
  flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")


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


def score_pairs(examples, scorer: Callable[[np.ndarray, np.ndarray], np.ndarray]
                ) -> dict[str, float]:
  """The pairwise protocol's figures for `scorer` over examples with `boxes` [N, 4] (the first
  is the expert's crop), `pair_boxes` [P, 2, 4] and `pair_votes` [P, 2]."""
  protocol = metrics.PairwiseProtocol()
  for index, example in enumerate(examples):
    pair_boxes = np.asarray(example["pair_boxes"], np.float64).reshape(-1, 2, 4)
    votes = np.asarray(example["pair_votes"], np.float64).reshape(-1, 2)
    if not len(votes):
      continue
    scores = scorer(pair_boxes, np.asarray(example["boxes"], np.float64)[0])
    first_wins = votes[:, 0] >= votes[:, 1]
    preferred = np.where(first_wins, scores[:, 0], scores[:, 1])
    other = np.where(first_wins, scores[:, 1], scores[:, 0])
    margins = np.abs(votes[:, 0] - votes[:, 1]) / np.maximum(votes.sum(1), 1)
    protocol.add(index, preferred, other, margins)
  return protocol.result()


def main(argv):
  del argv
  source = tfds.builder("fcdb", data_dir=FLAGS.data_dir).as_data_source(
      FLAGS.split, decoders={"image": tfds.decode.SkipDecoding()})
  examples = [source[i] for i in range(len(source))]
  for name, scorer in SCORERS.items():
    result = score_pairs(examples, scorer)
    print(json.dumps({"scorer": name, "split": FLAGS.split,
                      **{k: result[k] for k in ("pair_acc", "pair_acc_strong", "num_pairs",
                                                "num_pairs_strong")}}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
