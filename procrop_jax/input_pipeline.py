"""tf.data input pipeline: prepared TFDS datasets -> host-local numpy batches -> global arrays.

Reading. Datasets are stored as ArrayRecord (the builders' default), read with
`tfds.data_source` for random access. Training visits, in epoch e, the host's examples
in the order of a permutation seeded by (seed, e) (`tf.random.experimental.
index_shuffle`, O(1) per position), and every random choice of the augmentation is a
stateless function of (seed, position). A run is therefore a pure function of the
seed, and starting at step s seeks straight to position s * local_batch_size: nothing
before it is read or decoded. Batches run across epoch boundaries.

Sharding. Each host reads its own slice of the split (`tfds.split_for_jax_process`) and
yields a local batch of global_batch_size / process_count examples;
`sharding.to_global_arrays` assembles the global `jax.Array`s for the mesh.

Examples. Decoded (JPEG's DCT scaling skips detail that the resize would discard),
for training augmented (random crop that keeps the target box, horizontal flip, colour
jitter), resized so the longer side is `image_size` and padded at the bottom and right
to an `image_size` square, boxes sorted by score and padded to `max_boxes` with a
mask. The batch is the dict of AGENTS_CONTRACT.md:

  image           float32 [B, S, S, 3]  in [0, 1], content at the top-left
  image_valid_hw  float32 [B, 2]        (h, w) of the content / S
  image_size      int32   [B, 2]        (height, width) of the (cropped) source, pixels
  boxes           float32 [B, M, 4]     x1y1x2y2 normalised by the (cropped) source
  box_scores      float32 [B, M]
  box_mask        bool    [B, M]
  pair_boxes      float32 [B, P, 2, 4]  rated crop pairs, (preferred, other), same frame as boxes
  pair_weights    float32 [B, P]        vote margin |v0 - v1| / (v0 + v1); 0 for ties, padding
                                        and pairs the crop augmentation cut
  image_id        bytes   [B]           host only
  valid           bool    [B]           eval only: False for padding examples

The target box of the crop augmentation is the highest-scored box (the first of ties:
FCDB's crop, CAD's pseudo-label, GAICD's best candidate); boxes that the crop cuts are
masked out; the target never is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from procrop_jax import datasets  # pylint: disable=unused-import  (registers the builders)
from procrop_jax import settings as settings_lib
from procrop_jax.datasets import source_record

# The map functions use TF ops only (no Python control flow on tensors): skipping
# autograph's conversion makes building a pipeline several times faster.
no_autograph = tf.autograph.experimental.do_not_convert
_DECODE_RATIOS = (1, 2, 4, 8)  # What tf.io.decode_jpeg's DCT scaling supports.
_SEED_SALT_ORDER = 0x5EED
_SEED_SALT_AUGMENT = 0xA06


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation. Probabilities in [0, 1]; ranges are multiplicative."""
  crop_probability: float = 0.5
  flip_probability: float = 0.5
  brightness_delta: float = 0.1
  contrast_range: tuple[float, float] = (0.8, 1.25)
  saturation_range: tuple[float, float] = (0.8, 1.25)


