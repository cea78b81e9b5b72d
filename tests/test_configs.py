"""Every config loads, documents its command, and names benchmarks that exist."""

import importlib
import pathlib

import pytest

from procrop_jax import evaluate
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_is_consistent(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  if name == "benchmark":  # The shared base of the benchmark configs is not run on its own.
    return
  assert f"--config=configs/{name}.py" in module.__doc__
  assert config.eval.best_benchmark in config.eval.benchmarks
  for benchmark in config.eval.benchmarks.values():
    evaluate.parse_protocols(benchmark["protocols"])
  # Embeddings average the reference-token grid down to the embedding grid.
  assert config.retrieval.tokens_grid % config.retrieval.embedding_grid == 0


def test_unknown_protocol_is_refused_with_the_choices():
  with pytest.raises(ValueError, match="iou, proposal, ranking"):
    evaluate.parse_protocols("iou,bogus")


def test_result_file_names_are_filesystem_safe():
  assert evaluate.result_filename("fcdb", "train[85%:]") == "fcdb_train_85pct_.json"
  assert pathlib.Path(evaluate.result_filename("gaicd", "test")).name == "gaicd_test.json"
