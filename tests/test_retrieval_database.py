"""The reference database: exact search, exclusion of ids, save/load, metadata checks, errors."""

import json
import pathlib

import numpy as np
import pytest

from configs import testing
from procrop_jax import photos as photos_lib
from procrop_jax.retrieval import database as database_lib
from procrop_jax.retrieval import neighbors
from tests.conftest import HAS_SCANN, requires_scann

T, C = 4, 24  # 2x2 tokens of 24 channels: small stand-ins for 4x4 x 1280.


def _config():
  config = testing.get_config()
  config.retrieval.tokens_grid = 2
  config.retrieval.embedding_grid = 2
  config.retrieval.embedding_dim = 16
  return config


def _tokens(n, seed=0):
  rng = np.random.default_rng(seed)
  layouts = rng.random((8, T, C))  # Eight "compositions" the photos vary around.
  return (layouts[rng.integers(0, 8, n)] + 0.2 * rng.random((n, T, C))).astype(np.float16)


def _ids(n):
  return [f"photos/pro {i:03d}.jpg" for i in range(n)]


# ScaNN's brute force where the [scann] extra is installed, else the exact fallback.
_SEARCH = "brute_force" if HAS_SCANN else "exact"


def _database(n=60, method=_SEARCH):
  return database_lib.ReferenceDatabase.from_tokens(
      _ids(n), _tokens(n), metadata=database_lib.expected_metadata(_config()),
      index_method=method)


def test_photo_keys_and_exclusion_ids():
  assert photos_lib.photo_key("photos/pro 007.jpg") == "pro-007"
  assert photos_lib.photo_key(b"astronaut.png") == "astronaut"
  assert database_lib.exclusion_ids("pro-007_3") == ("pro-007_3", "pro-007", "pro-007-3")
  assert database_lib.exclusion_ids(b"pro.v2_12") == ("pro.v2_12", "pro.v2", "pro.v2-12")
  assert database_lib.exclusion_ids("pro-007") == ("pro-007",)
  # Two photos named alike: CAD names carry a checksum suffix their database keys lack; the
  # variants still exclude their source photo.
  paths = [pathlib.PurePath("a/IMG 1.jpg"), pathlib.PurePath("b/IMG 1.jpg")]
  ids = photos_lib.photo_ids(paths)
  assert len(set(ids)) == 2 and all(i.startswith("IMG-1-") for i in ids)
  for photo_id, path in zip(ids, paths):
    assert photos_lib.photo_key(str(path)) in database_lib.exclusion_ids(f"{photo_id}_0")