NO_AUGMENTATION = Augmentation(crop_probability=0.0, flip_probability=0.0,
                               brightness_delta=0.0, contrast_range=(1.0, 1.0),
                               saturation_range=(1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """What the pipeline needs from `config.data` (read in `from_config` only)."""
  dataset: str
  builder_config: str | None
  data_dir: str | None
  train_split: str
  eval_split: str
  image_size: int
  max_boxes: int
  max_pairs: int
  augment: bool
  # A box-keeping crop shrinks the margins around the expert crop, so the more views are
  # cropped, the larger the crops the model learns to expect on whole photos.
  crop_probability: float
  prefetch: int

  @classmethod
  def from_config(cls, config_data: Any) -> "DataSettings":
    """Reads an ml_collections `config.data` (or a dict with its fields)."""
    return settings_lib.read(cls, config_data, "config.data")

  def augmentation(self) -> Augmentation:
    """The training augmentation these settings ask for."""
    if not self.augment:
      return NO_AUGMENTATION
    return Augmentation(crop_probability=self.crop_probability)


# ------------------------------------------------------------------------- source


def load_builder(settings: DataSettings) -> tfds.core.DatasetBuilder:
  """The prepared builder; raises if it is not prepared."""
  builder = tfds.builder(settings.dataset, config=settings.builder_config or None,
                         data_dir=settings.data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{settings.dataset}/{settings.builder_config} is not prepared in "
        f"{settings.data_dir}: run procrop_jax.datasets.prepare.ensure_dataset first "
        "(see data/README.md).")
  return builder


def split_identity(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, Any]:
  """What any cache of `split`'s examples depends on: the dataset's name, config and version,
  the split and its size, and the fingerprints of its source files and refined annotations."""
  key = {"dataset": builder.info.full_name,  # name/config/version
         "num_examples": builder.info.splits[split].num_examples,
         "split": split}
  # A build remade from a changed source keeps its name and version: its source record tells.
  source = source_record.read(builder.data_dir)
  if source:
    key["source_fingerprint"] = source_record.cache_fingerprint(source)
  # A refined CAD set keeps its name, version and size but not its boxes (cad/refine_files.py).
  refined = (builder.info.metadata or {}).get("annotations_fingerprint")
  if refined:
    key["annotations_fingerprint"] = refined
  return key


def open_source(builder: tfds.core.DatasetBuilder, split: str):
  """A random-access source of the serialized examples of `split`."""
  try:
    return builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod
                                  .RAW_BYTES)
  except (NotImplementedError, ValueError) as e:
    raise ValueError(
        f"{builder.name} in {builder.data_dir} is stored as {builder.info.file_format}; "
        "the input pipeline needs random access: rebuild it with "
        "--file_format=array_record (the default of procrop_jax's builders) or run "
        "`tfds convert_format --out_file_format=array_record`.") from e


def _fetch_fn(source):
  def fetch(indices: np.ndarray) -> np.ndarray:
    records = source.__getitems__([int(i) for i in indices])
    return np.array(records, dtype=object)
  return fetch


def serialized(source, indices: tf.data.Dataset, chunk: int = 16) -> tf.data.Dataset:
  """Maps a dataset of (index, ...) tuples to (serialized example, ...)."""
  fetch = _fetch_fn(source)

  @no_autograph

  def read(index, *rest):
    records = tf.numpy_function(fetch, [index], tf.string, stateful=False)
    records.set_shape(index.shape)
    return (records, *rest)

  # Batched reads amortise the Python call; one reader thread keeps the
  # ArrayRecord reader single-threaded.
  return indices.batch(chunk).map(read, num_parallel_calls=1).unbatch()


# ------------------------------------------------------------------- one example


def parse(serialized: tf.Tensor, features: tfds.features.FeaturesDict) -> dict[str, tf.Tensor]:
  """The example's features, with the image still encoded."""
  return features.deserialize_example(
      serialized, decoders={"image": tfds.decode.SkipDecoding()})


def decode_image(encoded: tf.Tensor, source_hw: tf.Tensor, *, image_size: int,
                 oversample: float) -> tf.Tensor:
  """Decodes a JPEG at the smallest DCT scale whose longer side is >= oversample * S."""
  longer = tf.cast(tf.reduce_max(source_hw), tf.float32)
  target = float(image_size) * oversample
  branch = tf.constant(0)
  for i, ratio in enumerate(_DECODE_RATIOS[1:], start=1):
    branch = tf.where(longer / ratio >= target, i, branch)
  return tf.switch_case(branch, [
      (lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r))
      for r in _DECODE_RATIOS
  ])


