"""Nearest-neighbour search over L2-normalised composition embeddings.

Two searchers share one interface (`search(queries, k, exclude_rows=...)`, maximum inner product):

* `ScannIndex`: ScaNN. For large sets a partitioning tree (k-means leaves), asymmetric hashing
  (2 dimensions per 4-bit block) and exact float32 re-ranking; for small sets
  ScaNN's exact brute-force mode. `build_index(..., method="auto")` picks between them.
* `exact_search`: a numpy matrix product plus a partial sort, used as the exact reference (tests,
  benchmark) and as the fallback when an approximate search returns too few rows after exclusion.
  `ExactIndex` searches with it alone.

ScaNN is optional (the `scann` extra: wheels for Linux x86-64 only) and imported only here, when
an index is built or loaded. Without it, `method="auto"` and loading a saved ScaNN index fall
back to `ExactIndex` (the same neighbours as brute force; slower than the tree on millions of
rows); asking for "brute_force" or "scann" by name says how to install it.

Exclusion works by over-fetching: a query that must not return `e` rows asks for `k + e`
neighbours, drops the excluded ones and keeps the best `k`. Where that still leaves fewer than
`k` rows (a small database, or an approximate search whose leaves held too few points) the query
is re-run exactly, so the result is always the best `k` non-excluded rows the searcher can see.
Missing rows (database smaller than `k` plus exclusions) are -1 with score -inf.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np

# Below this many rows ScaNN's brute-force mode is as fast as the tree and exact.
BRUTE_FORCE_MAX_ROWS = 20_000
_INDEX_META = "index.json"
_SCANN_DIR = "scann"


SCANN_MISSING = ("ScaNN is not installed: pip install 'procrop_jax[scann]' (Linux x86-64 only), "
                 "or use exact search (config.retrieval.search='exact' or 'auto')")


def _import_scann() -> Any | None:
  """The scann module, or None where it is not installed (macOS, other CPUs, no extra)."""
  try:
    import scann  # pylint: disable=g-import-not-at-top  (heavy, optional; only needed here)
  except ImportError:
    return None
  return scann


def _top_k_unsorted(scores: np.ndarray, k: int) -> np.ndarray:
  """Column indices of the k largest scores per row, in no particular order.

  An exact partial sort: for wide rows it first takes the maximum of each group of 64 columns,
  keeps the k groups with the largest maxima (every top-k element lies in one of them: a group
  outside them has k groups, hence k distinct elements, at least as large as its own maximum)
  and partitions only those k * 64 candidates. That is about 5x faster than `np.argpartition`
  over a million columns, whose introselect dominates the cost of the matrix product otherwise.
  """
  num_rows, width = scores.shape
  if k >= width:
    return np.broadcast_to(np.arange(width), (num_rows, width)).copy()
  group = 64
  if width < 16 * group * k or width % group:
    return np.argpartition(scores, width - k, axis=1)[:, width - k:]
  group_max = scores.reshape(num_rows, width // group, group).max(axis=2)
  num_groups = group_max.shape[1]
  top_groups = np.argpartition(group_max, num_groups - k, axis=1)[:, num_groups - k:]
  columns = (top_groups[:, :, None] * group + np.arange(group)).reshape(num_rows, k * group)
  candidates = np.take_along_axis(scores, columns, axis=1)
  best = np.argpartition(candidates, k * group - k, axis=1)[:, k * group - k:]
  return np.take_along_axis(columns, best, axis=1)


def _sort_desc(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  order = np.argsort(-scores, axis=1, kind="stable")
  return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


def exact_search(database: np.ndarray, queries: np.ndarray, k: int, *,
                 query_block: int = 256, row_block: int = 131_072
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Exact top-k by inner product: blocked matrix product plus partial sort.

  Args:
    database: [N, D] float32 (may be a memory map; it is read block by block).
    queries: [Q, D].
    k: neighbours per query; rows past N are -1 with score -inf.
    query_block: queries per matrix product.
    row_block: database rows per matrix product (bounds memory at query_block * row_block * 4 B).

  Returns:
    rows [Q, k] int64 and scores [Q, k] float32, best first.
  """
  queries = np.asarray(queries, np.float32)
  num = database.shape[0]
  out_rows = np.full((queries.shape[0], k), -1, np.int64)
  out_scores = np.full((queries.shape[0], k), -np.inf, np.float32)
  if num == 0 or k == 0:
    return out_rows, out_scores
  for q0 in range(0, queries.shape[0], query_block):
    q = queries[q0:q0 + query_block]
    cand_rows, cand_scores = [], []
    for start in range(0, num, row_block):
      scores = q @ np.asarray(database[start:start + row_block], np.float32).T
      cols = _top_k_unsorted(scores, k)
      cand_scores.append(np.take_along_axis(scores, cols, axis=1))
      cand_rows.append(cols + start)
    rows = np.concatenate(cand_rows, axis=1)
    scores = np.concatenate(cand_scores, axis=1)
    if rows.shape[1] > k:
      best = _top_k_unsorted(scores, k)
      rows = np.take_along_axis(rows, best, axis=1)
      scores = np.take_along_axis(scores, best, axis=1)
    rows, scores = _sort_desc(rows, scores)
    n = rows.shape[1]
    out_rows[q0:q0 + len(q), :n] = rows
    out_scores[q0:q0 + len(q), :n] = scores
  return out_rows, out_scores


