"""Decode once, augment on the device: the canvas cache and the jitted augmentation."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from procrop_jax import canvas_cache
from procrop_jax import device_augment
from procrop_jax import input_pipeline
from procrop_jax import model_zoo
from tests import test_train

S = 64  # Training size.
AUGMENT = input_pipeline.Augmentation()  # The training augmentation, crop probability 0.5.


def cached_example(rng, height, width, side=80, max_boxes=4, max_pairs=3):
  """A cache row: a random photo at the top left of a side x side canvas, boxes by score."""
  canvas = np.zeros((side, side, 3), np.uint8)
  photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  canvas[:height, :width] = photo
  xy = rng.uniform(0.0, 0.5, (max_boxes, 2))
  wh = rng.uniform(0.2, 0.5, (max_boxes, 2))
  pair_xy = rng.uniform(0.0, 0.4, (max_pairs, 2, 2))
  pair_wh = rng.uniform(0.3, 0.6, (max_pairs, 2, 2))
  example = {
      "canvas": canvas,
      "content_hw": np.array([height, width], np.int32),
      "image_size": np.array([height * 5, width * 5], np.int32),
      "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
      "box_scores": np.array([4.0, 3.0, 2.0, 1.0][:max_boxes], np.float32),
      "box_mask": np.array([True, True, True, False][:max_boxes]),
      "pair_boxes": np.concatenate([pair_xy, pair_xy + pair_wh], -1).astype(np.float32),
      "pair_weights": np.array([0.5, 0.2, 0.0], np.float32)[:max_pairs],
  }
  example["boxes"][~example["box_mask"]] = 0.0
  return example, photo


def batch_of(examples, positions):
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  batch["position"] = np.asarray(positions, np.int32)
  return batch


@pytest.fixture(scope="module")
def augment():
  return jax.jit(lambda b: device_augment.augment_batch(b, seed=0, image_size=S,
                                                        augment=AUGMENT))


def test_the_same_positions_draw_the_same_views_and_other_positions_others(augment):
  rng = np.random.default_rng(0)
  examples = [cached_example(rng, 60, 80)[0] for _ in range(8)]
  a = augment(batch_of(examples, range(8)))
  b = augment(batch_of(examples, range(8)))
  c = augment(batch_of(examples, range(8, 16)))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert not np.array_equal(a["image"], c["image"])
  assert a["image"].shape == (8, S, S, 3) and a["image"].dtype == jnp.float32


def test_every_view_keeps_its_target_and_its_valid_boxes_inside_the_crop(augment):
  rng = np.random.default_rng(1)
  examples = [cached_example(rng, int(rng.integers(30, 81)), int(rng.integers(30, 81)))[0]
              for _ in range(64)]
  out = jax.device_get(augment(batch_of(examples, range(64))))
  assert out["box_mask"][:, 0].all()  # The target (best box) is never cut.
  boxes = out["boxes"][out["box_mask"]]
  assert (boxes >= 0).all() and (boxes <= 1).all()
  assert (boxes[:, 2:] > boxes[:, :2]).all()
  # Valid boxes come first, by score; the padding is zero.
  for mask, scores in zip(out["box_mask"], out["box_scores"]):
    assert not (~mask[:-1] & mask[1:]).any()
    assert (np.diff(scores[mask]) <= 0).all() and (scores[~mask] == 0).all()
  # Content at the top left, zero padding, values in [0, 1].
  hw = np.round(out["image_valid_hw"] * S).astype(int)
  assert (hw.max(axis=1) == S).all()
  for image, (h, w) in zip(out["image"], hw):
    assert image[h:].max(initial=0) == 0 and image[:, w:].max(initial=0) == 0
    assert 0 <= image.min() and image.max() <= 1
  # Some views were cropped (their source size shrank), some flipped.
  assert (out["image_size"] < np.stack([e["image_size"] for e in examples])).any()


def _host_draws(seed):
  """The draws the host pipeline makes from a TF stateless seed (input_pipeline.preprocess)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  return device_augment.Draws(
      window=jnp.asarray(tf.random.stateless_uniform([4], seeds[0]).numpy()),
      crop=jnp.asarray(tf.random.stateless_uniform([], seeds[1]).numpy()
                       < AUGMENT.crop_probability),
      flip=jnp.asarray(tf.random.stateless_uniform([], seeds[2]).numpy()
                       < AUGMENT.flip_probability),
      colour=jnp.asarray(tf.random.stateless_uniform([3], seeds[3]).numpy()))


