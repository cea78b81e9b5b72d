"""CAD generation shared by the processes of a multi-process run: each makes its slice."""

import json
import os
import pathlib
import subprocess
import sys

from PIL import Image
import pytest

from configs import testing
from procrop_jax import photos as photos_lib
from procrop_jax.cad import generate
from tests.conftest import REPO_ROOT, free_port
from tests.test_cad import smooth_photo

SETTINGS = dict(variants_per_photo=2, max_side=64, progress=False)


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  """Every file below `folder` (relative path -> bytes)."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


@pytest.fixture(name="photos")
def fixture_photos(tmp_path):
  paths = []
  for i in range(5):
    path = tmp_path / "photos" / f"photo_{i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_photo(40 + 10 * i, 60, i)).save(path)
    paths.append(path)
  return paths


def test_process_share_splits_the_sorted_photos_among_the_processes():
  paths = [f"p/{name}.jpg" for name in "edcbaf"]  # Listed out of order.
  shares = [generate.process_share(paths, p, 4) for p in range(4)]
  # Every 4th photo of the sorted list (a b c d e f), whatever order they were listed in.
  assert [sorted(paths[i][2] for i in share) for share in shares] == [
      ["a", "e"], ["b", "f"], ["c"], ["d"]]
  assert generate.process_share(paths, 0, 1) == list(range(6))
  with pytest.raises(ValueError, match="process_index"):
    generate.process_share(paths, 2, 2)


def test_shares_made_apart_are_the_single_process_set(tmp_path, photos):
  generate.generate_cad(photos, tmp_path / "one", **SETTINGS)
  two = tmp_path / "two"
  reports = [generate.generate_cad(photos[::-1], two, process_index=p, process_count=2,
                                   **SETTINGS) for p in range(2)]
  assert [r.photos for r in reports] == [3, 2]
  assert [r.written for r in reports] == [6, 4]
  generate.merge_failure_parts(two, process_count=2, allow_failures=False)
  one_files, two_files = _files(tmp_path / "one"), _files(two)
  # The same variants, byte for byte; no failure parts are left. The marker names the photos
  # in the order they were given, so it alone differs.
  del one_files[generate.MARKER], two_files[generate.MARKER]
  assert one_files == two_files


def test_the_failures_of_all_shares_are_recorded_together(tmp_path, photos):
  for path in (photos[0], photos[3]):  # One photo of each share is unreadable.
    path.write_bytes(b"not an image")
  for p in range(2):
    report = generate.generate_cad(photos, tmp_path, process_index=p, process_count=2,
                                   **SETTINGS)
    assert report.failed_photos == [str(photos[3 * p])]
  assert generate.read_failures(tmp_path) is None  # Not before every share is done.
  errors = generate.merge_failure_parts(tmp_path, process_count=2, allow_failures=False)
  assert sorted(errors) == [str(photos[0]), str(photos[3])]
  record = generate.read_failures(tmp_path)
  assert record["photos"] == 5 and sorted(record["errors"]) == sorted(errors)
  assert not list(tmp_path.glob(generate.FAILURE_PARTS))
  with pytest.raises(generate.IncompleteCADError, match="2 of 5 photos failed"):
    generate.check_complete(tmp_path)


def test_a_share_that_left_no_record_stops_the_merge(tmp_path, photos):
  generate.generate_cad(photos, tmp_path, process_index=0, process_count=2, **SETTINGS)
  with pytest.raises(generate.IncompleteCADError,
                     match=r"missing: cad_failures\.part-00001-of-00002\.json.*shared by all"):
    generate.merge_failure_parts(tmp_path, process_count=2, allow_failures=False)


def _run_processes(tmp_path, sections, name):
  config = tmp_path / f"{name}.json"
  config.write_text(json.dumps(sections))
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  port = free_port()
  workers = [subprocess.Popen(
      [sys.executable, str(REPO_ROOT / "tests" / "cad_worker.py"), str(i), "2", str(port),
       str(config), str(tmp_path / name)], cwd=REPO_ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for worker in workers:
    output, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, output
  return [json.loads((tmp_path / f"{name}.p{i}.json").read_text()) for i in range(2)]


def test_two_processes_generate_their_shares_and_build_once(tmp_path):
  config = testing.get_config()
  config.cad.max_side = 64
  generate.generate_cad("skimage", tmp_path / "one", variants_per_photo=2, max_side=64,
                        seed=config.seed, progress=False)
  # Two processes joined by jax.distributed (tests/cad_worker.py), as the hosts of a training
  # run, with the manual_dir and data_dir in one folder that both see.
  sections = {"data": dict(manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds")),
              "cad": config.cad.to_dict()}
  hosts = _run_processes(tmp_path, sections, "shared")

  # JAX itself saw two processes: ensure_dataset took the multi-process path.
  assert [(h["process_index"], h["process_count"]) for h in hosts] == [(0, 2), (1, 2)]
  assert all("error" not in h for h in hosts), hosts
  ids = photos_lib.photo_ids(photos_lib.skimage_photo_paths())
  generated = [h["generated"] for h in hosts]
  assert [len(generated[0]), len(generated[1])] == [5, 4]  # Each process made its share...
  assert sorted(generated[0] + generated[1]) == sorted(ids)
  # ... and together the single-process set, byte for byte, with no failure parts left.
  assert _files(tmp_path / "manual") == _files(tmp_path / "one")
  assert [h["built"] for h in hosts] == [True, False]  # Built once, by process 0.
  names = {f"{i}_{k}" for i in ids for k in range(2)}
  assert set(hosts[0]["examples"]) == names
  assert hosts[0]["examples"] == hosts[1]["examples"]  # Both read the same examples.

  # Hosts that do not share the manual_dir: process 0 names what it cannot see, and every
  # process stops (none waits forever for another) without building a partial set.
  sections["data"].update(manual_dir=str(tmp_path / "apart_{process}"),
                          data_dir=str(tmp_path / "tfds_apart"))
  hosts = _run_processes(tmp_path, sections, "apart")
  assert hosts[0]["error"].startswith("IncompleteCADError")
  assert "cad_failures.part-00001-of-00002.json" in hosts[0]["error"]
  assert hosts[1]["error"].startswith("OtherProcessFailedError: process 0 of 2")
  assert not any(h["built"] for h in hosts)