def _normalise_exclusions(exclude_rows: Sequence[Sequence[int]] | None,
                          num_queries: int) -> list[np.ndarray] | None:
  if exclude_rows is None:
    return None
  if len(exclude_rows) != num_queries:
    raise ValueError(f"exclude_rows has {len(exclude_rows)} entries for {num_queries} queries")
  return [np.unique(np.asarray(e, np.int64)[np.asarray(e, np.int64) >= 0])
          if len(e) else np.zeros((0,), np.int64) for e in exclude_rows]


def _filter_excluded(rows: np.ndarray, scores: np.ndarray, excluded: list[np.ndarray],
                     k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Drops excluded and missing rows and keeps the best k. Returns rows, scores, full-mask."""
  out_rows = np.full((rows.shape[0], k), -1, np.int64)
  out_scores = np.full((rows.shape[0], k), -np.inf, np.float32)
  full = np.zeros((rows.shape[0],), bool)
  for i, (r, s, e) in enumerate(zip(rows, scores, excluded)):
    keep = (r >= 0) & ~np.isin(r, e)
    r, s = r[keep][:k], s[keep][:k]
    out_rows[i, :len(r)] = r
    out_scores[i, :len(s)] = s
    full[i] = len(r) == k
  return out_rows, out_scores, full


class Index:
  """Maximum-inner-product search over a fixed [N, D] float32 embedding matrix."""

  method: str = ""

  def __init__(self, embeddings: np.ndarray):
    self.embeddings = embeddings

  @property
  def size(self) -> int:
    return int(self.embeddings.shape[0])

  def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def search(self, queries: np.ndarray, k: int, *,
             exclude_rows: Sequence[Sequence[int]] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Batched top-k, best first, never returning a query's excluded rows.

    Args:
      queries: [Q, D] float32, L2-normalised like the database.
      k: neighbours per query.
      exclude_rows: per query, database rows it must not return (e.g. itself, its source photo).

    Returns:
      rows [Q, k] int64 (-1 where the database has fewer than k admissible rows) and scores
      [Q, k] float32 (inner products; -inf where rows is -1).
    """
    queries = np.ascontiguousarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
      raise ValueError(f"queries must be [Q, {self.embeddings.shape[1]}], got {queries.shape}")
    if self.size == 0:
      raise ValueError("cannot search an empty database")
    excluded = _normalise_exclusions(exclude_rows, queries.shape[0])
    if queries.shape[0] == 0:
      return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    extra = max((len(e) for e in excluded), default=0) if excluded is not None else 0
    fetch = min(k + extra, self.size)
    rows, scores = self._search(queries, fetch)
    if excluded is None:
      excluded = [np.zeros((0,), np.int64)] * queries.shape[0]
    rows, scores, full = _filter_excluded(rows, scores, excluded, k)
    # Fallback: an approximate searcher may return fewer than `fetch` rows; redo those exactly.
    admissible = np.array([self.size - len(e) for e in excluded])
    redo = np.flatnonzero(~full & (admissible > (rows >= 0).sum(axis=1)))
    if len(redo):
      r, s = exact_search(self.embeddings, queries[redo], fetch)
      r, s, _ = _filter_excluded(r, s, [excluded[i] for i in redo], k)
      rows[redo], scores[redo] = r, s
    return rows, scores

  def save(self, directory: str | os.PathLike[str]) -> None:
    raise NotImplementedError


class ExactIndex(Index):
  """Exact numpy search (no external library); what tests compare against."""

  method = "exact"

  def _search(self, queries, k):
    return exact_search(self.embeddings, queries, k)

  def save(self, directory):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _INDEX_META).write_text(json.dumps({"method": self.method}))


