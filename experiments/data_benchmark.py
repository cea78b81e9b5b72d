r"""Prints the data figures: FCDB build time, pipeline examples/s, CAD images/s.

  python experiments/data_benchmark.py [--fcdb_dir=../shared/data/fcdb] [--steps=30]

JSON lines, one per training input path, e.g.
  {"dataset": "fcdb", "image_size": 320, "pipeline": "tf.data", "examples_per_s": ...}
  {"dataset": "fcdb", "image_size": 320, "pipeline": "canvas_cache", "examples_per_s": ...,
   "build_s": ..., "device_augment_examples_per_s": ...}
"tf.data" decodes and augments on the host (input_pipeline.py); "canvas_cache" copies
decoded canvases out of the cache (canvas_cache.py), and its augmentation runs on the
device: `device_augment_examples_per_s` is that jitted function alone on this machine's
default JAX device.

Everything is written to a temporary directory. FCDB is skipped when its folder is
absent. The pipelines are timed with augmentation after a warm-up batch: on the default CAD
data at the default config's training size, and on FCDB's training split at 320 px.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from configs import default  # pylint: disable=g-import-not-at-top
from procrop_jax import cad  # pylint: disable=g-import-not-at-top
from procrop_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import fcdb  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import prepare  # pylint: disable=g-import-not-at-top
from procrop_jax.datasets import schema  # pylint: disable=g-import-not-at-top


class Timer:
  """Wall and process CPU time: on a shared machine, CPU time is the stable figure."""

  def __enter__(self):
    self.wall, self.cpu = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *unused):
    self.wall = time.perf_counter() - self.wall
    self.cpu = time.process_time() - self.cpu

  def __str__(self):
    return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU"


def canvas_cache_rates(config, *, batch_size: int, steps: int) -> dict:
  """The canvas cache's build time, host examples/s and the device augmentation's."""
  import jax  # pylint: disable=g-import-not-at-top
  from procrop_jax import canvas_cache  # pylint: disable=g-import-not-at-top
  from procrop_jax import train  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.data.canvas_cache.enabled = True
  with Timer() as build:
    canvas_cache.build(config)
  iterator = canvas_cache.create_train_iterator(config, seed=0, global_batch_size=batch_size)
  batch = next(iterator)
  host = _host_rates(iterator, batch_size=batch_size, steps=steps)
  augment = jax.jit(train._augmentation(config))  # pylint: disable=protected-access
  device_batch = {k: v for k, v in batch.items() if k != "image_id"}
  jax.block_until_ready(augment(device_batch))
  with Timer() as device:
    for _ in range(steps):
      jax.block_until_ready(augment(device_batch))
  n = steps * batch_size
  return {"pipeline": "canvas_cache", **host, "build_s": round(build.wall, 1), "canvas_side": canvas_cache.canvas_side(config.data),
          "device_augment_examples_per_s": round(n / device.wall, 1),
          "device": jax.devices()[0].platform}


def pipeline_figures(config_data, *, batch_size: int, steps: int) -> dict:
  iterator = input_pipeline.create_train_iterator(config_data, seed=0,
                                                  global_batch_size=batch_size)
  next(iterator)  # Warm-up: graph building and the first fills.
  return {"pipeline": "tf.data", **_host_rates(iterator, batch_size=batch_size, steps=steps)}


def _host_rates(iterator, *, batch_size: int, steps: int) -> dict:
  """Examples/s (wall and per CPU-second) of `steps` batches from a warmed-up iterator."""
  with Timer() as timer:
    for _ in range(steps):
      next(iterator)
  n = steps * batch_size
  return {"examples_per_s": round(n / timer.wall, 1),
          "examples_per_cpu_s": round(n / max(timer.cpu, 1e-9), 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  root = pathlib.Path(__file__).resolve().parents[1]
  parser.add_argument("--fcdb_dir", default=str(root.parent / "shared" / "data" / "fcdb"))
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--workers", type=int, default=2)
  args = parser.parse_args()
  print(f"CPU cores: {os.cpu_count()}; load average before: {os.getloadavg()}")

  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    # CAD generation from scikit-image's photos (the embedded default's data).
    config = default.get_config()
    with Timer() as timer:
      report = cad.generate_cad("skimage", tmp / "cad", variants_per_photo=8,
                                max_side=config.cad.max_side,
                                workers=args.workers, progress=False)
    print(f"CAD generation: {report.written} images, {timer} = "
          f"{report.images_per_second:.2f} images/s ({args.workers} workers; "
          f"{timer.cpu / max(report.written, 1):.3f} CPU-s per image)")

    config.data.data_dir = str(tmp / "tfds")
    config.data.manual_dir = str(tmp / "cad")
    with Timer() as timer:
      prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
    print(f"procrop_cad build ({report.written} images): {timer}")
    print(json.dumps({"dataset": "procrop_cad", "image_size": config.data.image_size,
                      "batch_size": args.batch_size, "augmented": True,
                      **pipeline_figures(config.data, batch_size=args.batch_size,
                                         steps=args.steps)}), flush=True)

    fcdb_dir = pathlib.Path(args.fcdb_dir)
    if (fcdb_dir / "cropping_training_set.json").exists():
      with Timer() as timer:
        builder = fcdb.Fcdb(data_dir=str(tmp / "tfds"))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(fcdb_dir)))
      counts = schema.build_report(builder)["train"]
      print(f"FCDB build: {timer} for {counts['entries']} entries "
            f"({counts['kept']} kept, skipped {counts['skipped']})")
      config.data.dataset = "fcdb"
      config.data.train_split = "train"
      config.data.image_size = 320
      head = {"dataset": "fcdb", "image_size": 320, "batch_size": args.batch_size,
              "augmented": True}
      print(json.dumps({**head, **pipeline_figures(config.data, batch_size=args.batch_size,
                                                     steps=args.steps)}), flush=True)
      print(json.dumps({**head, **canvas_cache_rates(config, batch_size=args.batch_size,
                                                       steps=args.steps)}), flush=True)
    else:
      print(f"FCDB: {fcdb_dir} not found, skipped")
  print(f"Load average after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
