"""CAD generation shared by the processes of a multi-process run: each makes its slice."""

import pathlib

from PIL import Image
import pytest

from procrop_jax.cad import generate
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
