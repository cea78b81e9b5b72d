"""CAD generation and the procrop_cad build through Apache Beam (DirectRunner) match the local ones."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from procrop_jax import photos as photos_lib
from procrop_jax.cad import generate
from procrop_jax.datasets import procrop_cad

beam = pytest.importorskip(
    "apache_beam", reason="apache-beam is not installed (the [beam] or [test] extra)")
from procrop_jax.cad import generate_beam  # pylint: disable=g-import-not-at-top,wrong-import-position

# Two of scikit-image's photos, small: the point is the same files, not their size.
SETTINGS = dict(variants_per_photo=2, seed=3, max_side=96)
DIRECT = ["--runner=DirectRunner"]


@pytest.fixture(name="photos")
def fixture_photos(tmp_path):
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not a jpeg")  # Fails in both paths, and must be recorded alike.
  return [*photos_lib.skimage_photo_paths()[:2], bad]


def _files(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_beam_generation_writes_the_files_of_the_local_path(tmp_path, photos):
  local = generate.generate_cad(photos, tmp_path / "local", progress=False, **SETTINGS)
  beamed = generate_beam.generate_cad_beam(photos, tmp_path / "beam", beam_options=DIRECT,
                                           **SETTINGS)
  assert (beamed.written, beamed.kept, beamed.errors) == (4, 0, local.errors)
  assert beamed.failed_photos == [str(photos[-1])]
  # Same names and bytes: images, annotations, the marker and the failure record.
  local_files, beam_files = _files(tmp_path / "local"), _files(tmp_path / "beam")
  assert sorted(beam_files) == sorted(local_files)
  assert len([f for f in beam_files if f.startswith("images/")]) == 4
  assert beam_files == local_files
  assert json.loads(beam_files[generate.FAILURES])["errors"] == local.errors

  # Beam completes what is missing and keeps the rest, like the local path.
  (tmp_path / "beam" / "annotations" / f"{photos_lib.photo_ids(photos)[0]}_1.txt").unlink()
  again = generate_beam.generate_cad_beam(photos, tmp_path / "beam", beam_options=DIRECT,
                                          **SETTINGS)
  assert (again.written, again.kept) == (1, 3)
  assert _files(tmp_path / "beam") == local_files


def _read_stored(builder) -> list[dict]:
  """Every example in stored order, the image as its encoded bytes."""
  source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  return [source[i] for i in range(len(source))]


def test_beam_build_stores_the_examples_of_the_local_build(tmp_path, photos):
  manual = tmp_path / "manual"
  generate.generate_cad(photos[:2], manual, progress=False, **SETTINGS)
  # An image without its annotation is skipped and counted by both builds.
  stem = f"{photos_lib.photo_ids(photos[:2])[1]}_0"
  (manual / "annotations" / f"{stem}.txt").unlink()

  local = procrop_cad.ProcropCad(data_dir=str(tmp_path / "local"))
  local.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  beamed = procrop_cad.ProcropCad(data_dir=str(tmp_path / "beam"))
  beamed.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual),
      beam_options=beam.options.pipeline_options.PipelineOptions(DIRECT)))
  assert beamed.uses_beam and not local.uses_beam

  local_examples, beam_examples = _read_stored(local), _read_stored(beamed)
  assert len(beam_examples) == len(local_examples) == 3
  # The same examples in the same (photo-grouped) order, the image bytes included.
  grouped = [e["stem"].encode() for e in procrop_cad.list_examples(manual) if e["stem"] != stem]
  assert [ex["image_id"] for ex in local_examples] == grouped
  assert [ex["image_id"] for ex in beam_examples] == grouped
  for ours, theirs in zip(beam_examples, local_examples):
    assert ours.keys() == theirs.keys()
    for key in ours:
      np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  # The same counts, stored in metadata.json, and no leftover file beside the split.
  report = tfds.builder("procrop_cad", data_dir=str(tmp_path / "beam")).info.metadata
  assert report["build_report"] == local.info.metadata["build_report"]
  assert report["build_report"]["train"]["skipped"] == {"missing_annotation": 1}
  assert not list(pathlib.Path(beamed.data_dir).glob("*.build_report.json"))
