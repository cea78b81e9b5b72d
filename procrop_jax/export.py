"""`main --mode=export`: a trained run -> a shipped-model folder (the format of model_zoo.py).

  python -m procrop_jax.main --config=configs/fcdb_cpu.py --workdir=workdirs/fcdb_cpu \
      --mode=export --config.export.output_dir=procrop_jax/shipped/fcdb_lite0

Takes the run's best checkpoint (by `config.eval.best_benchmark`, chosen on validation data
only) or its latest, stores its parameters compactly, then loads the written folder back and
runs the config's benchmarks with it, so the validation figures in model_card.json are those of
the parameters that ship (after the float16 conversion, with the config's inference settings).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import subprocess
from typing import Any

from absl import logging
import ml_collections

from procrop_jax import inference
from procrop_jax import model_zoo
from procrop_jax import modes

COMMAND_FILE = "command.txt"  # main --mode=train records its command line here.
# What the model card keeps of a cross-validation summary.
_CROSS_VALIDATED = ("photos", "folds", "folds_total", "steps", "canvas", "layout", "iou",
                    "iou_se", "bde", "bde_se", "iou_top5", "fold_iou", "centred 90% iou",
                    "whole photo iou", "margin over centred 90%", "margin over whole photo",
                    "reference iou", "difference", "bde difference", "reference", "command")
_REPORTED = ("iou", "bde", "iou_top5", "pair_acc", "pair_acc_strong", "aspect_iou", "aspect_bde",
             "num_images", "num_pairs", "split", "dataset")


def code_version() -> str:
  """The package version, and the git commit when running from a checkout."""
  try:
    version = importlib.metadata.version("procrop_jax")
  except importlib.metadata.PackageNotFoundError:
    version = "unknown"
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
    return f"{version}+git.{commit.strip()}"
  except (OSError, subprocess.SubprocessError):
    return version


def export_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Exports the run in `workdir` as a shipped model; returns its model card."""
  settings = config.export
  out_dir = settings.output_dir or os.path.join(workdir, "export")
  predictor = inference.Predictor.from_workdir(workdir, config=config, best=settings.best)
  command_path = pathlib.Path(workdir) / COMMAND_FILE
  card = {
      "name": pathlib.Path(out_dir).name,
      "training_command": (command_path.read_text().strip() if command_path.is_file()
                           else "unknown (the run did not record its command)"),
      "trained_steps": predictor.step,
      "checkpoint": os.path.relpath(predictor.source),
      "code_version": code_version(),
      "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "inference": dict(config.inference),
  }
  if settings.get("cross_validation"):
    card["cross_validation"] = cross_validated_figures(settings.cross_validation.split(","))
  return ship(predictor.model(), predictor.config, out_dir, card=card, dtype=settings.dtype)


def cross_validated_figures(paths: list[str]) -> list[dict[str, Any]]:
  """The figures the model card keeps of each cross-validation summary.json in `paths`."""
  figures = []
  for path in paths:
    path = path.strip()
    try:
      with open(path) as f:
        summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"config.export.cross_validation: cannot read {path!r}: {e}") from e
    if "iou" not in summary or "photos" not in summary:
      raise ValueError(f"config.export.cross_validation: {path!r} is not a summary.json of "
                       "experiments/fcdb/cross_validate.py or cv_canvas.py")
    figures.append({"summary": path, **{k: summary[k] for k in _CROSS_VALIDATED if k in summary}})
  return figures


def trained_on(config: ml_collections.ConfigDict, benchmark: ml_collections.ConfigDict) -> bool:
  """Whether the run trained on every photo of the benchmark's split (e.g. a model trained on
  all of FCDB's `train`, scored on `train[85%:]`)."""
  whole = config.data.train_split.strip()
  return (benchmark.get("dataset", config.data.dataset) == config.data.dataset
          and "[" not in whole and "+" not in whole
          and benchmark["split"].split("[")[0].strip() == whole)


def ship(model, config: ml_collections.ConfigDict, out_dir: str, *, card: dict[str, Any],
         dtype: str = "float16") -> dict[str, Any]:
  """Writes `model` as a shipped-model folder, then scores the written folder, loaded back, on
  the config's benchmarks and adds the figures to its card; returns the card."""
  path = model_zoo.export(model, config, out_dir, card=card, dtype=dtype)
  # The figures of what ships: the written folder, loaded back.
  shipped = inference.Predictor.from_pretrained(path)
  results = modes.run_benchmarks(shipped, None)
  card = json.loads((path / "model_card.json").read_text())
  card["benchmarks"] = {name: {k: r[k] for k in _REPORTED if k in r}
                        for name, r in results.items()}
  for name, record in card["benchmarks"].items():
    if trained_on(config, config.eval.benchmarks[name]):
      # Still worth recording (loading the folder back must reproduce them), never as quality.
      record["trained_on"] = True
  (path / "model_card.json").write_text(json.dumps(card, indent=2))
  size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
  logging.info("Exported %s (%.1f MB): %s", path, size / 1e6, card["benchmarks"])
  print(f"Exported {path} ({size / 1e6:.1f} MB): {json.dumps(card['benchmarks'])}", flush=True)
  return card