def default_scann_params(num_rows: int) -> dict[str, Any]:
  """Tree-AH parameters scaled with the database size.

  Tuned with experiments/retrieval_benchmark.py (1M x 256 clustered unit vectors, 2 CPU cores),
  where the build must stay under a minute: its cost is k-means (sample * leaves * dim * iters),
  assigning every row to a leaf (N * leaves * dim) and encoding every row with AH, so the tree is
  shallow (0.3 * sqrt(N) leaves, 300 for 1M) but well trained (200 points per leaf, 10 spherical
  k-means iterations: an under-trained tree, not AH, is what loses recall). 2.5% of the leaves
  (at least 8) are searched, rows are AH-scored with 2 dimensions per 4-bit block, and 30 * k
  candidates re-ranked in float32. Anisotropic (score-aware) quantisation would sharpen AH but
  triples the encoding time on 2 cores, and the re-ranking already recovers what it would.
  Known weak case: many more tight, equally sized clusters than leaves (1000 such clusters in
  1M points: recall@10 0.79); there, raise num_leaves (2000 leaves: partition recall 1.0 at 1%
  of the leaves searched, but a ~80 s k-means on 2 cores).
  """
  num_leaves = int(max(16, min(4000, round(0.3 * np.sqrt(num_rows)))))
  return {
      "num_leaves": num_leaves,
      "num_leaves_to_search": int(max(8, np.ceil(0.025 * num_leaves))),
      "training_sample_size": int(min(num_rows, 200 * num_leaves)),
      "training_iterations": 10,
      "spherical": True,
      "dims_per_block": 2,
      "ah_training_sample_size": int(min(num_rows, 30_000)),
      "ah_training_iterations": 6,
      "anisotropic_quantization_threshold": None,  # None: plain (isotropic) AH.
      "reorder_factor": 30,
  }


class ScannIndex(Index):
  """A ScaNN searcher (tree + asymmetric hashing + exact re-ranking, or brute force)."""

  def __init__(self, embeddings: np.ndarray, searcher: Any, *, method: str,
               params: dict[str, Any], num_threads: int = 0):
    super().__init__(embeddings)
    self.searcher = searcher
    self.method = method
    self.params = dict(params)
    self.num_threads = num_threads or (os.cpu_count() or 1)
    self.searcher.set_num_threads(self.num_threads)

  @classmethod
  def build(cls, embeddings: np.ndarray, *, method: str = "auto",
            params: dict[str, Any] | None = None, num_threads: int = 0) -> "ScannIndex":
    """Builds a ScaNN searcher over `embeddings` ([N, D] float32, N > 0).

    Raises:
      ImportError: ScaNN is not installed.
    """
    scann = _import_scann()
    if scann is None:
      raise ImportError(SCANN_MISSING)

    embeddings = np.ascontiguousarray(embeddings, np.float32)
    num = embeddings.shape[0]
    if num == 0:
      raise ValueError("cannot build an index over an empty database")
    if method == "auto":
      method = "brute_force" if num <= BRUTE_FORCE_MAX_ROWS else "scann"
    builder = scann.scann_ops_pybind.builder(embeddings, 10, "dot_product")
    if num_threads:
      builder = builder.set_n_training_threads(num_threads)
    if method == "brute_force":
      params = {}
      searcher = builder.score_brute_force().build()
    elif method == "scann":
      params = {**default_scann_params(num), **(params or {})}
      searcher = builder.tree(
          num_leaves=params["num_leaves"],
          num_leaves_to_search=params["num_leaves_to_search"],
          training_sample_size=params["training_sample_size"],
          training_iterations=params["training_iterations"],
          spherical=params["spherical"],
      ).score_ah(
          params["dims_per_block"],
          anisotropic_quantization_threshold=(
              float("nan") if params["anisotropic_quantization_threshold"] is None
              else params["anisotropic_quantization_threshold"]),
          training_sample_size=params["ah_training_sample_size"],
          training_iterations=params["ah_training_iterations"],
      ).reorder(10 * params["reorder_factor"]).build()
    else:
      raise ValueError(f"unknown index method {method!r}: auto | brute_force | scann | exact")
    return cls(embeddings, searcher, method=method, params=params, num_threads=num_threads)

  def _search(self, queries, k):
    kwargs = {"final_num_neighbors": k}
    if self.method == "scann":
      kwargs["pre_reorder_num_neighbors"] = max(k, 1) * self.params["reorder_factor"]
    if queries.shape[0] > 1:
      rows, scores = self.searcher.search_batched_parallel(queries, batch_size=256, **kwargs)
    else:
      rows, scores = self.searcher.search_batched(queries, **kwargs)
    rows = np.asarray(rows, np.int64)
    scores = np.asarray(scores, np.float32)
    if rows.shape[1] < k:  # ScaNN returns fewer columns when it finds fewer points.
      pad = k - rows.shape[1]
      rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
      scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return rows, scores

  def save(self, directory):
    directory = pathlib.Path(directory)
    (directory / _SCANN_DIR).mkdir(parents=True, exist_ok=True)
    self.searcher.serialize(str(directory / _SCANN_DIR), relative_path=True)
    (directory / _INDEX_META).write_text(json.dumps({"method": self.method,
                                                     "params": self.params}))


