r"""K-fold cross-validation on FCDB's training split: the protocol every recipe decision uses.

  python -m experiments.fcdb.cross_validate --config=configs/fcdb_cpu.py \
      --workdir=workdirs/cv/reference [--folds=5] [--only_folds=0,1] \
      [--reference=workdirs/cv/other] [--config.FIELD=VALUE ...]

Why: one validation slice of 200 photos, looked at after every checkpoint and lever, stopped
predicting the blind test split (it read 0.045 IoU above it for the shipped model). Here every
usable training photo (1,335) is scored once, by a model that never trained on it, and nothing is
chosen on the scored photos:

- The split is cut into `--folds` contiguous parts of its (builder-shuffled) order; fold k
  trains on the others (`train[:a]+train[b:]`) and is scored on its own (`train[a:b]`).
- The checkpoint rule is fixed in advance: the final step of the config's schedule. The folds
  evaluate once, at that step (`train.eval_every = train.num_steps`), never in between.
- A frozen backbone's feature cache covers the whole split and is shared by every fold
  (`data.feature_cache.split`): each fold samples the rows of its own training photos only.

Writes WORKDIR/fold_<k>/ (a training workdir: checkpoints, metrics.jsonl and
eval/*.per_image.json) and WORKDIR/summary.json, and prints JSON lines:

- per fold: its photos, IoU / BDE, and minutes;
- the pooled out-of-fold figures: mean IoU and BDE with their standard errors over photos, the
  spread of the fold means, and the margin over a centred 90% crop (and over the whole photo)
  on the same photos, as a paired mean with a bootstrap 95% interval;
- with --reference (another cross-validation workdir of the same folds), the paired per-photo
  difference against it, with its bootstrap 95% interval.

Weak labels made from FCDB crops must come from each fold's own training photos: a
`train.init_from` or retrieval database built from the whole split leaks the scored photos'
crops into their own model. Professional photos (CAD pretraining, references) cannot leak.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np
import tensorflow_datasets as tfds

import procrop_jax.datasets  # pylint: disable=unused-import  (registers the builders)
from procrop_jax import evaluate
from procrop_jax import feature_cache
from procrop_jax import metrics
from procrop_jax import train
from procrop_jax.datasets import prepare

BENCHMARK = "fcdb_fold"
# Trivial crops scored on the same photos: fraction of each side kept, centred.
BASELINES = {"centred 90%": 0.9, "whole photo": 1.0}


# ------------------------------------------------------------------------------------- folds
def fold_bounds(num_examples: int, folds: int) -> list[tuple[int, int]]:
  """[start, stop) of each fold's photos: contiguous, disjoint, covering all of them."""
  if not 2 <= folds <= num_examples:
    raise ValueError(f"--folds={folds}: need 2 <= folds <= {num_examples} (the photos)")
  edges = [round(k * num_examples / folds) for k in range(folds + 1)]
  return list(zip(edges[:-1], edges[1:]))


def fold_splits(split: str, num_examples: int, folds: int, fold: int) -> tuple[str, str]:
  """(training split, held-out split) of fold `fold`, as TFDS split strings over `split`."""
  start, stop = fold_bounds(num_examples, folds)[fold]
  parts = ([f"{split}[:{start}]"] if start else []) + (
      [f"{split}[{stop}:]"] if stop < num_examples else [])
  return "+".join(parts), f"{split}[{start}:{stop}]"


def fold_config(config: ml_collections.ConfigDict, split: str, num_examples: int, folds: int,
                fold: int) -> ml_collections.ConfigDict:
  """`config` trained on fold `fold`'s training photos and scored once, at its final step, on
  the fold's own photos."""
  config = ml_collections.ConfigDict(config.to_dict())
  train_split, held_out = fold_splits(split, num_examples, folds, fold)
  config.data.train_split = train_split
  config.data.eval_split = held_out
  if feature_cache.enabled(config):
    config.data.feature_cache.split = split  # One cache for every fold.
  config.eval.benchmarks = {BENCHMARK: dict(
      dataset=config.data.dataset, builder_config=config.data.builder_config, split=held_out,
      manual_dir=config.data.manual_dir, protocols="iou", max_boxes=config.data.max_boxes)}
  config.eval.best_benchmark = BENCHMARK
  config.train.eval_every = config.train.num_steps  # The fixed rule: the final step only.
  return config


