"""main's modes that use a trained model: `--mode=eval` and `--mode=crop`.

`evaluate_checkpoint` restores a run's checkpoint and runs every benchmark of
`config.eval.benchmarks` (evaluate.py); `crop_folder` crops `config.crop.input_dir` as
`procrop crop` would (also the end of training with `config.crop.after_training`). Both read
datasets or photos around the `inference.Predictor`, which itself only restores and predicts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import ml_collections

from procrop_jax import crop
from procrop_jax import cropper as cropper_lib
from procrop_jax import evaluate
from procrop_jax import inference
from procrop_jax import photos
from procrop_jax import workdir as workdir_lib
from procrop_jax.retrieval import references as references_lib

DEFAULT_REPORT_EXAMPLES = 12  # Photos in eval/report.html where a run's config has no count.


def run_benchmarks(predictor: inference.Predictor, output_dir: str | None, *,
                   report_examples: int | None = None) -> dict[str, dict[str, Any]]:
  """Every benchmark of the predictor's `config.eval.benchmarks` (see evaluate.py), with the
  run's cached neighbours for a model with retrieval; with `report_examples`, also
  output_dir/report.html with that many example photos."""

  def with_references(batches, data_config, split):
    return references_lib.add_references(predictor.references, batches, data_config, split)

  return evaluate.run_benchmarks(predictor.predict_device, predictor.config,
                                 to_device=predictor.to_device, output_dir=output_dir,
                                 step=predictor.step, batch_transform=with_references,
                                 report_examples=report_examples)


def evaluate_checkpoint(config: ml_collections.ConfigDict | None, workdir: str, *,
                        best: bool = False) -> dict[str, dict[str, Any]]:
  """`main --mode=eval`: the latest (or best) checkpoint on every configured benchmark.

  Results go to WORKDIR/eval/<dataset>_<builder_config>_<split>.json (the latest) and are
  appended to the .jsonl of the same name (see `evaluate.write_result`); WORKDIR/eval/report.html
  shows them with `config.eval.report_examples` photos and their crops (`evaluate.write_report`).
  `config` defaults to the run's own.
  """
  predictor = inference.Predictor.from_workdir(workdir, config=config, best=best)
  logging.info("Evaluating the checkpoint of step %d.", predictor.step)
  # Runs older than the field have none in their config.json.
  examples = predictor.config.eval.get("report_examples", DEFAULT_REPORT_EXAMPLES)
  return run_benchmarks(predictor, os.path.join(workdir, workdir_lib.EVAL_DIR),
                        report_examples=examples)


def crop_folder(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`main --mode=crop`: crops config.crop.input_dir (default: scikit-image's photos) into
  config.crop.output_dir (default WORKDIR/crops) with the run's latest checkpoint, as
  `procrop crop` would."""
  crop_config = config.crop
  if crop_config.input_dir:
    if not os.path.isdir(crop_config.input_dir):
      raise FileNotFoundError(f"config.crop.input_dir={crop_config.input_dir!r} is not a "
                              "directory.")
    args = [crop_config.input_dir]
  else:
    args = [str(p) for p in photos.skimage_photo_paths()]
  output_dir = crop_config.output_dir or os.path.join(workdir, workdir_lib.CROPS_DIR)
  inputs, problems = photos.list_inputs(args, exclude=output_dir)
  if not inputs:
    raise FileNotFoundError(f"No images ({', '.join(photos.IMAGE_SUFFIXES)}) in {args}.")
  cropper = cropper_lib.Cropper.from_workdir(workdir, config=config, nms_iou=crop_config.nms_iou)
  targets = ([cropper_lib.parse_aspect(crop_config.aspect_ratio)] if crop_config.aspect_ratio
             else [cropper_lib.FREE])
  summary = crop.run(inputs, cropper, out_dir=output_dir, targets=targets,
                     top_k=crop_config.top_k, problems=problems)
  failed = {}
  with open(summary.out_dir / "results.jsonl") as f:
    for line in f:
      record = json.loads(line)
      if record["status"] != "ok":
        failed[record["path"]] = record["error"]
  print(f"Cropped {summary.ok} of {summary.total} photos into {summary.out_dir}"
        + (f"; {summary.failed} failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items())
           if failed else "") + f". Contact sheet: {summary.out_dir / 'index.html'}",
        flush=True)
  return {"cropped": summary.ok, "failed": failed, "output_dir": str(summary.out_dir)}
