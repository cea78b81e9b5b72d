r"""How well one expert's crop predicts another's (FLMS): what "IoU with one expert's crop" rewards.

  python -m experiments.fcdb.expert_agreement \
      [--annotations=../shared/data/annotations/flms/image_crop.json]

FCDB gives each photo one expert crop, so the agreement between experts cannot be measured on
it. FLMS gives about ten experts' crops of each of its 500 photos (annotations only; no pixels
are read). Scoring every expert's crop against the others, as FCDB's protocol scores a model
against its one expert, prints (one JSON line):

  other_expert     the mean IoU of one expert's crop with another expert's (every ordered pair):
                   what a model that crops exactly like a random expert would score;
  consensus        for each held-out expert, the crop of the remaining experts that overlaps the
                   rest of them most (their medoid) against the held-out one: what a model that
                   knew the experts' consensus crop would score;
  best_other       for each held-out expert, the best of the other experts' crops (an oracle
                   that picks, among crops a person drew, the one closest to the held-out one).

`consensus` is what knowing the experts' shared composition is worth against one of them; what
a model scores above it comes from matching the particular expert (for FCDB, the habits of its
annotators) or from a crop better placed than the medoid that no expert drew.
"""

import json

from absl import app
from absl import flags
import numpy as np

from procrop_jax import box_geometry
from procrop_jax.datasets import flms

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  flags.DEFINE_string("annotations", "../shared/data/annotations/flms/image_crop.json",
                      "FLMS's image_crop.json (several expert crops per photo).")


def agreement(boxes_px: np.ndarray) -> dict[str, float] | None:
  """The three figures of the docstring for one photo's expert crops [N, 4] (None if N < 2)."""
  boxes = boxes_px[(boxes_px[:, 2] > boxes_px[:, 0]) & (boxes_px[:, 3] > boxes_px[:, 1])]
  n = len(boxes)
  if n < 2:
    return None
  iou = box_geometry.pairwise_box_iou(boxes, boxes)
  consensus, best_other = [], []
  for held_out in range(n):
    rest = np.delete(np.arange(n), held_out)
    medoid = rest[np.argmax(iou[np.ix_(rest, rest)].sum(1))]
    consensus.append(iou[medoid, held_out])
    best_other.append(iou[rest, held_out].max())
  return {"other_expert": float(iou[~np.eye(n, dtype=bool)].mean()),
          "consensus": float(np.mean(consensus)), "best_other": float(np.mean(best_other))}


def main(argv):
  del argv
  rows = [row for entry in flms.parse_annotations(FLAGS.annotations)
          if (row := agreement(entry["boxes_px"])) is not None]
  if not rows:
    raise SystemExit(f"{FLAGS.annotations}: no photo with two or more valid expert crops")
  print(json.dumps({"annotations": FLAGS.annotations, "photos": len(rows),
                    **{key: round(float(np.mean([row[key] for row in rows])), 4)
                       for key in rows[0]}}), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
