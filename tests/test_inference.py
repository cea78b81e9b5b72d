"""The Predictor: a run's parameters and config restored with no optimizer, eval through it."""

import json
import types

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from procrop_jax import inference
from procrop_jax import model_zoo
from procrop_jax import steps
from procrop_jax import train
from procrop_jax import workdir
from tests import test_model_zoo


@pytest.fixture(scope="module")
def predictor(tiny_trained_workdir):
  return inference.Predictor.from_workdir(tiny_trained_workdir)


@pytest.mark.slow
def test_training_writes_its_config_and_the_predictor_reads_it(tiny_config,
                                                               tiny_trained_workdir, predictor):
  saved = json.loads((tiny_trained_workdir / "config.json").read_text())
  assert saved["model"]["d_model"] == tiny_config.model.d_model
  assert predictor.config.model.to_dict() == tiny_config.model.to_dict()
  assert predictor.step == 1 and predictor.image_size == tiny_config.data.image_size


@pytest.mark.slow
def test_restores_the_trained_parameters_without_an_optimizer(tiny_trained_workdir,
                                                              predictor, monkeypatch):
  monkeypatch.setattr(steps, "create_optimizer", lambda *_: pytest.fail("built an optimizer"))
  monkeypatch.setattr(train, "Trainer", lambda *_: pytest.fail("built a Trainer"))
  restored = inference.Predictor.from_workdir(tiny_trained_workdir)
  # The checkpoint's own parameters, read raw (no target, no model).
  raw = ocp.PyTreeCheckpointer().restore(tiny_trained_workdir / "checkpoints" / "1" / "state")
  fingerprint = lambda tree: sorted((np.shape(x), float(np.sum(x))) for x in jax.tree.leaves(tree))
  assert fingerprint(restored.state["params"]) == fingerprint(raw["params"])
  assert "opt_state" in raw  # ... which the Predictor left on disk.


@pytest.mark.slow
def test_a_given_config_wins_with_a_warning_for_model_fields(tiny_trained_workdir, tiny_config,
                                                             caplog):
  config = tiny_config.copy_and_resolve_references()
  config.model.num_queries = 12
  with caplog.at_level("WARNING"):
    resolved = workdir.resolve_config(tiny_trained_workdir, config)
  assert resolved.model.num_queries == 12
  assert "model.num_queries" in caplog.text


@pytest.mark.slow
def test_predict_shapes_and_the_exported_model_predicts_alike(predictor, tmp_path):
  rng = np.random.default_rng(0)
  s = predictor.image_size
  images = rng.uniform(0, 1, (3, s, s, 3)).astype(np.float32)
  valid = np.array([[1.0, 0.75], [0.5, 1.0], [1.0, 1.0]], np.float32)
  out = predictor.predict(images, valid)
  n = predictor.config.model.num_queries
  assert out["boxes"].shape == (3, n, 4) and out["scores"].shape == (3, n)
  boxes = np.tile(np.array([[0.1, 0.1, 0.9, 0.8]], np.float32), (3, 5, 1))
  scored = predictor.predict(images, valid, boxes)
  assert scored["scores"].shape == (3, 5)
  # The same model through model_zoo: float16 storage moves scores very little.
  folder = model_zoo.export(predictor.model(), predictor.config, tmp_path / "model",
                            dtype="float32")
  shipped = inference.Predictor.from_pretrained(folder)
  np.testing.assert_allclose(shipped.predict(images, valid, boxes)["scores"], scored["scores"],
                             atol=1e-5)


@pytest.mark.slow
def test_restoring_a_checkpoint_builds_no_random_parameters(tiny_trained_workdir, monkeypatch):
  draws = test_model_zoo.concrete_random_draws(monkeypatch)
  restored = inference.Predictor.from_workdir(tiny_trained_workdir)
  assert restored.step == 1 and not draws, f"restoring drew random numbers: {draws}"


def test_workdir_without_checkpoint_is_a_clear_error(tmp_path, tiny_config):
  workdir.write_config(tiny_config, tmp_path)
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    inference.Predictor.from_workdir(tmp_path)


@pytest.mark.slow
def test_a_kept_encoding_predicts_as_the_images_do(predictor):
  rng = np.random.default_rng(1)
  s = predictor.image_size
  images = rng.uniform(0, 1, (2, s, s, 3)).astype(np.float32)
  valid = np.array([[1.0, 0.75], [0.5, 1.0]], np.float32)
  boxes = np.tile(np.array([[0.1, 0.1, 0.9, 0.8], [0.2, 0.3, 0.6, 0.9]], np.float32), (2, 1, 1))
  first = predictor.predict(images, valid, keep_encoding=True)
  assert predictor.reuses_encoding
  plain = predictor.predict(images, valid, boxes)
  reused = predictor.predict(None, valid, boxes, encoding=first["encoding"])
  for key in ("boxes", "scores"):
    np.testing.assert_allclose(reused[key], plain[key], atol=1e-5)
  # A given box's score does not depend on the other boxes scored with it.
  alone = predictor.predict(None, valid, boxes[:, :1], encoding=first["encoding"])
  np.testing.assert_allclose(alone["scores"], reused["scores"][:, :1], atol=1e-5)
  with pytest.raises(ValueError, match="given boxes"):
    predictor.predict(None, valid, encoding=first["encoding"])


