"""Search: exact results, exclusion of ids, save/load, empty databases."""

import numpy as np
import pytest

from procrop_jax.retrieval import index as index_lib
from tests.conftest import requires_scann

SCANN = pytest.param("scann", marks=requires_scann)
BRUTE_FORCE = pytest.param("brute_force", marks=requires_scann)


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, dim, clusters=20, seed=0):
  """Unit vectors around `clusters` fixed centres (the same for every seed)."""
  centres = _unit(np.random.default_rng(1234).standard_normal((clusters, dim)))
  rng = np.random.default_rng(seed)
  return _unit(centres[rng.integers(0, clusters, n)] + 0.15 * rng.standard_normal((n, dim)))


def _full_sort(db, queries, k, exclude=None):
  scores = queries @ db.T
  if exclude is not None:
    for i, e in enumerate(exclude):
      scores[i, list(e)] = -np.inf
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("n,k", [(7, 3), (300, 10), (20_000, 5)])  # 20K: the grouped partial sort.
def test_exact_search_matches_full_sort(n, k):
  db = _clustered(n, 24)
  queries = _clustered(50, 24, seed=1)
  rows, scores = index_lib.exact_search(db, queries, k, row_block=8192)
  np.testing.assert_array_equal(rows, _full_sort(db, queries, k))
  np.testing.assert_allclose(scores, np.take_along_axis(queries @ db.T, rows, 1), rtol=1e-5)
  assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_search_pads_when_database_is_small():
  db = _clustered(3, 8)
  rows, scores = index_lib.exact_search(db, db, 5)
  assert rows.shape == (3, 5)
  assert np.all(rows[:, 3:] == -1) and np.all(np.isneginf(scores[:, 3:]))
  np.testing.assert_array_equal(rows[:, 0], [0, 1, 2])


@pytest.mark.parametrize("method", ["exact", BRUTE_FORCE])
def test_small_database_search_is_exact(method):
  db = _clustered(500, 32)
  queries = _clustered(40, 32, seed=2)
  index = index_lib.build_index(db, method=method)
  rows, _ = index.search(queries, 10)
  np.testing.assert_array_equal(rows, _full_sort(db, queries, 10))


@requires_scann
def test_auto_picks_brute_force_for_small_sets():
  assert index_lib.build_index(_clustered(100, 8)).method == "brute_force"


@requires_scann
def test_scann_tree_ah_has_high_recall():
  db = _clustered(30_000, 32)
  queries = _clustered(200, 32, seed=3)
  index = index_lib.build_index(db, method="scann")
  rows, _ = index.search(queries, 10)
  truth = _full_sort(db, queries, 10)
  recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(rows, truth)])
  assert recall >= 0.97, recall


@pytest.mark.parametrize("method", ["exact", BRUTE_FORCE, SCANN])
def test_excluded_rows_are_never_returned(method):
  db = _clustered(25_000 if method == "scann" else 400, 16)
  queries = db[:30]  # Each query is a database row: without exclusion it finds itself first.
  exclude = [[i, (i * 7 + 1) % len(db)] for i in range(30)]
  index = index_lib.build_index(db, method=method)
  rows, _ = index.search(queries, 8, exclude_rows=exclude)
  for r, e in zip(rows, exclude):
    assert not set(r) & set(e)
    assert np.all(r >= 0)
  if method != "scann":  # Exact searchers give exactly the best non-excluded rows.
    np.testing.assert_array_equal(rows, _full_sort(db, queries, 8, exclude))


@requires_scann
def test_exclusion_leaves_fewer_rows_than_k_in_a_tiny_database():
  db = _clustered(4, 8)
  index = index_lib.build_index(db, method="brute_force")
  rows, scores = index.search(db[:2], 4, exclude_rows=[[0], [0, 1]])
  assert set(rows[0][:3]) == {1, 2, 3} and rows[0][3] == -1
  assert set(rows[1][:2]) == {2, 3} and np.all(rows[1][2:] == -1)
  assert np.all(np.isneginf(scores[rows < 0]))


class _ShortIndex(index_lib.ExactIndex):
  """An approximate searcher that finds only 2 rows per query (leaves too small)."""

  def _search(self, queries, k):
    rows, scores = super()._search(queries, k)
    rows[:, 2:], scores[:, 2:] = -1, -np.inf
    return rows, scores


