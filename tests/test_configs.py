"""Every config loads, documents its command, and names benchmarks that exist."""

import importlib
import pathlib

import pytest

from procrop_jax import evaluate
from procrop_jax import train
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_is_consistent(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  if name == "benchmark":  # The shared base of the benchmark configs is not run on its own.
    return
  assert f"--config=configs/{name}.py" in module.__doc__
  # A config with no benchmark (CAD pretraining that keeps its final step) picks no checkpoint.
  assert not config.eval.benchmarks or config.eval.best_benchmark in config.eval.benchmarks
  for benchmark in config.eval.benchmarks.values():
    evaluate.parse_protocols(benchmark["protocols"])
  # Embeddings average the reference-token grid down to the embedding grid.
  assert config.retrieval.tokens_grid % config.retrieval.embedding_grid == 0
  # One training input (a config that enables two is refused before training).
  assert train.input_name(config) in ("feature_cache", "canvas_cache", "tf.data")


def test_the_accelerator_recipes_train_from_the_canvas_cache_and_the_cpu_ones_do_not():
  for name in ("fcdb", "fcdb_gpu8", "fcdb_gpu_multihost", "fcdb_tpu_v5e"):
    assert train.input_name(importlib.import_module(f"configs.{name}").get_config()) == (
        "canvas_cache"), name
  for name in ("fcdb_cpu", "fcdb_pro_cpu", "cad_fcdb_cpu", "cad_pro_cpu"):
    assert train.input_name(importlib.import_module(f"configs.{name}").get_config()) == (
        "feature_cache"), name


def test_two_training_inputs_are_refused():
  from configs import fcdb_cpu  # pylint: disable=g-import-not-at-top
  config = fcdb_cpu.get_config()
  config.data.canvas_cache.enabled = True
  with pytest.raises(ValueError, match="choose one"):
    train.input_name(config)


def test_unknown_protocol_is_refused_with_the_choices():
  with pytest.raises(ValueError, match="iou, proposal, ranking"):
    evaluate.parse_protocols("iou,bogus")


def test_result_file_names_are_filesystem_safe():
  assert evaluate.result_filename("fcdb", "train[85%:]") == "fcdb_train_85pct_.json"
  assert pathlib.Path(evaluate.result_filename("gaicd", "test")).name == "gaicd_test.json"


@pytest.mark.parametrize("name, devices, per_device", [
    ("fcdb_gpu8", 8, 16), ("fcdb_gpu_multihost", 32, 8), ("fcdb_tpu_v5e", 16, 16)])
def test_cluster_configs_split_their_batches_over_their_devices(name, devices, per_device):
  import math  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config()
  shape = [devices // math.prod(s for s in config.mesh.shape if s != -1) if s == -1 else s
           for s in config.mesh.shape]
  assert math.prod(shape) == devices
  data = shape[list(config.mesh.axes).index("data")]
  assert config.train.batch_size == data * per_device
  assert config.eval.batch_size % data == 0
  # The fcdb.py recipe, in as many epochs: steps x batch unchanged.
  from configs import fcdb  # pylint: disable=g-import-not-at-top
  base = fcdb.get_config()
  assert (config.train.num_steps * config.train.batch_size
          == base.train.num_steps * base.train.batch_size)
  assert config.data.dataset == "fcdb" and config.model.to_dict() == base.model.to_dict()


def test_the_8_gpu_mesh_builds_on_8_devices():
  import jax  # pylint: disable=g-import-not-at-top
  from configs import fcdb_gpu8  # pylint: disable=g-import-not-at-top
  from procrop_jax import sharding  # pylint: disable=g-import-not-at-top
  config = fcdb_gpu8.get_config()
  mesh = sharding.create_mesh(config.mesh.shape, config.mesh.axes, jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 8, "model": 1}
