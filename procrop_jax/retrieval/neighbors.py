"""Retrieved references for training examples (precomputed, cached) and at inference.

Training: `precompute_neighbors(config, database, split=...)` embeds every example of a split
once (unaugmented, like the eval pipeline), searches the database for its K nearest professional
photos, never the example itself or its source photo (`database.exclusion_ids`), and caches the
table ids -> K database rows in a file keyed by dataset, builder config, split, K, input size,
the prepared dataset's version and size (`dataset_fingerprint`) and the database's fingerprint.
A cache file that cannot be read, or that was made for another database or K, is computed again.
The trainer then adds each batch's tokens on the host:

  rows = table.lookup(batch["image_id"])                       # [B, K]
  batch["reference_tokens"] = gather_reference_tokens(database, rows)  # [B, K, T, C] float16

Inference: `Retriever(database, extractor, k)(images, image_valid_hw)` does the same per batch.

When a database has fewer than K admissible photos (e.g. the 9 photos of the embedded default
with K = 10), the rows found are repeated to fill K, so the model always sees K real references;
a query with none at all gets -1 rows, i.e. zero tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import zipfile
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from procrop_jax import input_pipeline
from procrop_jax.retrieval import build as build_lib
from procrop_jax.retrieval import database as database_lib
from procrop_jax.retrieval import embedding as embedding_lib


def _text(i: str | bytes) -> str:
  return i.decode("utf-8") if isinstance(i, bytes) else str(i)


def fill_missing(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Fills -1 columns of each row by repeating its found neighbours in order (best first)."""
  rows, scores = rows.copy(), scores.copy()
  for i in np.flatnonzero((rows < 0).any(axis=1)):
    found = np.flatnonzero(rows[i] >= 0)
    if len(found):
      take = found[np.arange(rows.shape[1]) % len(found)]
      rows[i], scores[i] = rows[i][take], scores[i][take]
  return rows, scores