def _sort_and_pad(boxes, scores, valid, max_boxes):
  """Valid boxes first, by descending score (stable), truncated/padded to max_boxes."""
  key = tf.where(valid, scores, tf.fill(tf.shape(scores), -np.inf))
  order = tf.argsort(key, direction="DESCENDING", stable=True)[:max_boxes]
  boxes, scores, valid = (tf.gather(boxes, order), tf.gather(scores, order),
                          tf.gather(valid, order))
  pad = max_boxes - tf.shape(order)[0]
  boxes = tf.pad(boxes, [[0, pad], [0, 0]])
  scores = tf.pad(scores, [[0, pad]])
  valid = tf.pad(valid, [[0, pad]])
  boxes = tf.where(valid[:, None], boxes, 0.0)
  scores = tf.where(valid, scores, 0.0)
  return (tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(scores, [max_boxes]),
          tf.ensure_shape(valid, [max_boxes]))


def resize_longer_side(image: tf.Tensor, image_size: int
                       ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """uint8 [H, W, 3] -> float [h, w, 3] in [0, 1] with max(h, w) == S, aspect kept; and h, w."""
  shape = tf.shape(image)
  h_f, w_f = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = float(image_size) / tf.maximum(h_f, w_f)
  new_h = tf.clip_by_value(tf.cast(tf.round(h_f * scale), tf.int32), 1, image_size)
  new_w = tf.clip_by_value(tf.cast(tf.round(w_f * scale), tf.int32), 1, image_size)
  image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, tf.stack([new_h, new_w]),
                          method="bilinear", antialias=True)
  return image, new_h, new_w


