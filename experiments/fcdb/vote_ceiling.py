r"""How well can any scorer agree with FCDB's rated crop pairs? A ceiling from the votes alone.

  python -m experiments.fcdb.vote_ceiling [--split='train[85%:]'] [--data_dir=data/tfds]
  python -m experiments.fcdb.vote_ceiling --split= \
      [--annotations=data/manual/fcdb/ranking_annotation_train.json]

Each rated pair has five votes, and the pairwise protocol counts a scorer right when it agrees
with the majority. A pair that people prefer one way with probability p gets a 3:2 majority
for the less liked crop fairly often, so even a scorer that knows every pair's p exactly (an
oracle of the crowd) misses some pairs. Treating the five votes as independent draws given p,
the distribution of p over pairs fixes how often 5:0, 4:1 and 3:2 splits occur; this script
finds, by linear programming over that distribution, the lowest and highest accuracy such an
oracle can have while matching the observed splits exactly. Prints one JSON line: the split
counts, and the oracle's accuracy range on all pairs and on the pairs won by 4 or 5 votes. The
pairs are those of a split of the built FCDB (the validation slice by default, the pairs the
`pairs` protocol scores), or with --split= every pair of the ranking file.
"""

import collections
import json

from absl import app
from absl import flags
import numpy as np
from scipy import optimize
from scipy import stats
import tensorflow_datasets as tfds

import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  flags.DEFINE_string("split", "train[85%:]", "Split of the built FCDB whose pairs to count; "
                      "empty: every pair of --annotations.")
  flags.DEFINE_string("data_dir", "data/tfds", "TFDS data directory.")
  flags.DEFINE_string(
      "annotations", "data/manual/fcdb/ranking_annotation_train.json",
      "FCDB's rated crop pairs (ranking_annotation_train.json), read when --split is empty.")

VOTES = 5
# The preference for the pair's better side, p in [0.5, 1], on a fine grid.
_P = np.linspace(0.5, 1.0, 501)


def winner_vote_counts(votes: np.ndarray) -> collections.Counter:
  """Pairs by the winner's number of votes (3, 4 or 5), from votes [P, 2]; pairs without five
  votes are skipped."""
  votes = np.asarray(votes, np.int64).reshape(-1, 2)
  return collections.Counter(int(v) for v in votes[votes.sum(1) == VOTES].max(1))


def ranking_file_votes(annotations: list[dict]) -> np.ndarray:
  """Votes [P, 2] of every pair in FCDB's ranking file."""
  return np.array([(pair["vote_for_0"], pair["vote_for_1"])
                   for photo in annotations for pair in photo["crops"]], np.int64)


def split_votes(split: str, data_dir: str) -> np.ndarray:
  """Votes [P, 2] of the pairs of a split of the built FCDB."""
  source = tfds.builder("fcdb", data_dir=data_dir).as_data_source(
      split, decoders={"image": tfds.decode.SkipDecoding()})
  return np.concatenate([np.reshape(source[i]["pair_votes"], (-1, 2))
                         for i in range(len(source))])


def oracle_accuracy_range(counts: collections.Counter, strong_only: bool = False
                          ) -> tuple[float, float]:
  """(lowest, highest) majority agreement of a scorer that knows each pair's p.

  Over all distributions of p on [0.5, 1] that reproduce the observed shares of 3:2, 4:1 and 5:0
  splits. With strong_only, among the pairs won by 4 or 5 votes.
  """
  total = sum(counts[k] for k in (3, 4, 5))
  if not total:
    raise ValueError("No pair with five votes.")
  # P(the better side gets exactly k of the votes) for each p.
  gets = {k: stats.binom.pmf(k, VOTES, _P) for k in range(VOTES + 1)}
  split = {k: gets[k] + gets[VOTES - k] for k in (3, 4, 5)}  # A k:(5-k) split, either way.
  if strong_only:
    # Right when the better side wins by 4 or 5, over P(a 4:1 or 5:0 split), a fixed share.
    right = (gets[4] + gets[5]) / ((counts[4] + counts[5]) / total)
  else:
    right = gets[3] + gets[4] + gets[5]
  constraints = np.vstack([np.ones_like(_P), split[3], split[4]])
  shares = np.array([1.0, counts[3] / total, counts[4] / total])
  low = optimize.linprog(right, A_eq=constraints, b_eq=shares, bounds=(0, None))
  high = optimize.linprog(-right, A_eq=constraints, b_eq=shares, bounds=(0, None))
  if not (low.success and high.success):
    raise ValueError(f"No distribution of preferences reproduces the splits {dict(counts)}.")
  return float(low.fun), float(-high.fun)


def main(argv):
  del argv
  if FLAGS.split:
    votes = split_votes(FLAGS.split, FLAGS.data_dir)
  else:
    with open(FLAGS.annotations) as f:
      votes = ranking_file_votes(json.load(f))
  counts = winner_vote_counts(votes)
  print(json.dumps({
      "pairs": sum(counts.values()),
      "winner_votes": {f"{k}:{VOTES - k}": counts[k] for k in (5, 4, 3)},
      "oracle_accuracy_all": [round(v, 3) for v in oracle_accuracy_range(counts)],
      "oracle_accuracy_4_5_votes": [
          round(v, 3) for v in oracle_accuracy_range(counts, strong_only=True)],
  }))


if __name__ == "__main__":
  define_flags()
  app.run(main)
