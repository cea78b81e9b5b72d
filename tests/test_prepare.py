"""Prepared datasets follow their sources: reused while unchanged, rebuilt or refused otherwise."""

import os
import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from configs import default
from procrop_jax.cad import generate
from procrop_jax.datasets import prepare
from procrop_jax.datasets import source_record


def _add_example(manual, stem, seed=0):
  """One CAD example (image and pseudo-label) in a procrop_cad manual directory."""
  (manual / "images").mkdir(parents=True, exist_ok=True)
  (manual / "annotations").mkdir(exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 255, (40, 50, 3), np.uint8)
  Image.fromarray(pixels).save(manual / "images" / f"{stem}.jpg")
  (manual / "annotations" / f"{stem}.txt").write_text("5 5 30 30\n")


def _config(tmp_path, manual_dir, cad_source=""):
  config = default.get_config()
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(manual_dir)
  config.cad.source = cad_source
  config.cad.variants_per_photo = 1
  config.cad.max_side = 64
  return config


def _prepare(config):
  return prepare.ensure_dataset(config.data, config.cad, seed=config.seed)


def _num_examples(builder):
  return builder.info.splits["train"].num_examples


def test_an_unchanged_source_reuses_the_build(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  _add_example(tmp_path / "cad_a", "a_0")
  config = _config(tmp_path, "cad_a")  # Relative: recorded as an absolute path.
  builder = _prepare(config)
  record = source_record.read(builder.data_dir)
  assert record["manual_dir"] == str(tmp_path / "cad_a")
  assert record["files"] == 2 and record["generation"] is None
  assert "Building" in capsys.readouterr().out
  assert _num_examples(_prepare(config)) == 1
  assert "Building" not in capsys.readouterr().out


def test_another_manual_dir_or_file_set_rebuilds(tmp_path, capsys):
  _add_example(tmp_path / "cad_a", "a_0")
  _add_example(tmp_path / "cad_b", "b_0")
  _add_example(tmp_path / "cad_b", "b_1", seed=1)
  assert _num_examples(_prepare(_config(tmp_path, tmp_path / "cad_a"))) == 1
  capsys.readouterr()

  builder = _prepare(_config(tmp_path, tmp_path / "cad_b"))
  assert _num_examples(builder) == 2
  out = capsys.readouterr().out
  assert f"it was built from {tmp_path / 'cad_a'} (2 files" in out
  assert f"the config names {tmp_path / 'cad_b'} (4 files" in out

  _add_example(tmp_path / "cad_b", "b_2", seed=2)  # Same folder, one more photo.
  assert _num_examples(_prepare(_config(tmp_path, tmp_path / "cad_b"))) == 3
  assert "Rebuilding" in capsys.readouterr().out


def test_a_build_without_a_record_is_rebuilt_once(tmp_path, capsys):
  _add_example(tmp_path / "cad_a", "a_0")
  config = _config(tmp_path, tmp_path / "cad_a")
  builder = _prepare(config)
  (pathlib.Path(builder.data_dir) / source_record.RECORD).unlink()  # As an older procrop_jax left it.
  capsys.readouterr()
  _prepare(config)
  assert "built from an unrecorded source (built by an older procrop_jax)" in (
      capsys.readouterr().out)
  _prepare(config)
  assert "Building" not in capsys.readouterr().out


def test_nothing_to_rebuild_from_keeps_its_own_build_and_refuses_another(tmp_path):
  manual = tmp_path / "cad_a"
  _add_example(manual, "a_0")
  builder = _prepare(_config(tmp_path, manual))
  # The raw files of the same folder are gone: the build is all there is.
  for path in sorted(manual.rglob("*"), reverse=True):
    path.rmdir() if path.is_dir() else path.unlink()
  assert _num_examples(_prepare(_config(tmp_path, manual))) == 1
  # Another folder with nothing in it: training on the old build would be the wrong data.
  with pytest.raises(prepare.SourceChangedError,
                     match=re.escape(f"built from {manual} (") + ".*" + re.escape(
                         f"the config names {tmp_path / 'missing'}, which has no files")):
    _prepare(_config(tmp_path, tmp_path / "missing"))
  assert builder.is_prepared()


def test_generation_parameters_rebuild_or_refuse(tmp_path, capsys):
  photos = tmp_path / "photos"
  photos.mkdir()
  for i in range(2):
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (60, 80, 3), np.uint8)).save(
        photos / f"p{i}.png")
  manual = tmp_path / "cad_generated"
  config = _config(tmp_path, manual, cad_source=str(photos))
  builder = _prepare(config)
  assert _num_examples(builder) == 2
  assert source_record.read(builder.data_dir)["generation"]["variants_per_photo"] == 1

  config.cad.variants_per_photo = 2  # More variants complete the set: rebuilt.
  capsys.readouterr()
  assert _num_examples(_prepare(config)) == 4
  assert '"variants_per_photo": 1' in capsys.readouterr().out

  config.cad.max_side = 48  # Would mix canvases of two sizes: refused, the build kept.
  with pytest.raises(generate.GenerationMismatchError, match='"max_side": 64.*"max_side": 48'):
    _prepare(config)
  config.cad.max_side = 64
  _prepare(config)
  assert "Building" not in capsys.readouterr().out


def test_the_same_files_under_new_times_keep_the_build(tmp_path, capsys):
  # A folder copied or synced without its files' times: same bytes, so no rebuild, and the
  # key that feature caches take from the build's source stays the same.
  manual = tmp_path / "cad_a"
  _add_example(manual, "a_0")
  config = _config(tmp_path, manual)
  builder = _prepare(config)
  record = source_record.read(builder.data_dir)
  assert record["content"] == source_record.content_fingerprint(str(manual))
  files = sorted(p for p in manual.rglob("*") if p.is_file())
  for i, path in enumerate(files):
    os.utime(path, ns=(10**18 + i, 10**18 + i))
  capsys.readouterr()
  builder = _prepare(config)
  assert "Building" not in capsys.readouterr().out
  refreshed = source_record.read(builder.data_dir)
  assert refreshed["fingerprint"] != record["fingerprint"]  # The next check is a stat again.
  assert source_record.cache_fingerprint(refreshed) == source_record.cache_fingerprint(record)

  annotation = manual / "annotations" / "a_0.txt"
  annotation.write_text("6 5 30 30\n")  # Same size, other bytes.
  _prepare(config)
  assert "Rebuilding" in capsys.readouterr().out