@pytest.mark.slow
def test_an_encoding_is_refused_with_flip_averaging(tiny_trained_workdir):
  flipping = inference.Predictor.from_workdir(tiny_trained_workdir)
  flipping.config.inference.flip = True
  s = flipping.image_size
  images = np.zeros((1, s, s, 3), np.float32)
  valid = np.ones((1, 2), np.float32)
  assert not flipping.reuses_encoding
  with pytest.raises(ValueError, match="flip"):
    flipping.predict(images, valid, keep_encoding=True)


@pytest.mark.slow
def test_fine_tuning_starts_from_a_trained_run(tiny_trained_workdir, tiny_config, tmp_path):
  trained = inference.trained_params(str(tiny_trained_workdir))
  config = tiny_config.copy_and_resolve_references()
  config.optim.ema_decay = 0.9
  trainer = train.Trainer(config, str(tmp_path / "fine_tune"))
  before = jax.tree.leaves(trainer.state["params"])
  trainer.initialize_from(str(tiny_trained_workdir))
  for got, want, fresh in zip(jax.tree.leaves(trainer.state["params"]),
                              jax.tree.leaves(trained), before):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(before, jax.tree.leaves(trained)))
  for got, want in zip(jax.tree.leaves(trainer.state["ema_params"]), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(got, want)
  config.model.d_model = 64  # Another architecture: a clear error, not a silent partial load.
  with pytest.raises(ValueError, match="init_from.*do not fit"):
    train.Trainer(config, str(tmp_path / "other")).initialize_from(str(tiny_trained_workdir))


def test_fine_tuning_can_add_the_modules_the_trained_model_lacks(tiny_config, tmp_path,
                                                                 monkeypatch):
  """A K = 0 model fine-tuned with retrieval: shared parameters load, new modules start afresh,
  and only when asked (config.train.init_new_modules)."""
  without = tiny_config.copy_and_resolve_references()
  without.model.num_references = 0
  source = train.Trainer(without, str(tmp_path / "k0")).state["params"]
  source = jax.tree.map(lambda x: np.asarray(x) + 1.0, jax.device_get(source))
  monkeypatch.setattr(inference, "trained_params", lambda _: source)
  config = tiny_config.copy_and_resolve_references()
  with pytest.raises(ValueError, match="init_new_modules"):
    train.Trainer(config, str(tmp_path / "strict")).initialize_from("k0")
  config.train.init_new_modules = True
  trainer = train.Trainer(config, str(tmp_path / "k2"))
  fresh = dict(nnx.to_flat_state(jax.device_get(trainer.state["params"])))
  trainer.initialize_from("k0")
  got = dict(nnx.to_flat_state(jax.device_get(trainer.state["params"])))
  loaded = dict(nnx.to_flat_state(source))
  assert got.keys() - loaded.keys(), "the test needs modules the K = 0 model lacks"
  for path, value in got.items():
    want = loaded[path] if path in loaded else fresh[path]
    np.testing.assert_array_equal(np.asarray(value.value), np.asarray(want.value), str(path))


class _JaxConfig:
  """Stands in for jax.config: records what the compile-cache functions set."""

  def __init__(self):
    self.jax_compilation_cache_dir = None
    self.updates = {}

  def update(self, name, value):
    self.updates[name] = value
    setattr(self, name, value)


def _fresh_config(monkeypatch) -> _JaxConfig:
  config = _JaxConfig()
  monkeypatch.setattr(inference, "jax", types.SimpleNamespace(config=config))
  monkeypatch.setattr(inference, "_compile_cache_chosen", False)
  return config


def test_the_compile_cache_is_on_by_default_movable_and_can_be_turned_off(monkeypatch, tmp_path):
  for name in ("PROCROP_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("PROCROP_CACHE_DIR", str(tmp_path))
  config = _fresh_config(monkeypatch)
  inference.use_default_compile_cache()  # What a Predictor does.
  assert config.jax_compilation_cache_dir == str(tmp_path / "jax")
  assert config.updates["jax_persistent_cache_min_compile_time_secs"] == 0.0
  assert config.updates["jax_persistent_cache_min_entry_size_bytes"] == 0

  monkeypatch.setenv("PROCROP_COMPILE_CACHE", str(tmp_path / "elsewhere"))
  config = _fresh_config(monkeypatch)
  inference.use_default_compile_cache()
  assert config.jax_compilation_cache_dir == str(tmp_path / "elsewhere")

  monkeypatch.setenv("PROCROP_COMPILE_CACHE", "")
  config = _fresh_config(monkeypatch)
  inference.use_default_compile_cache()
  assert config.jax_compilation_cache_dir is None and not config.updates

  monkeypatch.delenv("PROCROP_COMPILE_CACHE")
  config = _fresh_config(monkeypatch)
  inference.use_compile_cache("")  # --compile-cache '': a Predictor built later keeps it off.
  inference.use_default_compile_cache()
  assert config.jax_compilation_cache_dir is None and not config.updates