@dataclasses.dataclass
class NeighborTable:
  """Image id -> its K database rows (best first) and scores."""
  ids: list[str]
  rows: np.ndarray  # [N, K] int32
  scores: np.ndarray  # [N, K] float32
  database_fingerprint: str

  def __post_init__(self):
    self._row_of = {i: r for r, i in enumerate(self.ids)}
    if len(self._row_of) != len(self.ids):
      raise ValueError("duplicate image ids in the neighbour table")

  @property
  def k(self) -> int:
    return int(self.rows.shape[1])

  def lookup(self, image_ids: Sequence[str | bytes]) -> np.ndarray:
    """[B] ids -> [B, K] int64 database rows; KeyError naming ids that were not precomputed."""
    idx = [self._row_of.get(_text(i), -1) for i in image_ids]
    missing = [_text(i) for i, j in zip(image_ids, idx) if j < 0]
    if missing:
      raise KeyError(f"{len(missing)} image ids have no precomputed neighbours (e.g. "
                     f"{missing[:3]}): the neighbour cache was made for another split")
    return self.rows[np.asarray(idx, np.int64)].astype(np.int64)

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes the table to a unique temporary file, then renames it to `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as f:
      np.savez(f, ids=np.asarray(self.ids, dtype=object).astype(str), rows=self.rows,
               scores=self.scores, fingerprint=np.asarray(self.database_fingerprint))
    os.replace(f.name, path)

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> "NeighborTable":
    """Reads a saved table (no pickle). Raises ValueError naming the file if it is unreadable."""
    try:
      with np.load(path, allow_pickle=False) as z:
        table = cls([str(i) for i in z["ids"]], z["rows"], z["scores"], str(z["fingerprint"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      raise ValueError(f"neighbour cache {path} is unreadable: {e}") from None
    if table.rows.ndim != 2 or table.rows.shape != table.scores.shape or (
        len(table.ids) != len(table.rows)):
      raise ValueError(f"neighbour cache {path} is inconsistent: {len(table.ids)} ids, rows "
                       f"{table.rows.shape}, scores {table.scores.shape}")
    return table

  @classmethod
  def concatenate(cls, tables: Sequence["NeighborTable"]) -> "NeighborTable":
    return cls([i for t in tables for i in t.ids],
               np.concatenate([t.rows for t in tables]),
               np.concatenate([t.scores for t in tables]), tables[0].database_fingerprint)


def gather_reference_tokens(database: database_lib.ReferenceDatabase,
                            neighbor_rows: np.ndarray) -> np.ndarray:
  """[B, K] database rows -> [B, K, T, C] float16 reference tokens (zeros for -1)."""
  return database.gather_tokens(neighbor_rows)


def compute_neighbors(database: database_lib.ReferenceDatabase,
                      batches: Iterable[Mapping[str, np.ndarray]],
                      extractor: embedding_lib.TokenExtractor, *, k: int,
                      exclude: Callable[[str], Sequence[str]] | None = database_lib.exclusion_ids,
                      total: int | None = None) -> NeighborTable:
  """Searches the database for every valid example of `batches` (input-pipeline eval format).

  Args:
    database: the professional photos.
    batches: dicts with "image", "image_valid_hw", "image_id" (and optionally "valid").
    extractor: the same extractor set-up as the database's (backbone, input size, grid).
    k: neighbours per example.
    exclude: image id -> ids it must not retrieve (default: itself and its source photo);
      None excludes nothing.
    total: examples expected (for the progress bar).
  """
  ids, rows, scores = [], [], []
  for batch_ids, tokens in build_lib.extract_tokens(batches, extractor, total=total,
                                                    desc="neighbours"):
    queries = database.embed_tokens(tokens)
    excluded = [exclude(i) for i in batch_ids] if exclude else None
    r, s = database.search(queries, k, exclude_ids=excluded)
    ids.extend(batch_ids)
    rows.append(r)
    scores.append(s)
  if not ids:
    return NeighborTable([], np.zeros((0, k), np.int32), np.zeros((0, k), np.float32),
                         database.fingerprint)
  rows, scores = np.concatenate(rows), np.concatenate(scores)
  short = int((rows < 0).any(axis=1).sum())
  if short:
    logging.warning("%d of %d examples have fewer than %d admissible references in a database "
                    "of %d photos; repeating the ones found", short, len(ids), k,
                    database.num_photos)
  rows, scores = fill_missing(rows, scores)
  return NeighborTable(ids, rows.astype(np.int32), scores.astype(np.float32),
                       database.fingerprint)


def dataset_fingerprint(data_config: Mapping[str, Any], split: str) -> dict[str, Any]:
  """The prepared dataset's full name (with its version) and the split's size in examples and
  bytes: a rebuilt dataset (new version, other photos or labels) gets new neighbours."""
  builder = input_pipeline.load_builder(input_pipeline.DataSettings.from_config(data_config))
  info = builder.info.splits[split.split("[")[0]]  # A slice's own info has no byte count.
  return {"dataset": builder.info.full_name, "num_examples": int(info.num_examples),
          "num_bytes": int(info.num_bytes)}


def neighbors_cache_path(cache_dir: str | os.PathLike[str], *, data_config: Mapping[str, Any],
                         split: str, k: int, database_fingerprint: str,
                         dataset_version: Mapping[str, Any] | str) -> pathlib.Path:
  """The cache file of a split's neighbours: a function of everything that changes them.

  `dataset_version` is `dataset_fingerprint(data_config, split)` (or any stand-in for it).
  """
  key = {"dataset": data_config.get("dataset"), "builder_config": data_config.get(
      "builder_config"), "split": split, "image_size": int(data_config.get("image_size")),
         "k": int(k), "database": database_fingerprint, "dataset_version": dataset_version}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  safe_split = "".join(c if c.isalnum() else "_" for c in split)
  return pathlib.Path(cache_dir) / f"neighbors-{key['dataset']}-{safe_split}-k{k}-{digest}.npz"


def _load_cached(path: pathlib.Path, *, database: database_lib.ReferenceDatabase, k: int
                 ) -> NeighborTable | None:
  """The cached table at `path`, or None (absent, unreadable or made for something else)."""
  if not path.exists():
    return None
  try:
    table = NeighborTable.load(path)
  except ValueError as e:
    logging.warning("%s; computing it again", e)
    return None
  if table.database_fingerprint != database.fingerprint or table.k != k:
    logging.warning("neighbour cache %s was made for database %s with K=%d (now %s, K=%d); "
                    "computing it again", path, table.database_fingerprint, table.k,
                    database.fingerprint, k)
    return None
  return table


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def precompute_neighbors(config: Any, database: database_lib.ReferenceDatabase, *, split: str,
                         cache_dir: str | os.PathLike[str],
                         extractor: embedding_lib.TokenExtractor | None = None,
                         k: int | None = None) -> NeighborTable:
  """The neighbours of every example of config.data's `split`, from the cache or computed.

  Each process computes its slice (the eval pipeline's `split_for_jax_process` slice) and writes
  a part file; after a barrier every process reads all parts (the training pipeline slices a
  split differently), and process 0 merges them into the cache file that later runs load.

  Args:
    config: the experiment config (data.*, model.num_references, retrieval.*).
    database: the reference database.
    split: e.g. config.data.train_split.
    cache_dir: where the cache files live (e.g. <workdir>/neighbors).
    extractor: default `build.create_extractor(config)` (the database's backbone set-up).
    k: default config.model.num_references.
  """

  k = int(config.model.num_references if k is None else k)
  data_config = dict(config.data)
  path = neighbors_cache_path(cache_dir, data_config=data_config, split=split, k=k,
                              database_fingerprint=database.fingerprint,
                              dataset_version=dataset_fingerprint(data_config, split))
  cached = _load_cached(path, database=database, k=k)
  if cached is not None:
    logging.info("Neighbours of %s from %s", split, path)
    return cached
  extractor = extractor or build_lib.create_extractor(config)
  index, count = jax.process_index(), jax.process_count()
  part = path.with_name(f"{path.stem}.part-{index:05d}-of-{count:05d}.npz")
  if _load_cached(part, database=database, k=k) is None:
    settings = dataclasses.replace(input_pipeline.DataSettings.from_config(data_config),
                                   augment=False)
    ds = input_pipeline.create_eval_dataset(settings, batch_size=extractor.batch_size,
                                            split=split)
    table = compute_neighbors(database, ds.as_numpy_iterator(), extractor, k=k)
    table.save(part)
  _barrier("procrop_neighbors_parts_written")
  parts = [path.with_name(f"{path.stem}.part-{i:05d}-of-{count:05d}.npz") for i in range(count)]
  table = NeighborTable.concatenate([NeighborTable.load(p) for p in parts])
  if index == 0:
    table.save(path)
  _barrier("procrop_neighbors_merged")
  if index == 0:
    for p in parts:
      p.unlink(missing_ok=True)
  return table


class Retriever:
  """Inference: images -> the reference tokens of their K nearest professional photos."""

  def __init__(self, database: database_lib.ReferenceDatabase,
               extractor: embedding_lib.TokenExtractor, *, k: int):
    if extractor.token_shape != database.token_shape:
      raise database_lib.DatabaseMismatchError(
          f"the extractor makes {extractor.token_shape} tokens but the database holds "
          f"{database.token_shape}")
    self.database = database
    self.extractor = extractor
    self.k = k

  def __call__(self, images: np.ndarray, image_valid_hw: np.ndarray | None = None, *,
               exclude_ids: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """[B, S, S, 3] images -> {"reference_tokens" [B, K, T, C] f16, "rows", "scores" [B, K]}."""
    tokens = self.extractor(images, image_valid_hw)
    rows, scores = self.database.search(self.database.embed_tokens(tokens), self.k,
                                        exclude_ids=exclude_ids)
    rows, scores = fill_missing(rows, scores)
    return {"reference_tokens": self.database.gather_tokens(rows), "rows": rows,
            "scores": scores}
