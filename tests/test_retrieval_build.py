"""End to end: build_index over a photo folder, load it, precompute cached neighbours."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import testing
from procrop_jax.retrieval import build
from procrop_jax.retrieval import database as database_lib
from procrop_jax.retrieval import neighbors
from tests.conftest import HAS_SCANN, REPO_ROOT, free_port


def _photos(folder, n=10):
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True)
  for i in range(n):
    h, w = [(48, 80), (80, 48), (64, 64)][i % 3]
    image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    image[: h // 2, : w // 3] = 255 * (i % 2)  # A few shared "layouts".
    Image.fromarray(image).save(folder / f"pro_{i:02d}.png")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("retrieval_build")
  _photos(tmp / "photos")
  config = testing.get_config()
  config.data.image_size = 64
  config.data.data_dir = str(tmp / "tfds")
  # The photo folder is also the "training" split whose neighbours are precomputed.
  config.data.dataset = "photo_folder"
  config.data.builder_config = "default"
  config.data.manual_dir = str(tmp / "photos")
  config.retrieval.index_dir = str(tmp / "db")
  config.retrieval.embedding_grid = 2
  config.retrieval.embedding_dim = 32
  config.retrieval.database_config = "default"
  config.retrieval.database_manual_dir = str(tmp / "photos")
  config.retrieval.batch_size = 8
  return config


@pytest.mark.slow
def test_build_index_load_and_precompute_neighbours(config, tmp_path):
  directory = build.build_index(config, str(tmp_path / "workdir"))
  assert directory == build.pathlib.Path(config.retrieval.index_dir)
  db = build.load_database(config)
  assert db.num_photos == 10 and db.index.method == ("brute_force" if HAS_SCANN else "exact")
  assert db.token_shape == (config.retrieval.tokens_grid ** 2, 1280)
  # 2x2 x 1280 float16 tokens = 10 KB/photo here (40 KB at the default 4x4).
  tokens_file = next((directory / database_lib.SHARDS_DIR).glob("*.tokens.npy"))
  assert tokens_file.stat().st_size < 10 * 4 * 1280 * 2 + 1024

  # Re-running finds the finished shard and rebuilds the same database.
  build.build_index(config, str(tmp_path / "workdir"))
  assert build.load_database(config).fingerprint == db.fingerprint

  extractor = build.create_extractor(config)
  table = neighbors.precompute_neighbors(config, db, split="train", cache_dir=tmp_path / "nn",
                                         extractor=extractor)
  k = config.model.num_references
  assert sorted(table.ids) == sorted(db.ids) and table.rows.shape == (10, k)
  for image_id, rows in zip(table.ids, table.rows):
    assert db.ids.index(image_id) not in rows  # Never itself.
  cached = list((tmp_path / "nn").glob("neighbors-*.npz"))
  assert len(cached) == 1
  again = neighbors.precompute_neighbors(config, db, split="train", cache_dir=tmp_path / "nn",
                                         extractor=object())  # Cached: nothing is computed.
  np.testing.assert_array_equal(again.rows, table.rows)
  refs = neighbors.gather_reference_tokens(db, table.lookup(table.ids[:3]))
  assert refs.shape == (3, k, config.retrieval.tokens_grid ** 2, 1280)

  # Inference: a database photo retrieves itself first when nothing is excluded.
  _, batches = build._open_photos(config, batch_size=8, all_processes=True)  # pylint: disable=protected-access
  batch = next(batches)
  out = neighbors.Retriever(db, extractor, k=k)(batch["image"], batch["image_valid_hw"])
  assert out["reference_tokens"].shape == (8, k, config.retrieval.tokens_grid ** 2, 1280)
  np.testing.assert_array_equal(out["rows"][:, 0],
                                [db.ids.index(i.decode()) for i in batch["image_id"]])

  # With no index_dir, the same photos are embedded into an in-memory database.
  in_memory = config.copy_and_resolve_references()
  in_memory.retrieval.index_dir = ""
  mem = build.load_database(in_memory, extractor=extractor)
  assert mem.directory is None and sorted(mem.ids) == sorted(db.ids)

  mismatched = config.copy_and_resolve_references()
  mismatched.data.image_size = 96
  with pytest.raises(database_lib.DatabaseMismatchError, match="image_size"):
    build.load_database(mismatched)


def test_bad_grid_settings_fail_before_any_work(config, tmp_path):
  bad = config.copy_and_resolve_references()
  bad.retrieval.embedding_grid = 3
  with pytest.raises(ValueError, match="multiple of config.retrieval.embedding_grid"):
    build.build_index(bad, str(tmp_path))


class Killed(Exception):
  pass


@pytest.mark.slow
def test_a_rebuild_notices_other_weights_and_an_interrupted_one_is_not_complete(
    config, tmp_path, monkeypatch):
  config = config.copy_and_resolve_references()
  config.retrieval.index_dir = str(tmp_path / "db")
  build.build_index(config, str(tmp_path))
  first = build.load_database(config)
  shards = tmp_path / "db" / database_lib.SHARDS_DIR
  tokens_before = np.load(next(shards.glob("*.tokens.npy")))

  # Other backbone weights (random ones from another seed), killed before the database is
  # finished: the shard is rebuilt (same photo count, other key) and nothing loads as complete.
  reseeded = config.copy_and_resolve_references()
  reseeded.seed = config.seed + 1

  def killed(*args, **kwargs):
    raise Killed()
  monkeypatch.setattr(build, "finalize_database", killed)
  with pytest.raises(Killed):
    build.build_index(reseeded, str(tmp_path))
  done = json.loads(next(shards.glob("*.done")).read_text())
  assert done["key"]["weights"] == f"random:seed={reseeded.seed}"
  assert not np.array_equal(np.load(next(shards.glob("*.tokens.npy"))), tokens_before)
  with pytest.raises(database_lib.DatabaseError, match="did not finish"):
    build.load_database(reseeded)

  monkeypatch.undo()
  build.build_index(reseeded, str(tmp_path))
  rebuilt = build.load_database(reseeded)
  assert rebuilt.metadata["build_key"]["weights"] == f"random:seed={reseeded.seed}"
  assert rebuilt.fingerprint != first.fingerprint
  assert not [p for p in (tmp_path / "db").rglob("*") if p.name.endswith(".tmp")]


def patch_means(images):  # 32x32 patch means as a 3-channel "stride-32" map: compiles at once.
  b, s = images.shape[0], images.shape[1]
  return {"stride32": images.reshape(b, s // 32, 32, s // 32, 32, 3).mean(axis=(2, 4))}


def _wait(procs, timeout=300):
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:  # Ends one still waiting at a barrier for a process that failed.
      p.kill()
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_neighbours_computed_by_two_processes_merge_into_the_single_process_table(
    config, tmp_path):
  config = config.copy_and_resolve_references()
  config.model.num_references = 3
  config.retrieval.index_dir = ""  # An in-memory database of the same 10 photos.
  extractor = build.create_extractor(config, backbone=patch_means)
  db = build.load_database(config, extractor=extractor)
  single = neighbors.precompute_neighbors(config, db, split="train", cache_dir=tmp_path / "one",
                                          extractor=extractor)
  assert single.rows.shape == (10, 3)

  # Two processes joined by jax.distributed (tests/neighbors_worker.py), each with 4 CPU
  # devices, synchronised by precompute_neighbors' own barriers. An in-memory database is
  # single-process only, so they load this one from disk, as the hosts of a real run load theirs.
  config.retrieval.index_dir = str(db.save(tmp_path / "db"))
  sections = tmp_path / "config.json"
  sections.write_text(json.dumps({s: config[s].to_dict() for s in ("data", "retrieval", "model")}))
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  port = free_port()
  _wait([subprocess.Popen(
      [sys.executable, str(REPO_ROOT / "tests" / "neighbors_worker.py"), str(i), "2", str(port),
       str(sections), str(tmp_path / "two"), str(tmp_path / "out")], cwd=REPO_ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)])

  hosts = [json.loads((tmp_path / f"out.p{i}.json").read_text()) for i in range(2)]
  # JAX itself saw two processes: the merge ran on the real multi-process path.
  assert [(h["process_index"], h["process_count"]) for h in hosts] == [(0, 2), (1, 2)]
  computed = [h["computed"] for h in hosts]
  assert [len(computed[0]), len(computed[1])] == [5, 5]  # Each process did its half...
  assert sorted(computed[0] + computed[1]) == sorted(single.ids)
  # ... and only the merged cache file is left: the one a single process writes and loads.
  cached = list((tmp_path / "two").iterdir())
  assert [p.name for p in cached] == [p.name for p in (tmp_path / "one").iterdir()]
  tables = [neighbors.NeighborTable.load(tmp_path / f"out.p{i}.npz") for i in range(2)]
  for table in tables + [neighbors.NeighborTable.load(cached[0])]:
    assert sorted(table.ids) == sorted(single.ids)
    np.testing.assert_array_equal(table.lookup(single.ids), single.rows)
    order = [table.ids.index(i) for i in single.ids]
    np.testing.assert_allclose(table.scores[order], single.scores, rtol=1e-6)