@pytest.mark.parametrize("seed", range(12))
def test_the_device_matches_the_host_augmentation_given_the_same_draws(seed):
  rng = np.random.default_rng(100 + seed)
  example, photo = cached_example(rng, int(rng.integers(40, 81)), int(rng.integers(40, 81)))
  tf_seed = tf.constant([7, seed], tf.int64)
  valid = example["box_mask"]
  host_example = {
      "image_size": tf.constant(example["image_size"]),
      "boxes": tf.constant(example["boxes"][valid]),
      "box_scores": tf.constant(example["box_scores"][valid]),
      "pair_boxes": tf.constant(example["pair_boxes"]),
      "pair_votes": tf.constant([[3, 1], [6, 4], [2, 2]], tf.int64),
      "image_id": tf.constant(b"x"),
  }
  host = input_pipeline.preprocess(host_example, seed=tf_seed, image_size=S, max_boxes=4,
                                   augment=AUGMENT, image=tf.constant(photo), max_pairs=3)
  # Pair weights from the votes above: |v0 - v1| / (v0 + v1).
  example["pair_weights"] = np.array([0.5, 0.2, 0.0], np.float32)
  draws = _host_draws(tf_seed)
  device = jax.device_get(device_augment.augment_example(
      jax.tree.map(jnp.asarray, example), draws, image_size=S, augment=AUGMENT))

  np.testing.assert_array_equal(device["box_mask"], host["box_mask"].numpy())
  np.testing.assert_allclose(device["boxes"], host["boxes"].numpy(), atol=1e-5)
  np.testing.assert_allclose(device["box_scores"], host["box_scores"].numpy())
  np.testing.assert_allclose(device["pair_boxes"], host["pair_boxes"].numpy(), atol=1e-5)
  np.testing.assert_allclose(device["pair_weights"], host["pair_weights"].numpy(), atol=1e-6)
  np.testing.assert_array_equal(device["image_size"], host["image_size"].numpy())
  np.testing.assert_allclose(device["image_valid_hw"], host["image_valid_hw"].numpy())
  # Pixels: the same resize kernel; they differ only where it reaches past the crop's edges.
  h, w = np.round(host["image_valid_hw"].numpy() * S).astype(int)
  inner = np.abs(device["image"] - host["image"].numpy())[2:h - 2, 2:w - 2]
  assert inner.mean() < 0.01, inner.mean()