# --------------------------------------------------------------------------------- statistics
def standard_error(values: np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def paired_interval(differences: np.ndarray, *, samples: int = 10_000, seed: int = 0,
                    level: float = 0.95) -> dict[str, float]:
  """Mean of per-photo differences with its percentile-bootstrap interval (photos resampled)."""
  differences = np.asarray(differences, np.float64)
  if differences.ndim != 1 or not len(differences):
    raise ValueError("paired_interval needs a non-empty 1-D array of per-photo differences")
  rng = np.random.default_rng(seed)
  means = np.empty(samples)
  for start in range(0, samples, 1000):  # Chunks bound the memory on large sets.
    count = min(1000, samples - start)
    picks = rng.integers(len(differences), size=(count, len(differences)))
    means[start:start + count] = differences[picks].mean(axis=1)
  tail = (1 - level) / 2
  low, high = np.quantile(means, [tail, 1 - tail])
  return {"mean": float(differences.mean()), "low": float(low), "high": float(high),
          "se": standard_error(differences) if len(differences) > 1 else 0.0,
          "photos": len(differences)}


def baseline_per_image(builder: tfds.core.DatasetBuilder, split: str
                       ) -> dict[str, dict[str, dict[str, float]]]:
  """IoU / BDE of each trivial crop (`BASELINES`) on every photo of `split`, by image_id."""
  source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in BASELINES}
  for i in range(len(source)):
    example = source[i]
    height, width = (int(v) for v in example["image_size"])
    truth = np.asarray(example["boxes"], np.float64) * [width, height, width, height]
    image_id = example["image_id"].decode()
    for name, side in BASELINES.items():
      margin = (1 - side) / 2
      box = np.array([margin * width, margin * height, (1 - margin) * width,
                      (1 - margin) * height])
      iou, bde, _ = metrics.iou_and_bde(box, truth, (height, width))
      out[name][image_id] = {"iou": iou, "bde": bde}
  return out


def summarize(model: dict[str, dict[str, float]],
              baselines: dict[str, dict[str, dict[str, float]]],
              fold_of: dict[str, int], reference: dict[str, dict[str, float]] | None = None,
              *, samples: int = 10_000) -> dict[str, Any]:
  """The protocol's figures from per-photo values (image_id -> {"iou", "bde", ...})."""
  ids = sorted(model)
  iou = np.array([model[i]["iou"] for i in ids])
  bde = np.array([model[i]["bde"] for i in ids])
  folds = sorted(set(fold_of[i] for i in ids))
  fold_means = [float(np.mean([model[i]["iou"] for i in ids if fold_of[i] == k])) for k in folds]
  summary: dict[str, Any] = {
      "photos": len(ids), "folds": len(folds),
      "iou": float(iou.mean()), "iou_se": standard_error(iou),
      "bde": float(bde.mean()), "bde_se": standard_error(bde),
      "fold_iou": fold_means,
  }
  if "iou_top5" in model[ids[0]]:
    summary["iou_top5"] = float(np.mean([model[i]["iou_top5"] for i in ids]))
  for name, values in baselines.items():
    summary[f"{name} iou"] = float(np.mean([values[i]["iou"] for i in ids]))
    summary[f"margin over {name}"] = paired_interval(
        iou - np.array([values[i]["iou"] for i in ids]), samples=samples)
  if reference is not None:
    shared = [i for i in ids if i in reference]
    if len(shared) != len(ids):
      raise ValueError(f"the reference scored {len(shared)} of these {len(ids)} photos: "
                       "compare runs of the same folds")
    summary["reference iou"] = float(np.mean([reference[i]["iou"] for i in ids]))
    summary["difference"] = paired_interval(
        iou - np.array([reference[i]["iou"] for i in ids]), samples=samples)
    summary["bde difference"] = paired_interval(
        bde - np.array([reference[i]["bde"] for i in ids]), samples=samples)
  return summary


