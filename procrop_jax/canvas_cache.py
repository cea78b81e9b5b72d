"""Training photos decoded once: uint8 canvases on disk, so the host's work per example is a copy.

The tf.data pipeline (input_pipeline.py) decodes, crops, resizes and colour-jitters every
example on the host, every epoch: about 100 FCDB examples/s per 2 CPU cores, far below what one
accelerator trains on. With `config.data.canvas_cache.enabled`, each training photo is decoded
once into a uint8 canvas (its longer side `C = round(image_size * oversample)` px, rounded up
to a multiple of 8, at the top left of a C x C square; the spare resolution keeps crops
sharp), its boxes sorted and padded, and training batches are rows copied out of memory-mapped
arrays. The augmentation then runs inside the jitted train step (device_augment.py).

On disk (one folder per cache key, under `config.data.canvas_cache.dir`, default
DATA_DIR/canvas_cache):

  metadata.json      the key (dataset, version, split, source fingerprint, canvas side, ...),
                     shapes and seconds to build; written last
  canvas.npy         uint8 [N, C, C, 3]
  content_hw.npy     int32 [N, 2]    the photo's (height, width) on its canvas
  image_size.npy, boxes.npy, box_scores.npy, box_mask.npy, pair_boxes.npy, pair_weights.npy,
  image_id.npy       as the input pipeline's unaugmented examples

A cache is built into a temporary folder and renamed into place when complete; the folder's
name is a hash of its key, which includes the dataset's source fingerprint (a build remade
from changed files gets a new cache, never a stale one). Each process caches its own slice of
the split. FCDB's 1,335 training photos at 320 px (C = 400) take 0.64 GB.

The order is a pure function of (seed, step): a permutation of the examples per epoch, so a
resumed run continues exactly where it stopped, and each batch carries its examples' stream
positions, from which the device draws their augmentation.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import os
import pathlib
from typing import Any, Iterator, Mapping

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from procrop_jax import array_folder
from procrop_jax import device_augment
from procrop_jax import input_pipeline

# Bump when what is cached (or how) changes, so older caches are not reused.
_CACHE_VERSION = 1
_SEED_SALT_ORDER = 0x0DE5
_PREFETCH = 2  # Batches copied ahead, on a thread, while the device trains.


def enabled(config: ml_collections.ConfigDict) -> bool:
  """True when `config.data.canvas_cache.enabled` asks for decode-once training."""
  return bool(config.data.get("canvas_cache", {}).get("enabled", False))


def canvas_side(config_data: Any) -> int:
  """C: the cached canvas's side for the training size and `canvas_cache.oversample`."""
  oversample = float(config_data.canvas_cache.oversample)
  if oversample < 1.0:
    raise ValueError(f"config.data.canvas_cache.oversample={oversample} must be >= 1: the "
                     "cache is the source the training crops are resized from")
  return int(math.ceil(config_data.image_size * oversample / 8) * 8)


def cache_key(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
              ) -> dict[str, Any]:
  """Everything the cached arrays depend on."""
  settings = input_pipeline.DataSettings.from_config(config.data)
  return {"cache_version": _CACHE_VERSION,
          **input_pipeline.split_identity(builder, settings.train_split),
          "canvas_side": canvas_side(config.data),
          "max_boxes": settings.max_boxes,
          "max_pairs": settings.max_pairs,
          "process": [jax.process_index(), jax.process_count()]}


def cache_dir(config: ml_collections.ConfigDict, key: Mapping[str, Any]) -> pathlib.Path:
  root = config.data.canvas_cache.dir or os.path.join(config.data.data_dir, "canvas_cache")
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return pathlib.Path(root) / f"{config.data.dataset}-{key['canvas_side']}px-{digest}"