def to_canvas(image: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """An uint8 [H, W, 3] photo as the model sees it at inference: (canvas [S, S, 3], valid_hw)."""
  resized, new_h, new_w = resize_longer_side(tf.convert_to_tensor(image), image_size)
  resized = tf.clip_by_value(resized, 0.0, 1.0)
  canvas = tf.pad(resized, [[0, image_size - new_h], [0, image_size - new_w], [0, 0]])
  valid_hw = np.array([int(new_h), int(new_w)], np.float32) / image_size
  return canvas.numpy(), valid_hw


def _ordered_pairs(example: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
  """(pair boxes [P, 2, 4] as (preferred, other), weights [P] = vote margin / votes)."""
  if "pair_boxes" not in example:  # A dataset without rated pairs.
    return tf.zeros([0, 2, 4], tf.float32), tf.zeros([0], tf.float32)
  pairs = tf.reshape(tf.cast(example["pair_boxes"], tf.float32), [-1, 2, 4])
  votes = tf.reshape(tf.cast(example["pair_votes"], tf.float32), [-1, 2])
  swap = votes[:, 1] > votes[:, 0]
  pairs = tf.where(swap[:, None, None], tf.reverse(pairs, axis=[1]), pairs)
  weights = tf.math.divide_no_nan(tf.abs(votes[:, 0] - votes[:, 1]), tf.reduce_sum(votes, 1))
  return pairs, weights


def _pad_pairs(pairs: tf.Tensor, weights: tf.Tensor, max_pairs: int
               ) -> tuple[tf.Tensor, tf.Tensor]:
  pairs, weights = pairs[:max_pairs], weights[:max_pairs]
  pad = max_pairs - tf.shape(weights)[0]
  return (tf.ensure_shape(tf.pad(pairs, [[0, pad], [0, 0], [0, 0]]), [max_pairs, 2, 4]),
          tf.ensure_shape(tf.pad(weights, [[0, pad]]), [max_pairs]))


def preprocess(example: Mapping[str, tf.Tensor], *, seed: tf.Tensor | None, image_size: int,
               max_boxes: int, augment: Augmentation = NO_AUGMENTATION,
               image: tf.Tensor | None = None, max_pairs: int = 10) -> dict[str, tf.Tensor]:
  """Turns one parsed example into the batch layout (without the batch axis).

  Args:
    example: features as parsed by `parse` ("image" encoded) or with a decoded
      uint8 "image" when `image` is given.
    seed: int64 [2] stateless seed of this example's augmentation (None: no
      augmentation).
    image_size: S.
    max_boxes: M.
    augment: the augmentation (ignored when seed is None).
    image: the decoded uint8 [H, W, 3] image (default: decode example["image"]).
    max_pairs: P, rated crop pairs kept (padded with weight 0).
  """
  source_hw = tf.cast(example["image_size"], tf.int32)
  if image is None:
    image = decode_image(example["image"], source_hw, image_size=image_size,
                         oversample=1.5 if seed is not None else 1.0)
  boxes = tf.reshape(tf.cast(example["boxes"], tf.float32), [-1, 4])
  scores = tf.reshape(tf.cast(example["box_scores"], tf.float32), [-1])
  valid = tf.ones(tf.shape(scores), tf.bool)
  pairs, pair_weights = _ordered_pairs(example)
  num_boxes = tf.shape(boxes)[0]
  # Pair boxes ride along with the boxes through every geometric step, then are split off.
  boxes = tf.concat([boxes, tf.reshape(pairs, [-1, 4])], 0)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  out_hw = tf.cast(source_hw, tf.float32)

  if seed is not None:
    seeds = tf.random.experimental.stateless_split(seed, 4)
    # Target: the best-scored box, first of ties; the whole image when there is none.
    best = tf.argsort(scores, direction="DESCENDING", stable=True)[:1]
    target = tf.reshape(tf.concat([tf.gather(boxes, best), [[0.0, 0.0, 1.0, 1.0]]], 0)[0],
                        [4])
    u = tf.random.stateless_uniform([4], seeds[0])
    crop = tf.random.stateless_uniform([], seeds[1]) < augment.crop_probability
    window = tf.stack([u[0] * target[0], u[1] * target[1],
                       target[2] + u[2] * (1.0 - target[2]),
                       target[3] + u[3] * (1.0 - target[3])])
    window = tf.where(crop, window, tf.constant([0.0, 0.0, 1.0, 1.0]))
    # Round outwards so that the target stays inside the pixel window.
    x1 = tf.clip_by_value(tf.cast(tf.floor(window[0] * w_f), tf.int32), 0, width - 1)
    y1 = tf.clip_by_value(tf.cast(tf.floor(window[1] * h_f), tf.int32), 0, height - 1)
    x2 = tf.clip_by_value(tf.cast(tf.math.ceil(window[2] * w_f), tf.int32), x1 + 1, width)
    y2 = tf.clip_by_value(tf.cast(tf.math.ceil(window[3] * h_f), tf.int32), y1 + 1, height)
    image = image[y1:y2, x1:x2]
    cw, ch = tf.cast(x2 - x1, tf.float32), tf.cast(y2 - y1, tf.float32)
    boxes = (boxes * tf.stack([w_f, h_f, w_f, h_f])
             - tf.cast(tf.stack([x1, y1, x1, y1]), tf.float32)) / tf.stack([cw, ch, cw, ch])
    eps = 1e-3
    inside = tf.reduce_all((boxes[:, :2] >= -eps) & (boxes[:, 2:] <= 1.0 + eps), axis=1)
    valid &= inside[:num_boxes]
    # A pair is kept only when the crop keeps both of its boxes whole.
    pair_weights *= tf.cast(tf.reduce_all(tf.reshape(inside[num_boxes:], [-1, 2]), 1),
                            tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    out_hw = tf.round(out_hw * tf.stack([ch / h_f, cw / w_f]))

    flip = tf.random.stateless_uniform([], seeds[2]) < augment.flip_probability
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    boxes = tf.where(flip, tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0],
                                     boxes[:, 3]], axis=1), boxes)

  image, new_h, new_w = resize_longer_side(image, image_size)

  if seed is not None:
    image = _colour_jitter(image, seeds[3], augment)
  image = tf.clip_by_value(image, 0.0, 1.0)
  image = tf.pad(image, [[0, image_size - new_h], [0, image_size - new_w], [0, 0]])
  image = tf.ensure_shape(image, [image_size, image_size, 3])

  pairs = tf.reshape(boxes[num_boxes:], [-1, 2, 4])
  pairs, pair_weights = _pad_pairs(pairs, pair_weights, max_pairs)
  boxes, scores, mask = _sort_and_pad(boxes[:num_boxes], scores, valid, max_boxes)
  return {
      "image": image,
      "image_valid_hw": tf.cast(tf.stack([new_h, new_w]), tf.float32) / float(image_size),
      "image_size": tf.cast(out_hw, tf.int32),
      "boxes": boxes,
      "box_scores": scores,
      "box_mask": mask,
      "pair_boxes": pairs,
      "pair_weights": pair_weights,
      "image_id": example["image_id"],
  }