@pytest.mark.slow
def test_training_from_the_canvas_cache_resumes_exactly(tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.data.canvas_cache.enabled = True
  config.data.canvas_cache.dir = str(tmp_path / "cache")
  config.train.eval_every = 0
  config.train.checkpoint_every = 1
  straight = test_train._train(config, tmp_path / "straight", 2)
  (folder,) = (tmp_path / "cache").iterdir()  # Built once; the second run finds it.
  meta = json.loads((folder / "metadata.json").read_text())
  side = canvas_cache.canvas_side(config.data)
  assert meta["shapes"]["canvas"][1:] == [side, side, 3]
  assert meta["key"]["canvas_side"] == side and "source_fingerprint" in meta["key"]

  real = canvas_cache.create_train_iterator

  def preempted_after_one_step(*args, **kwargs):
    iterator = real(*args, **kwargs)
    yield next(iterator)
    raise test_train.Preempted()

  monkeypatch.setattr(canvas_cache, "create_train_iterator", preempted_after_one_step)
  with pytest.raises(test_train.Preempted):
    test_train._train(config, tmp_path / "resumed", 2)
  monkeypatch.setattr(canvas_cache, "create_train_iterator", real)
  resumed = test_train._train(config, tmp_path / "resumed", 2)
  assert straight["step"] == resumed["step"] == 2
  assert straight["train_step_compilations"] == 1
  assert np.isfinite(straight["metrics"]["loss"])
  np.testing.assert_allclose(straight["metrics"]["loss"], resumed["metrics"]["loss"], rtol=1e-5)
  a, _ = test_train._final_params(config, tmp_path / "straight")
  b, _ = test_train._final_params(config, tmp_path / "resumed")
  test_train.assert_params_close(a, b, atol=1e-6)
  assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_damaged_cache_names_its_file(tmp_path):
  (tmp_path / "metadata.json").write_text(json.dumps(
      {"num_examples": 3, "shapes": {"canvas": [3, 8, 8, 3]}}))
  np.save(tmp_path / "canvas.npy", np.zeros((2, 8, 8, 3), np.uint8))
  np.save(tmp_path / "image_id.npy", np.array([b"a", b"b", b"c"]))
  with pytest.raises(ValueError, match="canvas.npy has 2 rows"):
    canvas_cache.CanvasCache(tmp_path)


def test_an_oversample_below_one_is_refused(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.data.canvas_cache.oversample = 0.9
  with pytest.raises(ValueError, match="oversample=0.9"):
    canvas_cache.canvas_side(config.data)


def test_the_views_do_not_depend_on_the_mesh(augment):
  """Draws come from global stream positions: one device or eight, each example is the same."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  batch = batch_of([cached_example(rng, 60, 80)[0] for _ in range(8)], range(40, 48))
  outputs = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    sharding = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
    step = jax.jit(lambda b: device_augment.augment_batch(b, seed=0, image_size=S,
                                                          augment=AUGMENT),
                   in_shardings=(sharding,), out_shardings=sharding)
    outputs.append(jax.device_get(step(batch)))
  assert len(jax.devices()) >= 8
  for k in outputs[0]:
    np.testing.assert_allclose(outputs[0][k], outputs[1][k], atol=1e-6, err_msg=k)


def test_plain_examples_are_the_cached_photo_as_it_is_and_the_others_unchanged(augment):
  """With plain_probability p, about p of the examples are the photo resized, unflipped and
  unjittered (what the feature cache's view 0 holds); every other example draws exactly the
  view it drew with p = 0, so runs without plain examples keep their stream."""
  rng = np.random.default_rng(5)
  examples = [cached_example(rng, 60, 80)[0] for _ in range(64)]
  batch = batch_of(examples, range(64))
  p = 0.25
  mixed = jax.device_get(jax.jit(lambda b: device_augment.augment_batch(
      b, seed=0, image_size=S, augment=AUGMENT, plain_probability=p))(batch))
  before = jax.device_get(augment(batch))
  unaugmented = jax.device_get(jax.jit(lambda b: device_augment.augment_batch(
      b, seed=0, image_size=S, augment=input_pipeline.NO_AUGMENTATION))(batch))
  # (No augmentation still blends the colours with factors of 1: equal up to rounding.)
  plain = np.array([np.allclose(m, u, atol=1e-5)
                    for m, u in zip(mixed["image"], unaugmented["image"])])
  same = np.array([np.array_equal(m, b) for m, b in zip(mixed["image"], before["image"])])
  assert 8 <= plain.sum() <= 24  # 16 expected of 64.
  assert (plain | same).all()  # Each example is plain, or the view it drew before.
  for k in ("boxes", "box_mask", "pair_weights", "image_size"):
    np.testing.assert_array_equal(mixed[k][plain], unaugmented[k][plain], err_msg=k)
    np.testing.assert_array_equal(mixed[k][~plain], before[k][~plain], err_msg=k)
  with pytest.raises(ValueError, match="plain_probability=1.5"):
    device_augment.augment_batch(batch, seed=0, image_size=S, augment=AUGMENT,
                                 plain_probability=1.5)


def test_an_interrupted_canvas_cache_build_leaves_nothing_that_looks_finished(
    tiny_config, tmp_path, monkeypatch):
  config = tiny_config.copy_and_resolve_references()
  config.data.canvas_cache.dir = str(tmp_path)
  real = canvas_cache._examples  # pylint: disable=protected-access

  class FailingAfterOneBatch:
    def __init__(self, *args, **kwargs):
      self.dataset = real(*args, **kwargs)

    def as_numpy_iterator(self):
      for i, batch in enumerate(self.dataset.as_numpy_iterator()):
        if i:
          raise OSError("disk full")
        yield batch

  monkeypatch.setattr(canvas_cache, "_examples", FailingAfterOneBatch)
  with pytest.raises(OSError, match="disk full"):
    canvas_cache.build(config, batch_size=2)
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_main_trainer_fine_tunes_the_whole_shipped_model_from_the_canvas_cache(
    tiny_config, tmp_path):
  """What the GPU/TPU recipe runs: the shipped model, backbone included, trained on views
  augmented on the device, with the rated pairs' given-box losses, EMA and a periodic
  evaluation, all by `python -m procrop_jax.main`'s trainer."""
  shipped = model_zoo.load_config("fcdb_lite0")
  config = tiny_config.copy_and_resolve_references()
  config.model = ml_collections.ConfigDict(shipped.model.to_dict())
  config.model.pretrained = False  # The shipped arrays replace every parameter.
  config.data.image_size = 64  # Small photos keep the whole model's step cheap to compile.
  config.data.canvas_cache.enabled = True
  config.data.canvas_cache.dir = str(tmp_path / "cache")
  config.train.init_from = "fcdb_lite0"
  config.optim.backbone_learning_rate = 1e-4
  config.optim.ema_decay = 0.5
  config.loss.rank_weight = 1.0
  config.loss.given_iou_weight = 2.0
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  summary = test_train._train(config, tmp_path / "run", 2)

  assert summary["step"] == 2
  assert {"loss_given_iou", "loss_rank"} <= summary["metrics"].keys()
  assert all(np.isfinite(v) for v in summary["metrics"].values())
  lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert any(line["step"] == 2 and any(k.startswith("val_") for k in line) for line in lines)

  start = {k: np.asarray(v) for k, v in model_zoo.load_arrays("fcdb_lite0").arrays.items()}
  state, _ = test_train._final_state(config, tmp_path / "run")
  for name in ("params", "ema_params"):
    final = test_train.params_of({"params": state[name]})
    assert final.keys() <= start.keys()  # The stored arrays also hold batch statistics.
    moved = {k: float(np.max(np.abs(final[k] - start[k]))) for k in final}
    # Two small steps from the shipped model, not from an initialisation: every array stays
    # near its shipped value, and the backbone trained too.
    assert max(moved.values()) < 0.05, max(moved.items(), key=lambda kv: kv[1])
    assert any(v > 0 for k, v in moved.items() if k.startswith("backbone/"))
