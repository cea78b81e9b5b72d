"""The frozen-backbone feature cache: what it stores, that the head sees the same features, resume,
keys, atomic builds and training from it."""

import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from procrop_jax import feature_cache
from procrop_jax import inference
from procrop_jax import input_pipeline
from procrop_jax import model_zoo
from procrop_jax import train
from procrop_jax.datasets import source_record


@pytest.fixture
def cache_config(tiny_config, tmp_path):
  config = tiny_config.copy_and_resolve_references()
  config.model.num_references = 0
  config.data.feature_cache.views = 2
  config.data.feature_cache.dir = str(tmp_path / "cache")
  return config


def test_view_zero_holds_the_backbone_features_of_the_plain_images(cache_config):
  cache = feature_cache.FeatureCache(feature_cache.build(cache_config, batch_size=8))
  n = cache.num_examples
  assert cache.views == 2 and len(cache.image_id) == 2 * n
  assert cache.arrays["features_stride32"].dtype == np.float16
  model = model_zoo.create_model(cache_config)
  data = cache_config.data.copy_and_resolve_references()
  data.eval_split = data.train_split
  batch = next(input_pipeline.create_eval_iterator(data, global_batch_size=8))
  feats = model.backbone_features(jnp.asarray(batch["image"]))
  np.testing.assert_allclose(cache.arrays["features_stride32"][:8], feats["stride32"],
                             rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(cache.arrays["features_stride16"][:8], feats["stride16"],
                             rtol=1e-2, atol=1e-2)
  np.testing.assert_array_equal(cache.arrays["boxes"][:8], batch["boxes"])
  np.testing.assert_array_equal(cache.image_id[:8], batch["image_id"])
  # The augmented view is another image of the same examples.
  np.testing.assert_array_equal(cache.image_id[n:n + 8], batch["image_id"])
  assert not np.allclose(cache.arrays["features_stride32"][n:n + 8],
                         cache.arrays["features_stride32"][:8])

  # The model on cached features predicts what it predicts from the images.
  from_images = model(jnp.asarray(batch["image"]), image_valid_hw=batch["image_valid_hw"])
  from_cache = model(None, image_valid_hw=batch["image_valid_hw"],
                     features={k: jnp.asarray(v, jnp.float16).astype(jnp.float32)
                               for k, v in feats.items()})
  np.testing.assert_allclose(from_cache["boxes"], from_images["boxes"], atol=2e-2)


def test_a_second_build_reuses_the_cache_and_a_changed_key_builds_a_new_one(cache_config,
                                                                           monkeypatch):
  first = feature_cache.build(cache_config, batch_size=8)
  stamp = (first / "metadata.json").stat().st_mtime_ns
  assert feature_cache.build(cache_config, batch_size=8) == first
  assert (first / "metadata.json").stat().st_mtime_ns == stamp
  other = cache_config.copy_and_resolve_references()
  other.data.feature_cache.views = 1
  second = feature_cache.build(other, batch_size=8)
  assert second != first
  assert json.loads((second / "metadata.json").read_text())["views"] == 1
  # Fewer cropped views are different features: a new key, not the old cache.
  milder = cache_config.copy_and_resolve_references()
  milder.data.crop_probability = 0.2
  settings = input_pipeline.DataSettings.from_config(cache_config.data)
  builder = input_pipeline.load_builder(settings)
  key = lambda config: feature_cache.cache_key(config, builder, settings.train_split)
  assert key(milder) != key(cache_config)
  # A build remade from a changed source keeps its name and version but not its cache.
  record = source_record.read(builder.data_dir)
  assert record, "the prepared tiny set has a source record"
  before = key(cache_config)
  # (The shared tiny build's record is left alone: other test workers read it.)
  monkeypatch.setattr(source_record, "read",
                      lambda build_dir: {**record, "content": "changed"})
  assert key(cache_config) != before
  # The same bytes under new file times (a copied folder) keep the cache.
  monkeypatch.setattr(source_record, "read",
                      lambda build_dir: {**record, "fingerprint": "new times"})
  assert key(cache_config) == before


def test_an_interrupted_build_leaves_nothing_that_looks_finished(cache_config, monkeypatch):
  def broken(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(feature_cache, "_views_dataset", broken)
  with pytest.raises(OSError, match="disk full"):
    feature_cache.build(cache_config, batch_size=8)
  root = cache_config.data.feature_cache.dir
  assert not list(__import__("pathlib").Path(root).iterdir())


def test_a_trained_backbone_is_refused(cache_config):
  cache_config.optim.backbone_learning_rate = 1e-5
  with pytest.raises(ValueError, match="frozen backbone"):
    feature_cache.build(cache_config)


def test_batches_are_a_function_of_seed_and_step_so_a_resume_continues_exactly(cache_config):
  make = lambda start: feature_cache.create_train_iterator(
      cache_config, seed=3, global_batch_size=4, start_step=start)
  from_zero = make(0)
  batches = [next(from_zero) for _ in range(4)]
  resumed = next(make(3))
  for key in resumed:
    np.testing.assert_array_equal(resumed[key], batches[3][key])
  assert resumed["features_stride32"].shape[0] == 4
  # Within an epoch every example comes once.
  cache = feature_cache.FeatureCache(feature_cache.build(cache_config))
  rows = cache.rows(np.arange(cache.num_examples), seed=3)
  assert sorted(rows % cache.num_examples) == list(range(cache.num_examples))


@pytest.mark.slow
def test_training_from_the_cache_runs_and_compiles_once(cache_config, tmp_path):
  cache_config.train.num_steps = 3
  summary = train.train_and_evaluate(cache_config, str(tmp_path / "run"))
  assert summary["step"] == 3 and summary["train_step_compilations"] == 1
  assert np.isfinite(summary["metrics"]["loss"])


@pytest.fixture
def tail_config(cache_config):
  """Only the backbone's last block (and its head conv) trains: the cache holds its input."""
  cache_config.optim.backbone_learning_rate = 1e-3
  cache_config.optim.trainable_backbone_blocks = 1
  return cache_config


def test_with_a_trained_tail_the_cache_holds_its_input_and_the_model_runs_it(tail_config):
  cache = feature_cache.FeatureCache(feature_cache.build(tail_config, batch_size=8))
  assert "features_stride32" not in cache.arrays
  tail_input = cache.arrays["features_block15_input"]
  grid = -(-tail_config.data.image_size // 32)
  assert tail_input.shape[1:] == (grid, grid, 192)  # Lite0's last block reads 192 channels.
  model = model_zoo.create_model(tail_config)
  data = tail_config.data.copy_and_resolve_references()
  data.eval_split = data.train_split
  batch = next(input_pipeline.create_eval_iterator(data, global_batch_size=8))
  from_images = model(jnp.asarray(batch["image"]), image_valid_hw=batch["image_valid_hw"])
  cached = {k: jnp.asarray(cache.arrays[feature_cache.FEATURE_PREFIX + k][:8], jnp.float32)
            for k in ("block15_input", "stride16")}
  from_cache = model(None, image_valid_hw=batch["image_valid_hw"], features=cached)
  np.testing.assert_allclose(from_cache["boxes"], from_images["boxes"], atol=2e-2)
  np.testing.assert_allclose(from_cache["logits"], from_images["logits"], atol=5e-2)


def test_a_tail_cache_has_its_own_key_and_a_tail_reaching_stride16_is_refused(tail_config,
                                                                              cache_config):
  settings = input_pipeline.DataSettings.from_config(tail_config.data)
  builder = input_pipeline.load_builder(settings)
  frozen = cache_config.copy_and_resolve_references()
  frozen.optim.backbone_learning_rate = 0.0
  keys = [feature_cache.cache_key(c, builder, settings.train_split) for c in (tail_config, frozen)]
  assert keys[0]["backbone_tail_start"] == 15 and "backbone_tail_start" not in keys[1]
  # Blocks 10 on include the one that makes the cached stride-16 map.
  tail_config.optim.trainable_backbone_blocks = 6
  with pytest.raises(ValueError, match="stride-16"):
    feature_cache.build(tail_config)
  tail_config.optim.trainable_backbone_blocks = 17
  with pytest.raises(ValueError, match="has 16 blocks"):
    feature_cache.build(tail_config)


@pytest.mark.slow
def test_training_a_tail_from_the_cache_changes_the_tail_only_and_exports_it(tail_config,
                                                                             tmp_path):
  tail_config.model.pretrained = True  # An ImageNet backbone: its untouched part is not stored.
  tail_config.train.num_steps = 3
  tail_config.optim.warmup_steps = 0
  tail_config.optim.schedule = "constant"
  tail_config.optim.ema_decay = 0.0
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(tail_config, workdir)
  assert summary["step"] == 3 and summary["train_step_compilations"] == 1
  before = model_zoo._named_variables(model_zoo.create_model(tail_config))
  trained = inference.Predictor.from_workdir(workdir).model()
  after = model_zoo._named_variables(trained)
  changed = lambda name: not np.array_equal(before[name].get_value(), after[name].get_value())
  assert changed("backbone/blocks/15/expand_conv/kernel")
  assert changed("backbone/head_conv/kernel")
  assert not changed("backbone/blocks/14/expand_conv/kernel")
  assert not changed("backbone/stem_conv/kernel")
  # The export stores the trained tail and takes the rest from the ImageNet package.
  out = model_zoo.export(trained, tail_config, tmp_path / "shipped", dtype="float32")
  stored = np.load(out / "params.npz").files
  assert "backbone/blocks/15/expand_conv/kernel" in stored
  assert "backbone/head_bn/scale" in stored
  assert not any(k.startswith("backbone/blocks/14/") for k in stored)
  loaded = model_zoo.load(out).model
  for name, var in model_zoo._named_variables(loaded).items():
    np.testing.assert_array_equal(var.get_value(), after[name].get_value(), err_msg=name)


def test_a_cache_of_a_wider_split_trains_only_on_the_training_photos(cache_config):
  config = cache_config.copy_and_resolve_references()
  config.data.feature_cache.split = "train"
  config.data.train_split = "train[:4]+train[8:]"
  wide = feature_cache.FeatureCache(feature_cache.build(config, batch_size=8))
  assert wide.metadata["key"]["split"] == "train"
  ours = set(feature_cache._image_ids(config).tolist())
  assert len(ours) == wide.cached_examples - 4
  batches = feature_cache.create_train_iterator(config, seed=0, global_batch_size=4)
  seen = set()
  for _ in range(2 * wide.cached_examples):
    seen.update(next(batches)["image_id"].tolist())
  assert seen == ours
  with pytest.raises(ValueError, match="must contain"):
    wide.examples_of(np.array([b"not-a-photo"]))