def jitter_factors(u, augment: Augmentation, exp: Callable[[Any], Any]) -> tuple[Any, Any, Any]:
  """(brightness shift, contrast factor, saturation factor) from three uniforms in [0, 1):
  contrast and saturation log-uniform in their ranges. `exp` is TF's or jax.numpy's, so the
  host and the device (device_augment.py) draw the same factors from the same uniforms."""
  brightness = (2.0 * u[0] - 1.0) * augment.brightness_delta
  log_lo, log_hi = np.log(augment.contrast_range)
  contrast = exp(log_lo + u[1] * (log_hi - log_lo))
  log_lo, log_hi = np.log(augment.saturation_range)
  saturation = exp(log_lo + u[2] * (log_hi - log_lo))
  return brightness, contrast, saturation


def _colour_jitter(image: tf.Tensor, seed: tf.Tensor, augment: Augmentation) -> tf.Tensor:
  """Brightness, contrast and saturation jitter, as cheap per-pixel blends.

  (tf.image's saturation goes through HSV and costs as much as the resize.)
  """
  u = tf.random.stateless_uniform([3], seed)
  brightness, contrast, saturation = jitter_factors(u, augment, tf.exp)
  gray = tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
  image = gray + saturation * (image - gray)
  mean = tf.reduce_mean(gray)
  return mean + contrast * (image - mean) + brightness


# ------------------------------------------------------------------------ datasets


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  return options


