"""exported_passes.py: a pass exported once is read back by a later process, keyed by what it
depends on; an unreadable file is exported again; the Predictor's crops do not change, and a
shipped model's later predictor runs without building the model."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from procrop_jax import artifacts
from procrop_jax import exported_passes
from procrop_jax import inference
from procrop_jax import model_zoo


def _step():
  return jax.jit(lambda state, batch: {"y": batch["x"] @ state["w"] + state["b"]})


def _inputs(rows=3):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  return state, {"x": jnp.ones((rows, 2))}


def _specs(state):
  return exported_passes.leaf_specs(
      [(str(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]])


def _get(passes, state, batch, what="propose"):
  """`passes.get` as the Predictor calls it: a function of (leaves, batch)."""
  call = passes.get(what, _specs(state), batch, lambda: (_step(), state))
  return lambda state, batch: call(jax.tree.leaves(state), batch)


def test_a_pass_is_exported_once_and_read_back_by_a_new_cache(tmp_path, monkeypatch):
  state, batch = _inputs()
  want = _step()(state, batch)["y"]
  first = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  np.testing.assert_array_equal(_get(first, state, batch)(state, batch)["y"], want)
  files = list((tmp_path / exported_passes.FOLDER).iterdir())
  assert len(files) == 1 and files[0].suffix == exported_passes.SUFFIX

  def no_export(*args, **kwargs):
    raise AssertionError("exported again instead of read back")
  monkeypatch.setattr(jax.export, "export", no_export)
  later = exported_passes.ExportedPasses(tmp_path, {"model": "m"})  # Another process's.
  np.testing.assert_array_equal(_get(later, state, batch)(state, batch)["y"], want)
  assert len(later) == 1


def _jit_options(monkeypatch) -> list:
  """The `compiler_options` of every jax.jit made from now on, in order."""
  options, real_jit = [], jax.jit

  def jit(fun, **kwargs):
    options.append(kwargs.get("compiler_options"))
    return real_jit(fun, **kwargs)
  monkeypatch.setattr(jax, "jit", jit)
  return options


@pytest.mark.parametrize("library_fusions", [True, False])
def test_calls_into_passes_compile_with_their_options_on_cpu(tmp_path, monkeypatch,
                                                             library_fusions):
  """On CPU the calls compile with XLA's loop emitters (a third of the compile memory for the
  cropper's passes) at LLVM's level 1; the face network's passes also leave YNNPACK out (XLA's
  own convolutions are faster there). The options reach the call's jit, XLA accepts them, and
  the step inside, itself jitted, is exported as before."""
  assert jax.default_backend() == "cpu"
  want = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
  if not library_fusions:
    want["xla_cpu_experimental_ynn_fusion_type"] = ""
  assert exported_passes.compiler_options(library_fusions=library_fusions) == want
  options = _jit_options(monkeypatch)
  state, batch = _inputs()
  passes = exported_passes.ExportedPasses(
      tmp_path, {"model": "m"}, options=None if library_fusions else want)
  got = _get(passes, state, batch)(state, batch)["y"]
  np.testing.assert_allclose(got, batch["x"] @ state["w"] + state["b"], rtol=1e-6)
  assert options[-1] == want


def test_threads_asking_for_one_pass_at_once_export_it_once(tmp_path):
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  state, batch = _inputs()
  passes = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  made, both_asked = [], threading.Barrier(2)

  def ask():
    both_asked.wait()
    return passes.get("propose", _specs(state), batch,
                      lambda: (made.append(1), (_step(), state))[1])
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    calls = [f.result() for f in [pool.submit(ask) for _ in range(2)]]
  assert len(made) == 1 and calls[0] is calls[1]


def test_the_key_follows_shapes_options_and_model_but_not_values(tmp_path):
  passes = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  state, batch = _inputs()
  key = passes.key("propose", _specs(state), batch)
  assert passes.key("propose", _specs(jax.tree.map(lambda v: v + 1, state)), batch) == key
  assert passes.key("propose", _specs({**state, "b": jnp.ones(4)}), batch) != key
  assert passes.key("propose", _specs(state), _inputs(rows=4)[1]) != key
  assert passes.key("score", _specs(state), batch) != key
  other = exported_passes.ExportedPasses(tmp_path, {"model": "n"})
  assert other.key("propose", _specs(state), batch) != key


def test_an_unreadable_file_is_exported_again(tmp_path):
  state, batch = _inputs()
  passes = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  _get(passes, state, batch)
  path = next((tmp_path / exported_passes.FOLDER).iterdir())
  path.write_bytes(b"truncated")
  again = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  out = _get(again, state, batch)(state, batch)["y"]
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
  folder = tmp_path / exported_passes.FOLDER
  assert len(list(folder.glob("*" + exported_passes.SUFFIX))) == 1
  assert len(list(folder.glob("*.leaves.json"))) == 1


def _lowerings(fn) -> int:
  """How many jitted functions `fn()` lowers to MLIR (JAX logs each with log_compiles on)."""
  messages = []
  handler = logging.Handler()
  handler.emit = lambda record: messages.append(record.getMessage())
  logger = logging.getLogger("jax._src.dispatch")
  logger.addHandler(handler)
  try:
    with jax.log_compiles():
      fn()
  finally:
    logger.removeHandler(handler)
  return sum("to MLIR module conversion" in m for m in messages)


@pytest.mark.parametrize("cached, devices", [(True, 1), (False, 1), (False, 8)])
def test_output_shapes_are_predicts_and_its_lowering_is_reused(tmp_path, monkeypatch, cached,
                                                               devices):
  """`Predictor.output_shapes` traces and lowers a pass without running it; the first
  `predict` of those shapes then lowers nothing again (a predictor that did not ask does).
  With 8 devices the pass runs 8 rows: the shapes are still those of the 2 photos given."""
  from configs import testing  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.model.num_references = 0
  model = model_zoo.create_model(config)
  images = np.random.default_rng(0).random((2, 128, 96, 3), np.float32)
  valid = np.array([[1.0, 1.0], [0.8, 1.0]], np.float32)
  monkeypatch.setattr(inference, "exported_folder", lambda: str(tmp_path) if cached else "")
  assert len(jax.devices()) >= devices
  new = lambda: inference.Predictor(model, config, source="random",
                                    devices=jax.devices()[:devices])
  asked = new()
  shapes = asked.output_shapes(images, valid, keep_encoding=True)
  got = {}
  assert _lowerings(lambda: got.update(asked.predict(images, valid, keep_encoding=True))) == 0
  assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
      lambda v: (v.shape, v.dtype), got)
  assert asked.compilations() == 1
  assert _lowerings(lambda: new().predict(images, valid, keep_encoding=True)) >= 1


def test_the_leaf_order_is_kept_and_an_unreadable_one_is_ignored(tmp_path):
  state, _ = _inputs()
  passes = exported_passes.ExportedPasses(tmp_path, {"model": "m"})
  assert passes.read_specs() is None
  passes.write_specs(_specs(state))
  assert exported_passes.ExportedPasses(tmp_path, {"model": "m"}).read_specs() == _specs(state)
  assert exported_passes.ExportedPasses(tmp_path, {"model": "n"}).read_specs() is None
  next((tmp_path / exported_passes.FOLDER).glob("*.leaves.json")).write_text("[[1, 2")
  assert exported_passes.ExportedPasses(tmp_path, {"model": "m"}).read_specs() is None


@pytest.fixture(name="shipped")
def _shipped(tmp_path):
  """A shipped-model folder of a small random model, and its config."""
  from configs import testing  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.model.num_references = 0
  config.model.pretrained = False
  folder = model_zoo.export(model_zoo.create_model(config), config, tmp_path / "model",
                            dtype="float32")
  return folder, config


def test_a_shipped_model_predicts_later_without_building_the_model(shipped, tmp_path,
                                                                     monkeypatch):
  folder, _ = shipped
  images = np.random.default_rng(0).random((2, 128, 96, 3), np.float32)
  valid = np.array([[1.0, 1.0], [0.8, 1.0]], np.float32)
  one = jax.devices()[:1]
  monkeypatch.setattr(inference, "exported_folder", lambda: str(tmp_path / "cache"))
  first = inference.Predictor.from_pretrained(folder, devices=one).predict(images, valid)

  def no_build(*args, **kwargs):
    raise AssertionError("the model was built although its passes and leaves were kept")
  monkeypatch.setattr(model_zoo, "abstract_model", no_build)
  later = inference.Predictor.from_pretrained(folder, devices=one)  # Another process's.
  got = later.predict(images, valid)
  for name in ("boxes", "scores"):
    np.testing.assert_array_equal(got[name], first[name])


def test_a_shipped_model_that_does_not_fit_fails_when_loaded(shipped, tmp_path, monkeypatch):
  folder, _ = shipped
  one = jax.devices()[:1]
  monkeypatch.setattr(inference, "exported_folder", lambda: str(tmp_path / "cache"))
  inference.Predictor.from_pretrained(folder, devices=one).predict(
      np.zeros((1, 128, 128, 3), np.float32), np.ones((1, 2), np.float32))
  with np.load(folder / "params.npz") as data:
    arrays = {k: data[k] for k in data.files}
  name = sorted(arrays)[0]
  arrays[name] = np.zeros((3, 3), np.float32)
  np.savez(folder / "params.npz", **arrays)
  card = json.loads((folder / "model_card.json").read_text())
  card["params_sha256"] = artifacts.file_sha256(folder / "params.npz")  # Only the shape is off.
  (folder / "model_card.json").write_text(json.dumps(card))
  with pytest.raises(ValueError, match=f"mis-shaped: {name}"):  # Kept leaves: not built.
    inference.Predictor.from_pretrained(folder, devices=one)