# ---------------------------------------------------------------------------------- the runs
def fold_result_path(fold_workdir: str, config: ml_collections.ConfigDict) -> str:
  name = evaluate.result_filename(config.data.dataset, config.data.eval_split,
                                  config.data.builder_config)
  return evaluate.per_image_path(os.path.join(fold_workdir, "eval", name))


def read_fold(path: str, num_steps: int) -> dict[str, dict[str, float]] | None:
  """The fold's per-photo IoU values if it finished its schedule, else None."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    record = json.load(f)
  return record["iou"] if record.get("step") == num_steps else None


def run_fold(config: ml_collections.ConfigDict, fold_workdir: str) -> dict[str, Any]:
  """Trains (or resumes) one fold and returns its per-photo values at the final step."""
  path = fold_result_path(fold_workdir, config)
  done = read_fold(path, config.train.num_steps)
  if done is not None:
    return done
  start = time.time()
  train.train_and_evaluate(config, fold_workdir)
  done = read_fold(path, config.train.num_steps)
  if done is None:
    raise RuntimeError(f"{fold_workdir}: training ended without the final evaluation ({path})")
  with open(os.path.join(fold_workdir, "cv_fold.json"), "w") as f:
    json.dump({"minutes": (time.time() - start) / 60}, f)
  return done


def _fold_minutes(fold_workdir: str) -> float | None:
  """How long the fold trained, if this tool trained it."""
  path = os.path.join(fold_workdir, "cv_fold.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)["minutes"]


def cross_validate(config: ml_collections.ConfigDict, workdir: str, *, folds: int,
                   only_folds: Sequence[int] = (), reference: str = "",
                   samples: int = 10_000) -> dict[str, Any]:
  """Runs the folds (those missing), then writes and returns WORKDIR/summary.json's record."""
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  split = config.data.train_split.split("[")[0]
  num_examples = builder.info.splits[split].num_examples
  if config.train.init_from:
    logging.warning("train.init_from=%s: it must have seen none of %s's photos, or the folds "
                    "score photos their model trained on.", config.train.init_from, split)
  model: dict[str, dict[str, float]] = {}
  fold_of: dict[str, int] = {}
  for fold in only_folds or range(folds):
    fold_workdir = os.path.join(workdir, f"fold_{fold}")
    per_image = run_fold(fold_config(config, split, num_examples, folds, fold), fold_workdir)
    minutes = _fold_minutes(fold_workdir)
    ious = [v["iou"] for v in per_image.values()]
    print(json.dumps({"fold": fold, "photos": len(ious), "iou": float(np.mean(ious)),
                      "bde": float(np.mean([v["bde"] for v in per_image.values()])),
                      "minutes": minutes}), flush=True)
    model.update(per_image)
    fold_of.update({i: fold for i in per_image})
  baselines = baseline_per_image(builder, split)
  reference_values = None
  if reference:
    with open(os.path.join(reference, "per_image.json")) as f:
      reference_values = json.load(f)
  summary = summarize(model, baselines, fold_of, reference_values, samples=samples)
  summary.update(command=" ".join(sys.argv), steps=config.train.num_steps, folds_run=len(
      set(fold_of.values())), folds_total=folds, reference=reference or None)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "per_image.json"), "w") as f:
    json.dump(model, f)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary), flush=True)
  return summary


def define_flags():
  """The command's flags (not at import: tests import the functions)."""
  config_flags.DEFINE_config_file("config", None, "Training config.", lock_config=False)
  flags.DEFINE_string("workdir", None, "Folder of the folds' workdirs and the summary.",
                      required=True)
  flags.DEFINE_integer("folds", 5, "Number of folds.")
  flags.DEFINE_list("only_folds", [], "Run (and summarise) only these folds, e.g. 0,1: a "
                    "screening run; the full protocol runs them all.")
  flags.DEFINE_string("reference", "", "A cross-validation workdir of the same folds to pair "
                      "against (its per_image.json).")
  flags.DEFINE_integer("bootstrap_samples", 10_000, "Bootstrap resamples of the photos.")


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  cross_validate(f.config, f.workdir, folds=f.folds,
                 only_folds=[int(k) for k in f.only_folds], reference=f.reference,
                 samples=f.bootstrap_samples)


if __name__ == "__main__":
  define_flags()
  app.run(main)