def build_index(embeddings: np.ndarray, *, method: str = "auto",
                params: dict[str, Any] | None = None, num_threads: int = 0) -> Index:
  """Builds an index: "auto" (brute force up to 20K rows, else tree-AH; exact where ScaNN is not
  installed), "brute_force", "scann" (tree-AH) or "exact" (numpy, no ScaNN)."""
  if method == "auto" and _import_scann() is None:
    logging.warning("%s; searching exactly.", SCANN_MISSING.split(":")[0])
    method = "exact"
  if method == "exact":
    if embeddings.shape[0] == 0:
      raise ValueError("cannot build an index over an empty database")
    return ExactIndex(embeddings)
  return ScannIndex.build(embeddings, method=method, params=params, num_threads=num_threads)


def load_index(directory: str | os.PathLike[str], embeddings: np.ndarray, *,
               num_threads: int = 0) -> Index:
  """Loads what `Index.save(directory)` wrote; `embeddings` are the database's rows."""
  directory = pathlib.Path(directory)
  meta_path = directory / _INDEX_META
  if not meta_path.exists():
    raise FileNotFoundError(f"no index at {directory} ({_INDEX_META} missing)")
  meta = json.loads(meta_path.read_text())
  if meta["method"] == "exact":
    return ExactIndex(embeddings)
  scann = _import_scann()
  if scann is None:  # The saved ScaNN files are not needed to search the same rows exactly.
    logging.warning("%s; searching the %s index at %s exactly.", SCANN_MISSING.split(":")[0],
                    meta["method"], directory)
    return ExactIndex(embeddings)

  # ScaNN unpickles scann_docids.pkl when present: a shared or downloaded index could then run
  # code on load. procrop_jax never writes one (rows are the ids), so its presence is refused.
  docids = directory / _SCANN_DIR / "scann_docids.pkl"
  if docids.exists():
    raise ValueError(f"{docids}: refusing to load an index with a pickled docid file (loading "
                     "it would run code from it); procrop_jax indexes have none. Rebuild the "
                     "index (--mode=build_index) or delete that file if you trust it.")
  searcher = scann.scann_ops_pybind.load_searcher(str(directory / _SCANN_DIR),
                                                  assets_backcompat_shim=False)
  if searcher.size() != embeddings.shape[0]:
    raise ValueError(f"index at {directory} holds {searcher.size()} rows but the database has "
                     f"{embeddings.shape[0]}; rebuild it (--mode=build_index)")
  return ScannIndex(embeddings, searcher, method=meta["method"], params=meta.get("params", {}),
                    num_threads=num_threads)
