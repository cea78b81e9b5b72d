"""A cache of frozen-backbone features over a fixed set of augmented views of the training split.

With a frozen backbone (`config.optim.backbone_learning_rate == 0` and frozen BN statistics) the
backbone's output for an augmented image never changes during training, yet computing it is about
half of a CPU train step. The cache computes it once for `views` augmented versions of every
training example (view 0 unaugmented, the others drawn by the input pipeline's own augmentation:
box-keeping crop, flip, colour jitter) and training then samples (example, view) pairs: the head
sees `views` fixed augmentations instead of a fresh one each epoch, in exchange for steps that
skip the backbone.

When only the backbone's last blocks train (`config.optim.trainable_backbone_blocks` = N >= 0
with a backbone learning rate > 0), everything before them is still frozen: the cache then holds
the input of those N blocks, and each step runs them (and the 1x1 head conv) before the head. For
Lite0 and N = 1 that input is 192 channels at stride 32, a seventh of the 1,280-channel map.

On disk (one folder per cache key, under `config.data.feature_cache.dir`):

  metadata.json           the key (dataset, version, split, canvas, backbone, views, seed, ...),
                          shapes, and the process slice it covers; written last
  features_stride32.npy   float16 [V * N, g, g, C32]      (memory-mapped when read)
  features_stride16.npy   float16 [V * N, 2g, 2g, C16]    (when the model uses stride 16)
  features_blockI_input.npy  instead of features_stride32 when the backbone's blocks from I on
                          train (`config.optim.trainable_backbone_blocks`): their frozen input,
                          which the model runs through them (`ProCrop.encode`)
  image_valid_hw.npy, boxes.npy, box_scores.npy, box_mask.npy, image_size.npy, pair_boxes.npy,
  pair_weights.npy, image_id.npy

Row v * N + i is view v of example i. A cache is built into a temporary folder and renamed into
place when complete, so an interrupted build leaves nothing that looks finished; the folder name
is a hash of the key, so a change of dataset, backbone, canvas or augmentation builds a new cache
instead of reusing a stale one. Each process of a multi-host run caches its own slice of the split.

`config.data.feature_cache.split` may name a wider split than the training split (for example
"train" under cross-validation folds such as "train[:267]+train[534:]"): the cache then covers
that split, is shared by every run whose training photos it contains, and each run samples only
the rows of its own training photos (matched by image_id).

Batches from `create_train_iterator` have the input pipeline's layout with `features_stride32`
(and `features_stride16`) in place of `image`; the model reads them through
`batch_keys.batch_features`. The order is a pure function of (seed, step): permutations of the
examples per epoch, a view per position, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Iterator, Mapping

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from procrop_jax import array_folder
from procrop_jax import batch_keys
from procrop_jax import input_pipeline
from procrop_jax import model_zoo
from procrop_jax.models import efficientnet_lite

FEATURE_PREFIX = batch_keys.FEATURE_PREFIX
# Bump when what is cached (or how) changes, so older caches are not reused.
_CACHE_VERSION = 2  # 2: rated crop pairs.
_SEED_SALT_VIEWS = 0xCAC4E
_LABEL_KEYS = ("image_valid_hw", "boxes", "box_scores", "box_mask", "image_size", "pair_boxes",
               "pair_weights")


def enabled(config: ml_collections.ConfigDict) -> bool:
  """True when `config.data.feature_cache.views` asks for a cache."""
  return bool(config.data.feature_cache.views)


def check_frozen(config: ml_collections.ConfigDict) -> None:
  """Raises unless what the cache holds stays right while training: the backbone is frozen, or
  only its last blocks train (the cache then holds their input)."""
  frozen = (config.optim.backbone_learning_rate == 0
            or model_zoo.backbone_tail_start(config) is not None)
  if not frozen or not config.model.freeze_backbone_bn:
    raise ValueError(
        "config.data.feature_cache.views > 0 needs a frozen backbone "
        "(config.optim.backbone_learning_rate=0, or only its last blocks trained with "
        "config.optim.trainable_backbone_blocks >= 0, and config.model.freeze_backbone_bn=True): "
        "a trained backbone would make the cached features stale. Set "
        "--config.data.feature_cache.views=0 to train from images.")


def cache_split(config: ml_collections.ConfigDict) -> str:
  """The split the cache covers: `config.data.feature_cache.split`, else the training split."""
  return config.data.feature_cache.get("split") or config.data.train_split


def cache_key(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
              split: str) -> dict[str, Any]:
  """Everything the cached arrays depend on."""
  settings = input_pipeline.DataSettings.from_config(config.data)
  augment = settings.augmentation()
  key = {
      "cache_version": _CACHE_VERSION,
      **input_pipeline.split_identity(builder, split),
      "image_size": settings.image_size,
      "max_boxes": settings.max_boxes,
      "max_pairs": settings.max_pairs,
      "augmentation": repr(augment),
      "backbone": config.model.backbone,
      "pretrained": bool(config.model.pretrained),
      "use_stride16": bool(config.model.use_stride16),
      "views": int(config.data.feature_cache.views),
      "seed": int(config.seed),
      "process": [jax.process_index(), jax.process_count()],
  }
  tail = model_zoo.backbone_tail_start(config)
  if tail is not None:  # Only then: caches of frozen-backbone runs keep their keys.
    key["backbone_tail_start"] = tail
  return key


def cache_dir(config: ml_collections.ConfigDict, key: Mapping[str, Any]) -> pathlib.Path:
  root = config.data.feature_cache.dir or os.path.join(config.data.data_dir, "feature_cache")
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  name = f"{config.data.dataset}-{config.model.backbone}-{config.data.image_size}px-{digest}"
  return pathlib.Path(root) / name


def _views_dataset(source, features, settings: input_pipeline.DataSettings, view: int,
                   seed: int, batch_size: int) -> tf.data.Dataset:
  """View `view` of every example of `source`, in order, batched (the last batch padded)."""
  n = len(source)
  augment = settings.augmentation()
  view_seed = tf.constant(seed ^ _SEED_SALT_VIEWS, tf.int64)

  @input_pipeline.no_autograph
  def process(serialized, position):
    example = input_pipeline.parse(serialized, features)
    # View 0 is the plain image; the others draw the training augmentation.
    return input_pipeline.preprocess(
        example, seed=None if view == 0 else tf.stack([view_seed, view * n + position]),
        image_size=settings.image_size, max_boxes=settings.max_boxes, augment=augment,
        max_pairs=settings.max_pairs)

  positions = tf.data.Dataset.range(n).map(lambda p: (p, p))
  ds = input_pipeline.serialized(source, positions)
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(2)


def build(config: ml_collections.ConfigDict, *, batch_size: int = 16) -> pathlib.Path:
  """Builds (or finds) the feature cache of `cache_split(config)`; returns its folder."""
  check_frozen(config)
  settings = input_pipeline.DataSettings.from_config(config.data)
  builder = input_pipeline.load_builder(settings)
  split = tfds.split_for_jax_process(cache_split(config), drop_remainder=True)
  key = cache_key(config, builder, cache_split(config))
  out = cache_dir(config, key)
  if array_folder.is_complete(out):
    logging.info("Feature cache found: %s", out)
    return out
  source = input_pipeline.open_source(builder, split)
  n, views = len(source), key["views"]
  if n == 0:
    raise ValueError(f"split {split!r} of {builder.name} is empty on this host")

  # The backbone exactly as the trainer builds it (same weights, frozen BN).
  model = model_zoo.create_model(config)
  graphdef, state = nnx.split(model.backbone)
  # With a trained tail the cache holds the tail's input instead of the last map.
  tail = key.get("backbone_tail_start")
  last = "stride32" if tail is None else efficientnet_lite.tail_input_name(tail)
  keep = (last, "stride16") if config.model.use_stride16 else (last,)
  if tail is not None and config.model.use_stride16 and (
      model.backbone.feature_blocks["stride16"] >= tail):
    raise ValueError(
        f"config.optim.trainable_backbone_blocks={config.optim.trainable_backbone_blocks} "
        "trains the block that makes the stride-16 map (config.model.use_stride16=True), "
        "which a feature cache cannot hold: train fewer blocks or set "
        "--config.data.feature_cache.views=0")

  @jax.jit
  def extract(images):
    backbone = nnx.merge(graphdef, state)
    feats = backbone(images, train=False, stop_at_block=tail)
    return {k: feats[k].astype(jnp.float16) for k in keep}

  with array_folder.Writer(out, views * n, "Feature cache", "views") as writer:
    for view in range(views):
      for batch in _views_dataset(source, builder.info.features, settings, view, config.seed,
                                  batch_size).as_numpy_iterator():
        feats = jax.device_get(extract(batch["image"]))
        writer.append({**{FEATURE_PREFIX + k: v for k, v in feats.items()},
                       **{k: batch[k] for k in _LABEL_KEYS}}, batch["image_id"])
    seconds = writer.finish({"key": key, "num_examples": n, "views": views})
  logging.info("Feature cache of %d examples x %d views written to %s in %.0f s.", n, views,
               out, seconds)
  return out


class FeatureCache:
  """A built cache, memory-mapped.

  With `examples` (positions of the cached photos, e.g. from `examples_of`), training samples
  those photos only; `num_examples` counts them.
  """

  def __init__(self, path: str | os.PathLike[str], examples: np.ndarray | None = None):
    self.path = pathlib.Path(path)
    self.metadata, self.arrays, self.image_id = array_folder.open_folder(
        self.path, "feature cache", lambda meta: meta["num_examples"] * meta["views"])
    self.cached_examples = self.metadata["num_examples"]
    self.views = self.metadata["views"]
    self.examples = (np.arange(self.cached_examples) if examples is None
                     else np.asarray(examples, np.int64))
    self.num_examples = len(self.examples)
    self._order: array_folder.EpochOrder | None = None
    if not self.num_examples:
      raise ValueError(f"{self.path}: no cached photo to train on")

  def examples_of(self, image_ids: np.ndarray) -> np.ndarray:
    """Positions in the cache of the photos `image_ids` names; raises if one is not cached."""
    position = {image_id: i for i, image_id in enumerate(self.image_id[:self.cached_examples])}
    missing = [i for i in image_ids if i not in position]
    if missing:
      raise ValueError(
          f"{len(missing)} training photos (e.g. {missing[0]!r}) are not in the feature cache "
          f"{self.path}: config.data.feature_cache.split must contain config.data.train_split")
    return np.array([position[i] for i in image_ids], np.int64)

  def rows(self, positions: np.ndarray, seed: int) -> np.ndarray:
    """Row of each training position: epoch permutations of the examples, a view each."""
    if self._order is None or self._order.seed != seed:
      self._order = array_folder.EpochOrder(self.num_examples, seed)
    rows = np.empty(len(positions), np.int64)
    for j, position in enumerate(positions):
      view = np.random.default_rng([seed, int(position), 1]).integers(self.views)
      rows[j] = view * self.cached_examples + self.examples[self._order(position)]
    return rows

  def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    out = array_folder.read_rows(self.arrays, rows)
    out["image_id"] = self.image_id[rows]
    return out


def _image_ids(config: ml_collections.ConfigDict) -> np.ndarray:
  """The image_id of every photo of the training split, in order (images not decoded)."""
  settings = input_pipeline.DataSettings.from_config(config.data)
  source = input_pipeline.load_builder(settings).as_data_source(
      settings.train_split, decoders={"image": tfds.decode.SkipDecoding()})
  return np.array([source[i]["image_id"] for i in range(len(source))])


def create_train_iterator(config: ml_collections.ConfigDict, *, seed: int,
                          global_batch_size: int, start_step: int = 0
                          ) -> Iterator[dict[str, np.ndarray]]:
  """Host-local training batches from the feature cache (built first if needed), forever."""
  cache = FeatureCache(build(config))
  if cache_split(config) != config.data.train_split:  # A shared cache: our photos' rows only.
    if jax.process_count() > 1:
      raise ValueError("config.data.feature_cache.split is for single-process runs: each "
                       "process of a multi-host run caches its own slice of the training split")
    cache = FeatureCache(cache.path, cache.examples_of(_image_ids(config)))
  batch_size = input_pipeline.local_batch_size(global_batch_size)
  logging.info("Training from the feature cache %s (%d examples x %d views).", cache.path,
               cache.num_examples, cache.views)
  step = start_step
  while True:
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    yield cache.batch(cache.rows(positions, seed))
    step += 1