def test_short_approximate_results_fall_back_to_exact_search():
  db = _clustered(200, 16)
  rows, _ = _ShortIndex(db).search(db[:5], 6, exclude_rows=[[i] for i in range(5)])
  np.testing.assert_array_equal(rows, _full_sort(db, db[:5], 6, [[i] for i in range(5)]))


@pytest.mark.parametrize("method", ["exact", BRUTE_FORCE, SCANN])
def test_save_load_gives_identical_results(method, tmp_path):
  db = _clustered(25_000 if method == "scann" else 300, 16)
  queries = _clustered(64, 16, seed=4)
  index = index_lib.build_index(db, method=method)
  before = index.search(queries, 10, exclude_rows=[[1]] * 64)
  index.save(tmp_path / "index")
  loaded = index_lib.load_index(tmp_path / "index", db)
  after = loaded.search(queries, 10, exclude_rows=[[1]] * 64)
  assert loaded.method == index.method
  np.testing.assert_array_equal(before[0], after[0])
  np.testing.assert_allclose(before[1], after[1])


def test_empty_database_is_a_clear_error():
  with pytest.raises(ValueError, match="empty database"):
    index_lib.build_index(np.zeros((0, 8), np.float32))
  with pytest.raises(ValueError, match="empty database"):
    index_lib.build_index(np.zeros((0, 8), np.float32), method="exact")


def test_query_dimension_is_checked():
  index = index_lib.build_index(_clustered(20, 8), method="exact")
  with pytest.raises(ValueError, match=r"queries must be \[Q, 8\]"):
    index.search(np.zeros((2, 9), np.float32), 3)


@requires_scann
def test_an_index_with_a_pickled_docid_file_is_refused_without_running_it(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  db = _clustered(300, 16)
  index_lib.build_index(db, method="brute_force").save(tmp_path / "index")
  marker = tmp_path / "pwned"

  class Payload:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  scann_dirs = [p for p in (tmp_path / "index").iterdir() if p.is_dir()]
  assert len(scann_dirs) == 1
  (scann_dirs[0] / "scann_docids.pkl").write_bytes(pickle.dumps(Payload()))
  with pytest.raises(ValueError, match="scann_docids.pkl"):
    index_lib.load_index(tmp_path / "index", db)
  assert not marker.exists()


class TestWithoutScann:
  """ScaNN is an optional extra (Linux x86-64 only): without it the search is exact."""

  @pytest.fixture(autouse=True)
  def _no_scann(self, monkeypatch):
    # None in sys.modules makes `import scann` raise ImportError, as on a machine without it.
    monkeypatch.setitem(__import__("sys").modules, "scann", None)

  def test_auto_falls_back_to_exact_search(self):
    db = _clustered(300, 16)
    queries = _clustered(20, 16, seed=5)
    index = index_lib.build_index(db, method="auto")
    assert index.method == "exact"
    rows, _ = index.search(queries, 5, exclude_rows=[[0]] * 20)
    np.testing.assert_array_equal(rows, _full_sort(db, queries, 5, [[0]] * 20))

  @pytest.mark.parametrize("method", ["brute_force", "scann"])
  def test_asking_for_scann_by_name_says_how_to_install_it(self, method):
    with pytest.raises(ImportError, match=r"pip install 'procrop_jax\[scann\]'"):
      index_lib.build_index(_clustered(50, 8), method=method)

  def test_a_saved_scann_index_loads_as_exact_search(self, tmp_path, monkeypatch):
    db = _clustered(300, 16)
    queries = _clustered(20, 16, seed=6)
    # What a machine with ScaNN saved (brute force: the same neighbours as exact search).
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "index.json").write_text('{"method": "brute_force", "params": {}}')
    loaded = index_lib.load_index(tmp_path / "index", db)
    assert loaded.method == "exact"
    np.testing.assert_array_equal(loaded.search(queries, 5)[0], _full_sort(db, queries, 5))



def test_no_module_imports_scann_at_import_time():
  """Only index.py's functions import scann, so everything else works without the extra."""
  import ast  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO_ROOT  # pylint: disable=g-import-not-at-top
  for path in (REPO_ROOT / "procrop_jax").rglob("*.py"):
    for node in ast.parse(path.read_text()).body:  # Module level only.
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.split(".")[0] == "scann" for n in names), path