@pytest.mark.parametrize("method", ["exact", pytest.param("brute_force", marks=requires_scann)])
def test_search_is_exact_on_a_small_database(method):
  db = _database(method=method)
  queries = db.embed_tokens(_tokens(10, seed=1))
  rows, scores = db.search(queries, 5)
  expected = np.argsort(-(queries @ np.asarray(db.embeddings).T), axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(rows, expected)
  np.testing.assert_allclose(np.linalg.norm(db.embeddings, axis=1), 1.0, rtol=1e-5)
  assert np.all(scores[:, :-1] >= scores[:, 1:])


def test_a_photo_finds_itself_unless_excluded_and_cad_ids_exclude_their_source():
  db = _database()
  queries = db.embed_tokens(np.asarray(db.tokens[:6]))
  rows, _ = db.search(queries, 3)
  np.testing.assert_array_equal(rows[:, 0], np.arange(6))
  # By database id, and by a CAD variant's name `<photo key>_<k>`.
  excluded = [[db.ids[i]] for i in range(3)] + [
      database_lib.exclusion_ids(f"pro-{i:03d}_{i}") for i in range(3, 6)]
  rows, _ = db.search(queries, 3, exclude_ids=excluded)
  for i, r in enumerate(rows):
    assert i not in r and np.all(r >= 0)


def test_save_load_round_trip_gives_identical_results(tmp_path):
  db = _database(n=80)
  queries = db.embed_tokens(_tokens(12, seed=2))
  exclude = [[db.ids[i]] for i in range(12)]
  before = db.search(queries, 6, exclude_ids=exclude)
  db.save(tmp_path / "db")
  loaded = database_lib.ReferenceDatabase.load(tmp_path / "db", config=_config())
  after = loaded.search(loaded.embed_tokens(_tokens(12, seed=2)), 6, exclude_ids=exclude)
  np.testing.assert_array_equal(before[0], after[0])
  np.testing.assert_allclose(before[1], after[1], rtol=1e-6)
  assert loaded.ids == db.ids and loaded.fingerprint == db.fingerprint
  np.testing.assert_array_equal(loaded.gather_tokens(before[0]), db.gather_tokens(before[0]))
  meta = json.loads((tmp_path / "db" / database_lib.METADATA).read_text())
  assert meta["num_photos"] == 80 and meta["image_size"] == 128 and meta["backbone"] == "lite0"


def test_gather_tokens_across_shards_and_missing_rows():
  tokens = _tokens(10)
  sharded = database_lib.ShardedTokens([tokens[:3], tokens[3:4], tokens[4:]])
  rows = np.array([[9, 0, -1], [3, 4, 2]])
  out = sharded.take(rows)
  assert out.shape == (2, 3, T, C) and out.dtype == np.float16
  np.testing.assert_array_equal(out[0, 0], tokens[9])
  np.testing.assert_array_equal(out[1], tokens[[3, 4, 2]])
  assert not out[0, 2].any()
  np.testing.assert_array_equal(sharded[2:5], tokens[2:5])


@pytest.mark.parametrize("field,value", [("image_size", 320), ("backbone", "lite1"),
                                         ("tokens_grid", 4)])
def test_metadata_mismatch_is_refused_with_a_clear_error(tmp_path, field, value):
  _database().save(tmp_path / "db")
  config = _config()
  if field == "image_size":
    config.data.image_size = value
  elif field == "backbone":
    config.model.backbone = value
  else:
    config.retrieval.tokens_grid = value
  with pytest.raises(database_lib.DatabaseMismatchError,
                     match=rf"{field}: database .* != config {value!r}.*--mode=build_index"):
    database_lib.ReferenceDatabase.load(tmp_path / "db", config=config)


def test_empty_and_missing_databases_are_clear_errors(tmp_path):
  with pytest.raises(database_lib.EmptyDatabaseError, match="no photos"):
    database_lib.ReferenceDatabase.from_tokens(
        [], np.zeros((0, T, C), np.float16),
        metadata=database_lib.expected_metadata(_config()))
  with pytest.raises(database_lib.DatabaseError, match="no reference database"):
    database_lib.ReferenceDatabase.load(tmp_path / "nothing")
  _database().save(tmp_path / "db")
  meta_path = tmp_path / "db" / database_lib.METADATA
  meta = json.loads(meta_path.read_text())
  meta_path.write_text(json.dumps({**meta, "num_photos": 0}))
  with pytest.raises(database_lib.EmptyDatabaseError, match="no photos"):
    database_lib.ReferenceDatabase.load(tmp_path / "db")


def test_neighbor_rows_fill_to_k_and_gather_to_model_shape():
  db = _database(n=4)
  rows, scores = db.search(db.embed_tokens(np.asarray(db.tokens[:2])), 5,
                           exclude_ids=[[db.ids[0]], [db.ids[1]]])
  assert np.sum(rows[0] >= 0) == 3  # 4 photos, one excluded.
  rows, scores = neighbors.fill_missing(rows, scores)
  assert np.all(rows >= 0) and 0 not in rows[0] and 1 not in rows[1]
  refs = neighbors.gather_reference_tokens(db, rows)
  assert refs.shape == (2, 5, T, C)


def test_neighbor_table_lookup_and_cache_round_trip(tmp_path):
  table = neighbors.NeighborTable(["a_0", "a_1", "b"], np.arange(6, dtype=np.int32).reshape(3, 2),
                                  np.ones((3, 2), np.float32), "abc")
  np.testing.assert_array_equal(table.lookup([b"b", "a_0"]), [[4, 5], [0, 1]])
  with pytest.raises(KeyError, match="another split"):
    table.lookup(["zzz"])
  path = neighbors.neighbors_cache_path(tmp_path, data_config={"dataset": "procrop_cad",
                                                               "image_size": 128},
                                        split="train[:90%]", k=2, database_fingerprint="abc",
                                        dataset_version="v1")
  table.save(path)
  loaded = neighbors.NeighborTable.load(path)
  assert loaded.ids == table.ids and loaded.database_fingerprint == "abc"
  np.testing.assert_array_equal(loaded.rows, table.rows)
  other = neighbors.neighbors_cache_path(tmp_path, data_config={"dataset": "procrop_cad",
                                                                "image_size": 128},
                                         split="train[:90%]", k=2, database_fingerprint="abd",
                                         dataset_version="v1")
  assert other != path


# ------------------------------------------------------------------ caches keyed by their inputs
KEY = {"format_version": 2, "backbone": "lite0", "weights": "sha256:aaaa", "image_size": 128,
       "tokens_grid": 2, "photos": {"dataset": "photo_folder/default/1.0.0", "num_examples": 3}}


def _write_shard(directory, key=KEY, n=3):
  writer = database_lib.ShardWriter(directory, 0, 1, num_photos=n, tokens_shape=(T, C), key=key)
  writer.add(_ids(n), _tokens(n))
  writer.close()
  return writer.prefix


def test_a_shard_is_reused_only_when_everything_that_made_it_matches(tmp_path):
  prefix = _write_shard(tmp_path)
  assert database_lib.shard_is_done(tmp_path, 0, 1, 3, KEY)
  assert not database_lib.shard_is_done(tmp_path, 0, 1, 4, KEY)  # Another photo count.
  for field, value in [("weights", "sha256:bbbb"), ("image_size", 256), ("backbone", "lite2"),
                       ("photos", {"dataset": "photo_folder/default/1.0.0", "num_examples": 4}),
                       ("format_version", 3)]:
    assert not database_lib.shard_is_done(tmp_path, 0, 1, 3, {**KEY, field: value}), field
  # Same photo count, but a done-marker without a key (an older build): rebuilt, not trusted.
  done = prefix.with_name(prefix.name + ".done")
  done.write_text(json.dumps({"num_photos": 3}))
  assert not database_lib.shard_is_done(tmp_path, 0, 1, 3, KEY)
  done.write_text('{"num_pho')  # Truncated by a crash: rebuilt, no exception.
  assert not database_lib.shard_is_done(tmp_path, 0, 1, 3, KEY)
  assert sorted(p.name for p in prefix.parent.iterdir()) == [  # No temporary file left.
      "shard-00000-of-00001.done", "shard-00000-of-00001.ids.json",
      "shard-00000-of-00001.tokens.npy"]


def test_an_interrupted_shard_rewrite_is_never_taken_as_done(tmp_path):
  _write_shard(tmp_path)
  other = {**KEY, "weights": "sha256:bbbb"}
  first = database_lib.ShardWriter(tmp_path, 0, 1, num_photos=3, tokens_shape=(T, C), key=other)
  second = database_lib.ShardWriter(tmp_path, 0, 1, num_photos=3, tokens_shape=(T, C), key=other)
  assert first._tmp != second._tmp  # pylint: disable=protected-access  (concurrent runs)
  first.add(_ids(1), _tokens(1))  # ... and killed here.
  assert not database_lib.shard_is_done(tmp_path, 0, 1, 3, KEY)
  assert not database_lib.shard_is_done(tmp_path, 0, 1, 3, other)
  with pytest.raises(database_lib.DatabaseError, match="missing or incomplete"):
    database_lib._read_shards(tmp_path, 1, mmap=True)  # pylint: disable=protected-access


def test_an_interrupted_save_does_not_load_as_the_old_complete_database(tmp_path, monkeypatch):
  db = _database(20)
  db.save(tmp_path / "db")
  database_lib.ReferenceDatabase.load(tmp_path / "db")

  def killed(*args, **kwargs):
    raise KeyboardInterrupt()
  monkeypatch.setattr(type(db.index), "save", killed)
  with pytest.raises(KeyboardInterrupt):
    _database(30).save(tmp_path / "db")
  with pytest.raises(database_lib.DatabaseError, match="did not finish"):
    database_lib.ReferenceDatabase.load(tmp_path / "db")


def test_a_corrupt_metadata_file_is_a_one_line_error(tmp_path):
  _database(20).save(tmp_path / "db")
  (tmp_path / "db" / database_lib.METADATA).write_text('{"format": "procrop_refe')
  with pytest.raises(database_lib.DatabaseError, match="metadata.json is unreadable"):
    database_lib.ReferenceDatabase.load(tmp_path / "db")


def test_the_database_fingerprint_follows_the_weights_and_photos_of_its_tokens():
  metadata = database_lib.expected_metadata(_config())
  fingerprints = {
      database_lib.ReferenceDatabase.from_tokens(
          _ids(20), _tokens(20), metadata={**metadata, **extra}).fingerprint
      for extra in ({}, {"tokens_key": "aaaa"}, {"tokens_key": "bbbb"})}
  assert len(fingerprints) == 3


def test_the_neighbour_cache_key_includes_the_dataset_version(tmp_path):
  path = lambda version: neighbors.neighbors_cache_path(
      tmp_path, data_config={"dataset": "procrop_cad", "image_size": 128}, split="train", k=2,
      database_fingerprint="abc", dataset_version=version)
  assert path({"dataset": "procrop_cad/default/1.0.0", "num_examples": 18}) != path(
      {"dataset": "procrop_cad/default/1.1.0", "num_examples": 18})


def test_a_corrupt_or_foreign_neighbour_cache_is_computed_again(tmp_path):
  db = _database(20)
  table = neighbors.NeighborTable(["a", "b"], np.zeros((2, 2), np.int32),
                                  np.ones((2, 2), np.float32), db.fingerprint)
  path = tmp_path / "neighbors-x.npz"
  table.save(path)
  assert neighbors._load_cached(path, database=db, k=2).ids == ["a", "b"]  # pylint: disable=protected-access
  assert neighbors._load_cached(path, database=db, k=3) is None  # pylint: disable=protected-access
  assert neighbors._load_cached(path, database=_database(21), k=2) is None  # pylint: disable=protected-access
  path.write_bytes(path.read_bytes()[:50])  # Truncated.
  with pytest.raises(ValueError, match="neighbors-x.npz is unreadable"):
    neighbors.NeighborTable.load(path)
  assert neighbors._load_cached(path, database=db, k=2) is None  # pylint: disable=protected-access
  assert [p.name for p in tmp_path.iterdir()] == ["neighbors-x.npz"]