def _examples(source, features, settings: input_pipeline.DataSettings, side: int,
              batch_size: int) -> tf.data.Dataset:
  """Every example of `source` in order, unaugmented, on a `side` canvas, batched."""

  @input_pipeline.no_autograph
  def process(serialized, unused_position):
    example = input_pipeline.parse(serialized, features)
    out = input_pipeline.preprocess(example, seed=None, image_size=side,
                                    max_boxes=settings.max_boxes, max_pairs=settings.max_pairs)
    out["canvas"] = tf.cast(tf.round(out.pop("image") * 255.0), tf.uint8)
    out["content_hw"] = tf.cast(tf.round(out.pop("image_valid_hw") * side), tf.int32)
    return out

  positions = tf.data.Dataset.range(len(source)).map(lambda p: (p, p))
  ds = input_pipeline.serialized(source, positions)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(2)


def build(config: ml_collections.ConfigDict, *, batch_size: int = 16) -> pathlib.Path:
  """Builds (or finds) the canvas cache of this process's training examples; returns its
  folder. Progress is logged; an interrupted build leaves only a temporary folder."""
  settings = input_pipeline.DataSettings.from_config(config.data)
  builder = input_pipeline.load_builder(settings)
  key = cache_key(config, builder)
  out = cache_dir(config, key)
  if array_folder.is_complete(out):
    logging.info("Canvas cache found: %s", out)
    return out
  split = tfds.split_for_jax_process(settings.train_split, drop_remainder=True)
  source = input_pipeline.open_source(builder, split)
  n, side = len(source), key["canvas_side"]
  if n == 0:
    raise ValueError(f"split {split!r} of {builder.name} is empty on this host")
  with array_folder.Writer(out, n, "Canvas cache", "photos") as writer:
    for batch in _examples(source, builder.info.features, settings, side,
                           batch_size).as_numpy_iterator():
      writer.append({k: batch[k] for k in device_augment.CACHED_FIELDS}, batch["image_id"])
    seconds = writer.finish({"key": key, "num_examples": n})
  logging.info("Canvas cache of %d photos (%d px) written to %s in %.0f s.", n, side, out,
               seconds)
  return out


class CanvasCache:
  """A built cache, memory-mapped: `batch(positions, seed)` copies one batch out of it."""

  def __init__(self, path: str | os.PathLike[str]):
    self.path = pathlib.Path(path)
    self.metadata, self.arrays, self.image_id = array_folder.open_folder(
        self.path, "canvas cache", lambda meta: meta["num_examples"])
    self.num_examples = self.metadata["num_examples"]
    self._order: array_folder.EpochOrder | None = None

  def rows(self, positions: np.ndarray, seed: int) -> np.ndarray:
    """The example at each of this host's stream positions (`array_folder.EpochOrder`)."""
    if self._order is None or self._order.seed != seed ^ _SEED_SALT_ORDER:
      self._order = array_folder.EpochOrder(self.num_examples, seed ^ _SEED_SALT_ORDER)
    return np.array([self._order(p) for p in positions], np.int64)

  def batch(self, positions: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The examples at this host's stream `positions`, copied out of the arrays."""
    rows = self.rows(positions, seed)
    out = array_folder.read_rows(self.arrays, rows)
    out["image_id"] = self.image_id[rows]
    return out


def create_train_iterator(config: ml_collections.ConfigDict, *, seed: int,
                          global_batch_size: int, start_step: int = 0
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Host-local batches of cached canvases (built first if needed), forever, resumable at
  `start_step`; a thread copies the next batches while the device trains.

  Positions count the global stream (step * global batch + the example's index), so the
  augmentation drawn from them does not depend on the number of hosts.
  """
  cache = CanvasCache(build(config))
  batch_size = input_pipeline.local_batch_size(global_batch_size)
  first = jax.process_index() * batch_size
  logging.info("Training from the canvas cache %s (%d photos).", cache.path, cache.num_examples)

  def load(step: int) -> dict[str, np.ndarray]:
    local = np.arange(batch_size)
    # Rows come from this host's own slice, in its own order; positions are global.
    batch = cache.batch(step * batch_size + local, seed)
    batch["position"] = (step * global_batch_size + first + local).astype(np.int32)
    return batch

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = [pool.submit(load, start_step + i) for i in range(_PREFETCH)]
    step = start_step + _PREFETCH
    while True:
      batch = pending.pop(0).result()
      pending.append(pool.submit(load, step))
      step += 1
      yield batch
