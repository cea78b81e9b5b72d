"""exported_passes.py: a pass exported once is read back by a later process, keyed by what it
depends on; an unreadable file is exported again; the Predictor's crops do not change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from procrop_jax import exported_passes
from procrop_jax import inference
from procrop_jax import model_zoo


def _step():
  return jax.jit(lambda state, batch: {"y": batch["x"] @ state["w"] + state["b"]})


def _inputs(rows=3):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  return state, {"x": jnp.ones((rows, 2))}


def test_a_pass_is_exported_once_and_read_back_by_a_new_cache(tmp_path, monkeypatch):
  state, batch = _inputs()
  want = _step()(state, batch)["y"]
  first = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  np.testing.assert_array_equal(first.get("propose", _step(), state, batch)(state, batch)["y"],
                                want)
  files = list((tmp_path / exported_passes.FOLDER).iterdir())
  assert len(files) == 1 and files[0].suffix == exported_passes.SUFFIX

  def no_export(*args, **kwargs):
    raise AssertionError("exported again instead of read back")
  monkeypatch.setattr(jax.export, "export", no_export)
  later = exported_passes.ExportedPasses(tmp_path, {"model": "m"})  # Another process's.
  np.testing.assert_array_equal(later.get("propose", _step(), state, batch)(state, batch)["y"],
                                want)
  assert len(later) == 1


def test_the_key_follows_shapes_options_and_model_but_not_values(tmp_path):
  passes = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  state, batch = _inputs()
  key = passes.key("propose", state, batch)
  assert passes.key("propose", jax.tree.map(lambda v: v + 1, state), batch) == key
  assert passes.key("propose", state, _inputs(rows=4)[1]) != key
  assert passes.key("score", state, batch) != key
  other = exported_passes.ExportedPasses(tmp_path, {"model": "n"})
  assert other.key("propose", state, batch) != key


def test_an_unreadable_file_is_exported_again(tmp_path):
  state, batch = _inputs()
  passes = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  passes.get("propose", _step(), state, batch)
  path = next((tmp_path / exported_passes.FOLDER).iterdir())
  path.write_bytes(b"truncated")
  again = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  out = again.get("propose", _step(), state, batch)(state, batch)["y"]
  np.testing.assert_array_equal(out, _step()(state, batch)["y"])
  assert path.read_bytes() != b"truncated"  # Replaced by a good one.


def test_the_predictor_crops_the_same_through_exported_passes(tmp_path, monkeypatch):
  from configs import testing  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.model.num_references = 0
  model = model_zoo.create_model(config)
  images = np.random.default_rng(0).random((2, 128, 96, 3), np.float32)
  valid = np.array([[1.0, 1.0], [0.8, 1.0]], np.float32)
  monkeypatch.setattr(inference, "exported_folder", lambda: "")
  one = jax.devices()[:1]  # Exported passes are single-device (the tests run several).
  plain = inference.Predictor(model, config, source="random", devices=one).predict(images, valid)
  monkeypatch.setattr(inference, "exported_folder", lambda: str(tmp_path))
  for _ in range(2):  # Exported, then read back by a new predictor.
    predictor = inference.Predictor(model, config, source="random", devices=one)
    got = predictor.predict(images, valid)
    for name in ("boxes", "scores"):
      np.testing.assert_allclose(got[name], plain[name], atol=1e-6)
    assert predictor.compilations() == 1
  assert len(list((tmp_path / exported_passes.FOLDER).iterdir())) == 1
