"""Tests of the tf.data input pipeline and of dataset preparation."""

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import default
from procrop_jax import input_pipeline
from procrop_jax.datasets import prepare
from procrop_jax.datasets import procrop_cad

IMAGE_SIZE = 64
NUM_EXAMPLES = 12


def rectangle_image(height, width, box, colour=(1.0, 0.0, 0.0)):
  """Grey image with a saturated rectangle at box (x1, y1, x2, y2 pixels)."""
  image = np.full((height, width, 3), 0.5, np.float32)
  x1, y1, x2, y2 = box
  image[y1:y2, x1:x2] = colour
  return image


@pytest.fixture(scope="module", name="data_config")
def fixture_data_config(tmp_path_factory):
  """A small procrop_cad dataset (ArrayRecord) and a config.data that reads it."""
  root = tmp_path_factory.mktemp("pipeline")
  manual = root / "manual"
  (manual / "images").mkdir(parents=True)
  (manual / "annotations").mkdir()
  rng = np.random.default_rng(0)
  for i in range(NUM_EXAMPLES):
    h, w = (90, 120) if i % 2 else (120, 80)
    x1, y1 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
    x2, y2 = int(rng.integers(x1 + w // 3, w)), int(rng.integers(y1 + h // 3, h))
    image = rectangle_image(h, w, (x1, y1, x2, y2))
    Image.fromarray((image * 255).astype(np.uint8)).save(
        manual / "images" / f"p{i // 2}_{i % 2}.jpg", quality=95)
    lines = [f"{y1} {x1} {y2} {x2}"]  # The pseudo-label, score 5.
    for _ in range(20 if i == 0 else 2):  # Example 0 has more boxes than max_boxes.
      a, b = sorted(rng.integers(0, w, 2)), sorted(rng.integers(0, h, 2))
      lines.append(f"{b[0]} {a[0]} {b[1] + 1} {a[1] + 1} {rng.uniform(1, 4):.2f}")
    (manual / "annotations" / f"p{i // 2}_{i % 2}.txt").write_text("\n".join(lines))
  data_dir = root / "tfds"
  builder = procrop_cad.ProcropCad(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  config = default.get_config().data
  config.data_dir = str(data_dir)
  config.manual_dir = str(manual)
  config.train_split = "train"
  config.eval_split = "train"
  config.image_size = IMAGE_SIZE
  config.max_boxes = 8
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batch_matches_the_contract(data_config):
  batch = next(input_pipeline.create_train_iterator(data_config, seed=0,
                                                    global_batch_size=4))
  expected = {
      "image": (np.float32, (4, IMAGE_SIZE, IMAGE_SIZE, 3)),
      "image_valid_hw": (np.float32, (4, 2)),
      "image_size": (np.int32, (4, 2)),
      "boxes": (np.float32, (4, 8, 4)),
      "box_scores": (np.float32, (4, 8)),
      "box_mask": (np.bool_, (4, 8)),
      "pair_boxes": (np.float32, (4, 10, 2, 4)),
      "pair_weights": (np.float32, (4, 10)),
      "image_id": (np.object_, (4,)),
  }
  assert set(batch) == set(expected)
  assert not batch["pair_weights"].any()  # CAD has no rated pairs: all padding.
  for key, (dtype, shape) in expected.items():
    assert batch[key].dtype == dtype and batch[key].shape == shape, key
  assert batch["image"].min() >= 0 and batch["image"].max() <= 1
  assert batch["box_mask"][:, 0].all()  # The target box always survives.
  for i in range(4):
    h, w = np.round(batch["image_valid_hw"][i] * IMAGE_SIZE).astype(int)
    assert max(h, w) == IMAGE_SIZE
    assert not batch["image"][i, h:].any() and not batch["image"][i, :, w:].any()
    boxes = batch["boxes"][i][batch["box_mask"][i]]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    scores = batch["box_scores"][i][batch["box_mask"][i]]
    assert (np.diff(scores) <= 0).all()  # Sorted by score.
  assert all(isinstance(i, bytes) for i in batch["image_id"])


def test_deterministic_and_resumable_without_replay(data_config):
  run = take(input_pipeline.create_train_iterator(data_config, seed=7,
                                                  global_batch_size=4), 6)
  resumed = take(input_pipeline.create_train_iterator(data_config, seed=7,
                                                      global_batch_size=4, start_step=4), 2)
  other = take(input_pipeline.create_train_iterator(data_config, seed=8,
                                                    global_batch_size=4), 1)
  # A fresh iterator at step 4 reproduces steps 4 and 5: deterministic and resumable.
  for a, b in zip(run[4:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(run[0]["image"], other[0]["image"])
  # One epoch (12 examples, 3 batches) visits each example once; the next epoch is
  # a different permutation.
  epoch = [i for batch in run[:3] for i in batch["image_id"]]
  assert len(set(epoch)) == NUM_EXAMPLES
  second = [i for batch in run[3:6] for i in batch["image_id"]]
  assert sorted(second) == sorted(epoch) and second != epoch
  # A seek far into training reads only what it yields (a replay would never end).
  far = next(input_pipeline.create_train_iterator(data_config, seed=7, global_batch_size=4,
                                                  start_step=10**12))
  assert far["image"].shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_eval_pads_the_last_batch_and_keeps_order(data_config):
  batches = list(input_pipeline.create_eval_iterator(data_config, global_batch_size=5,
                                                     max_boxes=32))
  assert len(batches) == 3
  valid = np.concatenate([b["valid"] for b in batches])
  assert valid.tolist() == [True] * NUM_EXAMPLES + [False] * 3
  assert batches[0]["boxes"].shape == (5, 32, 4)
  masks = {i: m.sum() for b in batches for i, m in zip(b["image_id"], b["box_mask"])}
  assert masks[b"p0_0"] == 21  # All of its boxes fit at M = 32.
  last = batches[-1]
  assert not last["image"][~last["valid"]].any() and not last["box_mask"][~last["valid"]].any()
  ids = [i for b in batches for i, v in zip(b["image_id"], b["valid"]) if v]
  source = tfds.builder("procrop_cad", data_dir=data_config.data_dir).as_data_source("train")
  assert ids == [ex["image_id"] for ex in source]
  again = list(input_pipeline.create_eval_iterator(data_config, global_batch_size=5))
  np.testing.assert_array_equal(again[1]["image"], batches[1]["image"])


def test_augmentation_keeps_the_rectangle_exactly_in_the_target_box():
  height, width, box = 90, 130, (30, 20, 95, 70)
  image = tf.constant((rectangle_image(height, width, box) * 255).astype(np.uint8))
  example = {
      "image_size": tf.constant([height, width], tf.int32),
      # The target (best score) first; a second box that crops may cut.
      "boxes": tf.constant([[box[0] / width, box[1] / height, box[2] / width,
                             box[3] / height], [0.0, 0.0, 0.2, 0.2]], tf.float32),
      "box_scores": tf.constant([5.0, 2.0]),
      "image_id": tf.constant("rect"),
  }
  size = 96
  crops = flips = 0
  for seed in range(40):
    out = input_pipeline.preprocess(example, seed=tf.constant([0, seed], tf.int64),
                                    image_size=size, max_boxes=4, image=image,
                                    augment=input_pipeline.Augmentation())
    canvas = out["image"].numpy()
    h, w = np.round(out["image_valid_hw"].numpy() * size).astype(int)
    assert out["box_mask"].numpy()[0]
    x1, y1, x2, y2 = out["boxes"].numpy()[0] * [w, h, w, h]
    saturation = canvas.max(-1) - canvas.min(-1)
    ys, xs = np.nonzero(saturation > 0.4)
    # Every coloured pixel is inside the box (a pixel of resampling blur allowed) ...
    assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
    assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
    # ... and the box is filled with it.
    inner = saturation[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
    assert inner.size and (inner > 0.4).all()
    crops += int(tuple(out["image_size"].numpy()) != (height, width))
    # Flipped when the rectangle moved to the mirrored side.
    nx1 = out["boxes"].numpy()[0][0]
    flips += int(abs((1 - nx1) - (box[2] / width)) < abs(nx1 - box[0] / width))
  assert 5 < crops < 35 and 5 < flips < 35


def test_ensure_dataset_generates_and_builds_once(tmp_path, capsys):
  config = default.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "manual" / "procrop_cad_default")
  config.cad.variants_per_photo = 1  # The full default is in the slow test below.
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == len(
      list((tmp_path / "manual" / "procrop_cad_default" / "images").glob("*.jpg"))) == 9
  out = capsys.readouterr().out
  assert "Generating CAD data" in out and "Prepared procrop_cad" in out
  prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  assert "Building" not in capsys.readouterr().out  # Already prepared: no work.


def test_ensure_dataset_leaves_foreign_manual_data_alone(tmp_path):
  manual = tmp_path / "released_cad"
  (manual / "annotations").mkdir(parents=True)
  (manual / "images").mkdir()
  Image.fromarray(rectangle_image(40, 50, (5, 5, 30, 30), (0, 1, 0)).astype(np.uint8)
                  ).save(manual / "images" / "x_0.jpg")
  (manual / "annotations" / "x_0.txt").write_text("5 5 30 30\n")
  config = default.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(manual)
  builder = prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  assert builder.info.splits["train"].num_examples == 1
  assert sorted(p.name for p in (manual / "images").iterdir()) == ["x_0.jpg"]


@pytest.mark.slow
def test_default_config_prepares_and_feeds(tmp_path):
  config = default.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "manual")
  prepare.ensure_dataset(config.data, config.cad, seed=config.seed)
  batch = next(input_pipeline.create_train_iterator(config.data, seed=0,
                                                    global_batch_size=8))
  size = config.data.image_size
  assert batch["image"].shape == (8, size, size, 3)
  evals = list(input_pipeline.create_eval_iterator(config.data, global_batch_size=8))
  assert sum(b["valid"].sum() for b in evals) == tfds.builder(
      "procrop_cad", data_dir=config.data.data_dir).info.splits["train[90%:]"].num_examples


def test_missing_dataset_says_how_to_prepare(tmp_path):
  config = default.get_config().data
  config.data_dir = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="ensure_dataset"):
    input_pipeline.create_train_iterator(config, seed=0, global_batch_size=8)


def test_example_without_boxes_gets_an_empty_mask():
  example = {
      "image_size": tf.constant([30, 40], tf.int32),
      "boxes": tf.zeros([0, 4]),
      "box_scores": tf.zeros([0]),
      "image_id": tf.constant("photo"),
  }
  image = tf.constant(np.full((30, 40, 3), 200, np.uint8))
  for seed in (None, tf.constant([1, 2], tf.int64)):
    out = input_pipeline.preprocess(example, seed=seed, image_size=32, max_boxes=3,
                                    image=image, augment=input_pipeline.Augmentation())
    assert out["boxes"].shape == (3, 4) and not out["box_mask"].numpy().any()
    assert out["image"].shape == (32, 32, 3)


def test_settings_read_from_a_dict():
  data = default.get_config().data.to_dict()
  settings = input_pipeline.DataSettings.from_config(
      {**data, "dataset": "fcdb", "image_size": 128, "unrelated": 1})
  assert settings.dataset == "fcdb" and settings.image_size == 128
  assert settings.max_boxes == data["max_boxes"]
  # No second set of defaults: a missing field is named.
  del data["max_boxes"], data["prefetch"]
  with pytest.raises(KeyError, match="config.data has no max_boxes, prefetch"):
    input_pipeline.DataSettings.from_config(data)


def test_crop_probability_sets_the_share_of_cropped_views():
  data = default.get_config().data.to_dict()
  settings = input_pipeline.DataSettings.from_config({**data, "crop_probability": 0.2})
  assert settings.augmentation() == input_pipeline.Augmentation(crop_probability=0.2)
  # The default is what caches and runs made before the field existed used.
  assert (input_pipeline.DataSettings.from_config(data).augmentation()
          == input_pipeline.Augmentation())
  off = input_pipeline.DataSettings.from_config({**data, "augment": False,
                                                 "crop_probability": 0.2})
  assert off.augmentation() == input_pipeline.NO_AUGMENTATION
  height, width, box = 60, 80, (0.3, 0.3, 0.6, 0.6)
  example = {"image_size": tf.constant([height, width], tf.int32),
             "boxes": tf.constant([box], tf.float32), "box_scores": tf.constant([1.0]),
             "image_id": tf.constant("x")}
  image = tf.zeros([height, width, 3], tf.uint8)
  def cropped(probability):
    augment = input_pipeline.Augmentation(crop_probability=probability, flip_probability=0.0)
    return sum(
        tuple(input_pipeline.preprocess(example, seed=tf.constant([1, seed], tf.int64),
                                        image_size=32, max_boxes=1, image=image,
                                        augment=augment)["image_size"].numpy()) != (height, width)
        for seed in range(30))
  assert cropped(0.0) == 0 and cropped(1.0) == 30


def test_augmented_pair_boxes_stay_on_the_same_content():
  height, width = 90, 130
  target, green, blue = (30, 20, 95, 70), (40, 30, 60, 50), (70, 25, 90, 45)
  image = rectangle_image(height, width, target)
  image[green[1]:green[3], green[0]:green[2]] = (0.0, 1.0, 0.0)
  image[blue[1]:blue[3], blue[0]:blue[2]] = (0.0, 0.0, 1.0)
  norm = lambda b: [b[0] / width, b[1] / height, b[2] / width, b[3] / height]
  example = {
      "image_size": tf.constant([height, width], tf.int32),
      "boxes": tf.constant([norm(target)], tf.float32),
      "box_scores": tf.constant([5.0]),
      "image_id": tf.constant("pairs"),
      # (blue, green) with more votes for green: the pipeline puts the preferred one first.
      "pair_boxes": tf.constant([[norm(blue), norm(green)], [[0.0, 0.0, 0.1, 0.1], norm(green)]],
                                tf.float32),
      "pair_votes": tf.constant([[1, 4], [3, 2]], tf.int32),
  }
  size, kept = 96, 0
  for seed in range(30):
    out = input_pipeline.preprocess(
        example, seed=tf.constant([1, seed], tf.int64), image_size=size, max_boxes=2,
        image=tf.constant((image * 255).astype(np.uint8)), augment=input_pipeline.Augmentation(),
        max_pairs=4)
    weights, pairs = out["pair_weights"].numpy(), out["pair_boxes"].numpy()
    assert pairs.shape == (4, 2, 4) and weights[2:].tolist() == [0, 0]  # Padding.
    assert weights[0] == pytest.approx(0.6)
    assert weights[1] in (0.0, pytest.approx(0.2))  # Cut when the crop loses its corner box.
    kept += int(weights[1] > 0)
    canvas = out["image"].numpy()
    h, w = np.round(out["image_valid_hw"].numpy() * size).astype(int)
    for box, channel in ((pairs[0, 0], 1), (pairs[0, 1], 2)):  # Preferred green, other blue.
      x1, y1, x2, y2 = box * [w, h, w, h]
      colour = canvas[..., channel] - canvas.max(-1, where=np.arange(3) != channel, initial=0)
      ys, xs = np.nonzero(colour > 0.5)
      assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1
      assert ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1
      assert colour[int((y1 + y2) / 2), int((x1 + x2) / 2)] > 0.5
  assert 0 < kept < 30
