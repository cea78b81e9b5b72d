r"""CAD refinement rounds (`main --mode=refine_cad`): a trained run adds its crops to a CAD set.

The run's model (its best checkpoint, else its latest) proposes crops on every canvas of
`config.refine.split` (default: the training split; the held-out canvases are left alone, since
a model's own crops among the ground truth would flatter its evaluation); the proposals that pass
the rules of `procrop_jax/cad/refine.py` are written after the canvas's pseudo-label as extra
lines with their scores (`procrop_jax/cad/refine_files.py`). Rounds alternate with training, and
the next training run rebuilds the TFDS set from the refined annotations by itself:

  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad_r0
  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad_r0 --mode=refine_cad
  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad_r1 \
      --config.train.init_from=workdirs/cad_r0
  python -m procrop_jax.main --config=configs/cad.py --workdir=workdirs/cad_r1 --mode=refine_cad

A round is one (model checkpoint, split, rules). It records how far it got after every batch, so
an interrupted round resumes where it stopped (canvases already written are not read again), and
running it again once finished does nothing; a new checkpoint or new rules start a new round.
A finished round logs, and appends to `<manual_dir>/refine/rounds.jsonl`, how the annotations
changed: boxes per canvas before and after, the extra boxes' mean score, and their diversity
(1 - mean pairwise IoU of a canvas's boxes).

Each process of a multi-process run refines its own slice of the split (the input pipeline's
`tfds.split_for_jax_process`) with its own state file; proposals are made on its local devices.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from procrop_jax import inference
from procrop_jax import input_pipeline
from procrop_jax.cad import refine
from procrop_jax.cad import refine_files
from procrop_jax.datasets import annotation_files
from procrop_jax.datasets import prepare
from procrop_jax.retrieval import references as references_lib

# batch -> (boxes [B, N, 4] xyxy normalised by the canvas, scores [B, N]).
ProposeFn = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
_COUNTS = ("canvases", "changed", "boxes_before", "boxes_after", "extra_boxes", "extra_score",
           "diversity_before", "diversity_after")


def refine_canvas(root: pathlib.Path, stem: str, proposals_px: np.ndarray, scores: np.ndarray,
                  canvas_wh: tuple[int, int], rules: refine.Rules) -> dict[str, float]:
  """Rewrites one canvas's annotation: its base lines, then the proposals `rules` keep.

  Returns the canvas's contribution to the round's counts (`_COUNTS`).
  """
  base = refine_files.base_path(root, stem)
  base_text = base.read_text()
  if base_text and not base_text.endswith("\n"):
    base_text += "\n"
  base_boxes, _ = annotation_files.parse_yxyx_lines(base)
  before, _ = annotation_files.parse_yxyx_lines(root / "annotations" / f"{stem}.txt")
  kept, kept_scores = refine.select(proposals_px, scores, base_boxes[0], canvas_wh, rules)
  changed = refine_files.write_annotation(
      root, stem, base_text + refine_files.extra_lines(kept, kept_scores))
  after = np.concatenate([base_boxes, kept.astype(np.float64)])
  return {"canvases": 1, "changed": int(changed), "boxes_before": len(before),
          "boxes_after": len(after), "extra_boxes": len(kept),
          "extra_score": float(kept_scores.sum()),
          "diversity_before": refine.diversity(before), "diversity_after": refine.diversity(after)}


def summarize(state: dict[str, Any]) -> dict[str, Any]:
  """A round's figures from its state's counts."""
  c = state["counts"]
  n = max(c["canvases"], 1)
  return {"round": state["round"], **state["key"], "canvases": c["canvases"],
          "changed": c["changed"], "boxes_per_canvas_before": c["boxes_before"] / n,
          "boxes_per_canvas_after": c["boxes_after"] / n,
          "extra_mean_score": c["extra_score"] / max(c["extra_boxes"], 1),
          "diversity_before": c["diversity_before"] / n,
          "diversity_after": c["diversity_after"] / n, "seconds": state["seconds"]}


def run_round(config: ml_collections.ConfigDict, propose: ProposeFn, model_id: str, *,
              transform: Callable[[Iterator[dict[str, np.ndarray]]],
                                  Iterator[dict[str, np.ndarray]]] | None = None
              ) -> dict[str, Any]:
  """Runs (or resumes, or skips as finished) the round of `model_id` on the configured CAD set.

  Args:
    config: the run's config (`data` names the CAD set; `refine` the split and rules).
    propose: the model's crops on a batch of the input pipeline's evaluation batches.
    model_id: what identifies the model (a checkpoint folder and step).
    transform: applied to the batch iterator (e.g. adding retrieved reference tokens).

  Returns:
    The round's summary (`summarize`).
  """
  if config.data.dataset != "procrop_cad":
    raise ValueError(f"refine_cad refines procrop_cad sets; config.data.dataset is "
                     f"{config.data.dataset!r}")
  root = pathlib.Path(os.path.abspath(os.path.expanduser(config.data.manual_dir)))
  split = _split(config)
  rules = refine.Rules.from_config(config.get("refine"))
  process = jax.process_index()
  # The round reads only images and ids: a stale build (an earlier round) serves as well.
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed,
                                   rebuild_stale=False)
  key = {"model": model_id, "split": split,
         "num_examples": int(builder.info.splits[split].num_examples),
         "rules": dataclasses.asdict(rules)}
  key = json.loads(json.dumps(key))  # As the state file holds it (lists, not tuples).
  state = refine_files.read_state(root, process)
  if state is not None and state["key"] == key:
    if state["complete"]:
      logging.info("refine_cad: round %d (%s) is finished already.", state["round"], model_id)
      return summarize(state)
    logging.info("refine_cad: resuming round %d at canvas %d.", state["round"],
                 state["position"])
  else:
    state = {"round": state["round"] + 1 if state else 1, "key": key, "position": 0,
             "complete": False, "seconds": 0.0, "counts": dict.fromkeys(_COUNTS, 0)}
    refine_files.write_state(root, state, process)
    logging.info("refine_cad: round %d with %s on %s.", state["round"], model_id, split)

  batches = input_pipeline.create_eval_iterator(
      config.data, global_batch_size=config.eval.batch_size, split=split,
      start=state["position"])
  if transform is not None:
    batches = transform(batches)
  start = time.perf_counter()
  for batch in batches:
    valid = np.flatnonzero(batch["valid"])
    if not len(valid):
      continue
    boxes, scores = propose(batch)
    # Announced before the files change, so that the fingerprint changes first (refine_files).
    state["writing"] = state["position"] + len(valid)
    refine_files.write_state(root, state, process)
    for i in valid:
      stem = batch["image_id"][i]
      stem = stem.decode() if isinstance(stem, bytes) else str(stem)
      height, width = (int(v) for v in batch["image_size"][i])
      to_px = np.array([width, height, width, height], np.float64)
      counts = refine_canvas(root, stem, np.asarray(boxes[i], np.float64) * to_px,
                             np.asarray(scores[i]), (width, height), rules)
      for k, v in counts.items():
        state["counts"][k] += v
    state["position"] = state.pop("writing")
    state["seconds"] += time.perf_counter() - start
    start = time.perf_counter()
    refine_files.write_state(root, state, process)
  state["complete"] = True
  refine_files.write_state(root, state, process)
  summary = summarize(state)
  refine_files.append_round(root, {**summary, "process": process})
  logging.info(
      "refine_cad: round %d done: %d canvases (%d changed), boxes per canvas %.2f -> %.2f, "
      "extra boxes' mean score %.3f, diversity %.3f -> %.3f, %.1f s", summary["round"],
      summary["canvases"], summary["changed"], summary["boxes_per_canvas_before"],
      summary["boxes_per_canvas_after"], summary["extra_mean_score"],
      summary["diversity_before"], summary["diversity_after"], summary["seconds"])
  return summary


def _split(config: ml_collections.ConfigDict) -> str:
  return config.get("refine", {}).get("split") or config.data.train_split


def refine_cad(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`main --mode=refine_cad`: one round with the run in `workdir` (see the module docstring)."""
  best = bool(config.get("refine", {}).get("best", True))
  try:
    predictor = inference.Predictor.from_workdir(workdir, config=config, best=best)
  except FileNotFoundError:
    if not best:
      raise
    predictor = inference.Predictor.from_workdir(workdir, config=config)  # No best kept.
  split = _split(config)

  def propose(batch):
    n = len(batch["valid"])
    pad = -n % predictor.num_devices  # The batch is split over the local devices.
    if pad:  # Repeats of the last example, dropped below.
      batch = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in batch.items()}
    outputs = jax.device_get(predictor.predict_device(predictor.to_device(batch)))
    return np.asarray(outputs["boxes"])[:n], np.asarray(outputs["scores"])[:n]

  return run_round(config, propose, f"{predictor.source}@{predictor.step}",
                   transform=lambda b: references_lib.add_references(
                       predictor.references, b, config.data, split))