def local_batch_size(global_batch_size: int) -> int:
  if global_batch_size % jax.process_count():
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def create_train_dataset(settings: DataSettings, *, seed: int, batch_size: int,
                         start_step: int = 0, augment: Augmentation | None = None,
                         num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """The (infinite) training tf.data.Dataset of this host's local batches.

  Args:
    settings: data settings.
    seed: the run's seed; the order and the augmentation are functions of it.
    batch_size: the local batch size.
    start_step: the first batch to produce (resume): seeks, reads nothing before it.
    augment: the augmentation; default `settings.augmentation()`.
    num_parallel_calls: parallelism of decoding and augmentation.
  """
  builder = load_builder(settings)
  split = tfds.split_for_jax_process(settings.train_split, drop_remainder=True)
  source = open_source(builder, split)
  n = len(source)
  if n == 0:
    raise ValueError(f"split {split!r} of {builder.name} is empty on this host")
  if augment is None:
    augment = settings.augmentation()
  features = builder.info.features
  seed_order = tf.constant(seed ^ _SEED_SALT_ORDER, tf.int64)
  seed_augment = tf.constant(seed ^ _SEED_SALT_AUGMENT, tf.int64)

  @no_autograph

  def position_to_index(position):
    epoch, offset = position // n, position % n
    index = tf.random.experimental.index_shuffle(
        offset, tf.stack([seed_order, epoch]), tf.constant(n - 1, tf.int64))
    return index, position

  @no_autograph

  def process(serialized, position):
    example = parse(serialized, features)
    return preprocess(example, seed=tf.stack([seed_augment, position]),
                      image_size=settings.image_size, max_boxes=settings.max_boxes,
                      augment=augment, max_pairs=settings.max_pairs)

  start = int(start_step) * batch_size
  positions = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
  ds = serialized(source, positions.map(position_to_index))
  ds = ds.map(process, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(settings.prefetch or tf.data.AUTOTUNE).with_options(_options())


def create_eval_dataset(settings: DataSettings, *, batch_size: int,
                        split: str | None = None, max_boxes: int | None = None,
                        num_parallel_calls: int = tf.data.AUTOTUNE,
                        start: int = 0) -> tf.data.Dataset:
  """One pass over this host's slice of the eval split, padded to full batches.

  Every host yields the same number of batches (what the largest slice needs); the
  padding examples have `valid` False, a zero image and no boxes.

  Args:
    settings: data settings.
    batch_size: the local batch size.
    split: default settings.eval_split.
    max_boxes: default settings.max_boxes (GAICD's ~90 candidates need 128).
    num_parallel_calls: parallelism of decoding.
    start: the pass begins at this position of the host's slice, reading nothing before it
      (a resumed pass; hosts then yield as many batches as their own remainder needs).
  """
  builder = load_builder(settings)
  split = split or settings.eval_split
  total = builder.info.splits[split].num_examples
  host_split = tfds.split_for_jax_process(split, drop_remainder=False)
  source = open_source(builder, host_split)
  n = len(source)
  per_host = math.ceil(total / jax.process_count())
  num_batches = max(1, math.ceil(per_host / batch_size))
  max_boxes = max_boxes or settings.max_boxes
  features = builder.info.features

  @no_autograph

  def position_to_index(position):
    return tf.minimum(position, max(n - 1, 0)), position < n

  @no_autograph

  def process(serialized, valid):
    example = preprocess(parse(serialized, features), seed=None,
                         image_size=settings.image_size, max_boxes=max_boxes,
                         max_pairs=settings.max_pairs)
    example["image"] = tf.where(valid, example["image"], 0.0)
    example["box_mask"] = example["box_mask"] & valid
    example["pair_weights"] = tf.where(valid, example["pair_weights"], 0.0)
    example["valid"] = valid
    return example

  if n == 0:
    raise ValueError(f"split {host_split!r} of {builder.name} is empty on this host")
  if start:
    num_batches = math.ceil(max(per_host - start, 0) / batch_size)
  positions = tf.data.Dataset.range(start, start + num_batches * batch_size)
  ds = serialized(source, positions.map(position_to_index))
  ds = ds.map(process, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(settings.prefetch or tf.data.AUTOTUNE).with_options(_options())


def create_train_iterator(config_data: Any, *, seed: int, global_batch_size: int,
                          start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Host-local numpy training batches, forever; resumable at `start_step`.

  Args:
    config_data: `config.data`.
    seed: the run's seed.
    global_batch_size: the batch over all hosts; each host yields its share.
    start_step: the step of the first batch (e.g. the restored checkpoint's step).

  Returns:
    An iterator of batch dicts (see the module docstring).
  """
  settings = DataSettings.from_config(config_data)
  ds = create_train_dataset(settings, seed=seed,
                            batch_size=local_batch_size(global_batch_size),
                            start_step=start_step)
  return ds.as_numpy_iterator()


def create_eval_iterator(config_data: Any, *, global_batch_size: int,
                         split: str | None = None, max_boxes: int | None = None,
                         start: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Host-local numpy eval batches, one pass in a fixed order, with a `valid` mask.

  Call again for another pass. `split` defaults to config_data.eval_split and
  `max_boxes` to config_data.max_boxes; `start` skips the host's first examples unread.
  """
  settings = DataSettings.from_config(config_data)
  ds = create_eval_dataset(settings, batch_size=local_batch_size(global_batch_size),
                           split=split, max_boxes=max_boxes, start=start)
  return ds.as_numpy_iterator()

