r"""The main trainer for N steps on real data, on whatever devices JAX sees: is it fed?

  python -m experiments.accelerator_check --config=configs/fcdb.py [--steps=50]
      [--config.train.batch_size=64] [--peak_tflops=989]

Runs `procrop_jax.train.Trainer`'s own jitted step on batches from the trainer's own input
(`train.training_batches`: the feature cache or the canvas cache where the config enables one,
else the tf.data pipeline; canvas-cache batches are augmented on the devices, inside every
phase's timing; with retrieval, the references looked up per batch, which needs the config's
professional-photo database or index: `--config.model.num_references=0` times the model
without it), after
`prepare.ensure_dataset`, in a temporary workdir; nothing is saved. Made to fit a 10-minute
window on a lent accelerator (one `--steps` loop plus one compile). One JSON line per phase,
then a summary:

  compile          the train step's compile time, and its FLOPs per step per device (XLA's cost
                   analysis of the partitioned, per-device program)
  fed              `--steps` steps fed by the input pipeline: images/s, step time, and the share
                   of the wall time spent waiting for the next batch (data_wait_share)
  compute          the same steps on one batch already on the devices: what the devices do fed
                   instantly (the ceiling the pipeline should reach)
  summary          the above, and model FLOPs utilisation against the devices' peak

Peak FLOP/s: `--peak_tflops` per device, else a table of dense bf16 peaks by device kind
(H100/H200 989, A100 312, TPU v4 275, v5e 197, v5p 459, v6e 918); unknown kinds (CPUs) report
no MFU. The model computes in float32 (TF32 on NVIDIA tensor cores), so MFU against the bf16
peak reads low by design: compare runs, not vendors.
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from procrop_jax import train
from procrop_jax.datasets import prepare

# Dense bf16 peak TFLOP/s per device, by a substring of `device_kind`.
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("TPU v4", 275.0),
               ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0),
               ("TPU v6 lite", 918.0), ("TPU v6e", 918.0))


def peak_tflops(device_kind: str) -> float | None:
  """The table's peak for a device kind, or None (a CPU, an unknown accelerator)."""
  for name, peak in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def _emit(record: dict[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def _step_flops(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend reports a cost)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def check(config, steps: int, warmup: int, peak_per_device: float | None) -> dict[str, Any]:
  """Runs the phases (printing their lines) and returns the summary."""
  prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  train.build_input_caches(config)
  devices = jax.devices()
  common = {"devices": len(devices), "device_kind": devices[0].device_kind,
            "global_batch": config.train.batch_size, "image_size": config.data.image_size,
            "dataset": config.data.dataset, "references": config.model.num_references,
            "input": train.input_name(config)}
  with tempfile.TemporaryDirectory() as workdir:
    trainer = train.Trainer(config, workdir)
    # With retrieval, the references are looked up on the host per batch, as in training.
    batches = trainer.with_references(train.training_batches(config), config.data,
                                      config.data.train_split)
    # Cached canvases are augmented on the devices: part of every phase's step.
    augment = trainer.augment or (lambda batch: batch)
    first_raw = trainer.device_batch(next(batches))
    first = augment(first_raw)
    start = time.perf_counter()
    compiled = trainer.train_step.lower(trainer.state, first).compile()
    compile_s = time.perf_counter() - start
    flops = _step_flops(compiled)
    _emit({**common, "phase": "compile", "seconds": round(compile_s, 2),
         "flops_per_step_per_device": flops})

    state = trainer.state
    for _ in range(warmup):
      state, metrics = compiled(state, trainer.train_batch(next(batches)))
    jax.block_until_ready(metrics)

    # Fed: as the trainer runs, dispatching asynchronously; waiting is the host's next().
    wait = 0.0
    start = time.perf_counter()
    for _ in range(steps):
      fetch = time.perf_counter()
      batch = trainer.train_batch(next(batches))
      wait += time.perf_counter() - fetch
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    fed_s = time.perf_counter() - start
    images = steps * config.train.batch_size
    fed = {"images_per_s": round(images / fed_s, 2), "step_ms": round(1e3 * fed_s / steps, 2),
           "data_wait_share": round(wait / fed_s, 3)}
    _emit({**common, "phase": "fed", "steps": steps, **fed})

    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, augment(first_raw))
    jax.block_until_ready(metrics)
    compute_s = time.perf_counter() - start
    compute = {"images_per_s": round(images / compute_s, 2),
               "step_ms": round(1e3 * compute_s / steps, 2)}
    _emit({**common, "phase": "compute", "steps": steps, **compute})

  peak = peak_per_device or peak_tflops(devices[0].device_kind)
  # The cost analysis is of the per-device program: compare with one device's peak.
  mfu = flops / (compute_s / steps) / (peak * 1e12) if flops and peak else None
  summary = {**common, "phase": "summary", "compile_s": round(compile_s, 2),
             "fed_images_per_s": fed["images_per_s"], "fed_step_ms": fed["step_ms"],
             "data_wait_share": fed["data_wait_share"],
             "compute_images_per_s": compute["images_per_s"],
             "compute_step_ms": compute["step_ms"],
             "fed_vs_compute": round(fed["images_per_s"] / compute["images_per_s"], 3),
             "flops_per_step_per_device": flops, "peak_tflops_per_device": peak,
             "mfu": round(mfu, 4) if mfu is not None else None}
  _emit(summary)
  return summary


def define_flags():
  """The command's flags (not at import: tests import `check` beside other commands' flags)."""
  config_flags.DEFINE_config_file("config", "configs/fcdb.py", "Training config.")
  flags.DEFINE_integer("steps", 50, "Timed steps (each phase).")
  flags.DEFINE_integer("warmup", 3, "Untimed steps after the compile.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device (0: from the device-kind table).")


def main(argv):
  del argv
  f = flags.FLAGS
  check(f.config, f.steps, f.warmup, f.peak_tflops or None)


if __name__ == "__main__":
  define_flags()
  app.run(main)
