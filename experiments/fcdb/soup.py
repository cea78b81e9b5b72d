r"""A model soup: the mean of the parameters of several fine-tunes of one model, scored.

  python -m experiments.fcdb.soup --sources=workdirs/ft_seed1,workdirs/ft_seed2,fcdb_lite0 \
      [--out=DIR]

Fine-tunes that start from the same parameters (here: the CAD-pretrained model, with different
seeds, so different cached views, batch orders and dropout) usually stay in one basin of the
loss, and the mean of their parameters can score better than each (Wortsman et al., "Model
soups", ICML 2022) at the cost of one model. Each source is a training workdir (its best
checkpoint, else its latest; with --latest its latest; EMA parameters where kept) or a shipped
model's name or folder; the first source's config runs its benchmarks (the validation slice).
Prints one JSON line per source and one for the soup; with --out, the soup is also written and
re-scored as a shipped-model folder (`export.ship`).
"""

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from procrop_jax import export
from procrop_jax import inference
from procrop_jax import modes

FLAGS = flags.FLAGS
_FIGURES = ("iou", "bde", "iou_top5", "pair_acc", "pair_acc_strong", "aspect_iou", "aspect_bde")


def define_flags():
  """The command's flags (not at import: tests import the functions beside other commands)."""
  flags.DEFINE_list("sources", None, "Training workdirs or shipped models to average (two or "
                    "more, all of the same model).")
  flags.DEFINE_string("out", "", "Also write the soup as a shipped-model folder here.")
  flags.DEFINE_bool("score_sources", True, "Score each source as well as the soup.")
  flags.DEFINE_bool("latest", False, "Take each workdir's latest checkpoint, not its best.")


def mean_params(trees: Sequence[Any], names: Sequence[str]) -> Any:
  """The element-wise mean (in float32, cast back) of parameter trees of one structure.

  Raises:
    ValueError: a tree's structure or an array's shape differs from the first's, naming it.
  """
  if len(trees) < 2:
    raise ValueError(f"A soup needs two or more sources, got {list(names)}")
  first = jax.tree_util.tree_structure(trees[0])
  shapes = [np.shape(x) for x in jax.tree.leaves(trees[0])]
  for tree, name in zip(trees[1:], names[1:]):
    if jax.tree_util.tree_structure(tree) != first:
      raise ValueError(f"{name}: its parameters are not those of {names[0]}'s model")
    differ = [i for i, x in enumerate(jax.tree.leaves(tree)) if np.shape(x) != shapes[i]]
    if differ:
      raise ValueError(f"{name}: {len(differ)} parameter shapes differ from {names[0]}'s")
  return jax.tree.map(
      lambda *xs: np.mean([np.asarray(x, np.float32) for x in xs], axis=0).astype(
          np.asarray(xs[0]).dtype), *trees)


def _figures(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  return {name: {k: round(float(r[k]), 4) for k in _FIGURES if k in r}
          for name, r in results.items()}


def _load(source: str, latest: bool) -> inference.Predictor:
  if latest and os.path.isdir(os.path.join(source, "checkpoints")):
    return inference.Predictor.from_workdir(source)
  return inference.Predictor.from_source(source)


def main(argv):
  del argv
  predictors = [_load(source, FLAGS.latest) for source in FLAGS.sources]
  if FLAGS.score_sources:
    for source, predictor in zip(FLAGS.sources, predictors):
      print(json.dumps({"source": source, "step": predictor.step,
                        **_figures(modes.run_benchmarks(predictor, None))}), flush=True)
  first = predictors[0]
  soup = mean_params([jax.device_get(p.state["params"]) for p in predictors], FLAGS.sources)
  model = nnx.merge(first.graphdef, soup, first.rng_state, first.state["rest"])
  if FLAGS.out:
    card = {"name": os.path.basename(FLAGS.out.rstrip("/")),
            "training_command": "model soup of " + ", ".join(FLAGS.sources),
            "soup_of": [p.source for p in predictors], "code_version": export.code_version(),
            "inference": dict(first.config.inference)}
    card = export.ship(model, first.config, FLAGS.out, card=card)
    print(json.dumps({"soup": FLAGS.sources, **card["benchmarks"]}))
  else:
    results = modes.run_benchmarks(inference.Predictor(model, first.config, source="soup"), None)
    print(json.dumps({"soup": FLAGS.sources, **_figures(results)}))


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("sources")
  app.run(main)
