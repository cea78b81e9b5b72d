"""Runs report themselves: the config checked at resume, hparams in TensorBoard, a profile."""

import json
import shutil

import pytest

from procrop_jax import train
from tests.test_main import run_main


def _saved(config) -> dict:
  return json.loads(json.dumps(config.copy_and_resolve_references().to_dict(), default=list))


def test_a_changed_model_field_is_one_error_naming_every_field(tiny_config):
  saved = _saved(tiny_config)
  config = tiny_config.copy_and_resolve_references()
  config.model.d_model = 64
  config.data.image_size = 96
  config.optim.learning_rate = 1.0
  with pytest.raises(train.ConfigChangedError) as raised:
    train.check_resumed_config(saved, config, source="w/config.json")
  message = str(raised.value)
  assert "\n" not in message
  assert "model.d_model 32 -> 64" in message and "data.image_size 128 -> 96" in message
  assert "optim" not in message and "w/config.json" in message


def test_a_changed_schedule_is_a_warning(tiny_config):
  saved = _saved(tiny_config)
  config = tiny_config.copy_and_resolve_references()
  config.optim.learning_rate = 1.0
  config.train.num_steps = 100
  config.train.profile_steps = (1, 2)  # Profiling a resumed run changes nothing.
  config.data.data_dir = "/elsewhere"  # Neither the model nor the schedule.
  assert train.check_resumed_config(saved, config) == ["optim.learning_rate",
                                                       "train.num_steps"]
  # A field the run's config.json predates is no change.
  del saved["train"]["profile_steps"]
  assert train.check_resumed_config(saved, tiny_config) == []


@pytest.fixture
def trained_copy(tiny_trained_workdir, tmp_path):
  """A private copy of the 1-step tiny run (its checkpoint and config.json)."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_trained_workdir, workdir, ignore=shutil.ignore_patterns("train.lock"))
  return workdir


def test_resuming_with_another_model_stops_before_training(tiny_config, trained_copy):
  before = (trained_copy / "config.json").read_text()
  config = tiny_config.copy_and_resolve_references()
  config.model.num_queries = 16
  config.train.num_steps = 2
  with pytest.raises(train.ConfigChangedError, match=r"model.num_queries 8 -> 16"):
    train.train_and_evaluate(config, str(trained_copy))
  assert (trained_copy / "config.json").read_text() == before  # Still the checkpoints' config.


def test_main_says_it_in_one_line(trained_copy):
  result = run_main("--config=configs/testing.py", f"--workdir={trained_copy}",
                    "--config.model.d_model=64")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "model.d_model 32 -> 64" in last


@pytest.mark.parametrize("steps", [(3,), (2, 1), (-1, 2), ("a", 2)])
def test_bad_profile_steps_are_refused(steps):
  with pytest.raises(ValueError, match="profile_steps"):
    train._StepProfiler(steps, "/tmp/unused")  # pylint: disable=protected-access


@pytest.mark.slow
def test_a_run_writes_hparams_and_the_profile_it_was_asked_for(tiny_config, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = tiny_config.copy_and_resolve_references()
  config.train.num_steps = 3
  config.train.checkpoint_every = 3
  config.train.profile_steps = (1, 3)
  train.train_and_evaluate(config, str(tmp_path))

  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0

  plugins = set()
  text = b""
  for path in tmp_path.glob("events.out.tfevents.*"):
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        plugins.add(value.metadata.plugin_data.plugin_name)
        text += value.metadata.plugin_data.content
  assert "hparams" in plugins
  assert b"model.d_model" in text and b"optim.learning_rate" in text


def test_the_default_config_profiles_nothing():
  from configs import default  # pylint: disable=g-import-not-at-top
  assert tuple(default.get_config().train.profile_steps) == ()
