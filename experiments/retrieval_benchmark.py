r"""Benchmarks the retrieval index on synthetic clustered unit vectors; prints one JSON line.

  python -m experiments.retrieval_benchmark                       # 1M x 256, the tuned defaults
  python -m experiments.retrieval_benchmark --num_points=100000 --dim=128

The database is `num_points` L2-normalised vectors drawn around `num_clusters` (100) random unit
centres with Gaussian noise as large as the centre (`spread` 1) whose variance decays along its
principal axes like PCA-projected embeddings (`decay` 1; 0 is isotropic); the queries are fresh
draws from the same mixture. Hard case (see index.default_scann_params): --num_clusters=1000,
more tight clusters than the 300 tree leaves (recall@10 0.79 with the defaults). Reported:
  recall_at_10  fraction of the exact top-10 (inner product) that the index returns, averaged
                over `num_recall_queries` queries;
  qps           batched queries per second of the index (all `num_queries`, ScaNN's threads);
  exact_qps     queries per second of an efficient exact search (numpy matrix product plus a
                partial sort, procrop_jax.retrieval.index.exact_search) on the recall queries;
  build_seconds time to build the index;
  peak_rss_mb   the process's peak resident memory (database, index and queries).
Targets on a 2-core machine: recall_at_10 >= 0.97, qps >= 20 * exact_qps, build < 60 s.
"""

import json
import resource
import time

from absl import app
from absl import flags
import numpy as np
import scann  # pylint: disable=unused-import  (the [scann] extra; imported here so build_seconds excludes it)

from procrop_jax.retrieval import index as index_lib

_NUM_POINTS = flags.DEFINE_integer("num_points", 1_000_000, "Database size N.")
_DIM = flags.DEFINE_integer("dim", 256, "Embedding dimension.")
_NUM_CLUSTERS = flags.DEFINE_integer(
    "num_clusters", 100, "Mixture components. Many more tight clusters than tree leaves (e.g. "
    "1000 with the 300 leaves used for 1M points) is a hard case for k-means trees: clusters "
    "that no leaf centre owns are scattered over many leaves.")
_SPREAD = flags.DEFINE_float(
    "spread", 1.0, "Noise norm relative to the unit centre before normalisation (1.0: a point's "
    "cosine to its centre is about 0.7).")
_DECAY = flags.DEFINE_float(
    "decay", 1.0, "Noise variance along its i-th principal axis is proportional to i ** -decay "
    "(1.0: an effective dimension of about 23, like PCA-projected embeddings; 0: isotropic).")
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 10_000, "Queries timed for qps.")
_NUM_RECALL_QUERIES = flags.DEFINE_integer("num_recall_queries", 1000,
                                           "Queries scored against exact search.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.")
_METHOD = flags.DEFINE_string("method", "scann", "Index method: scann | brute_force | auto.")
_NUM_LEAVES = flags.DEFINE_integer("num_leaves", 0, "Override: tree leaves (0: default).")
_LEAVES_TO_SEARCH = flags.DEFINE_integer("leaves_to_search", 0, "Override: leaves searched.")
_REORDER_FACTOR = flags.DEFINE_integer("reorder_factor", 0,
                                       "Override: candidates re-ranked = factor * k.")
_TRAINING_SAMPLE = flags.DEFINE_integer("training_sample_size", 0, "Override: k-means sample.")
_SPHERICAL = flags.DEFINE_enum("spherical", "", ["", "true", "false"],
                                "Override: spherical k-means for the tree.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def noise_basis(rng: np.random.Generator, dim: int, decay: float) -> np.ndarray:
  """A random orthonormal basis scaled so that noise = z @ basis has E|noise|^2 = 1 and
  variance along its i-th axis proportional to i ** -decay (0: isotropic)."""
  basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  scale = np.arange(1, dim + 1, dtype=np.float64) ** (-decay / 2)
  scale /= np.sqrt(np.sum(scale ** 2))
  return (scale[:, None] * basis.T).astype(np.float32)


def clustered_unit_vectors(rng: np.random.Generator, centres: np.ndarray, basis: np.ndarray,
                           num: int, spread: float, chunk: int = 65_536) -> np.ndarray:
  """`num` unit vectors: a uniformly chosen centre plus `spread` * noise, normalised."""
  dim = centres.shape[1]
  out = np.empty((num, dim), np.float32)
  for start in range(0, num, chunk):
    n = min(chunk, num - start)
    x = rng.standard_normal((n, dim), dtype=np.float32) @ basis
    x *= spread
    x += centres[rng.integers(0, len(centres), n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out[start:start + n] = x
  return out


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  centres = rng.standard_normal((_NUM_CLUSTERS.value, _DIM.value), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  basis = noise_basis(rng, _DIM.value, _DECAY.value)
  database = clustered_unit_vectors(rng, centres, basis, _NUM_POINTS.value, _SPREAD.value)
  queries = clustered_unit_vectors(rng, centres, basis, _NUM_QUERIES.value, _SPREAD.value)
  k = _K.value
  overrides = {name: flag.value for name, flag in [
      ("num_leaves", _NUM_LEAVES), ("num_leaves_to_search", _LEAVES_TO_SEARCH),
      ("reorder_factor", _REORDER_FACTOR), ("training_sample_size", _TRAINING_SAMPLE)]
               if flag.value}
  if _SPHERICAL.value:
    overrides["spherical"] = _SPHERICAL.value == "true"

  start = time.perf_counter()
  index = index_lib.build_index(database, method=_METHOD.value, params=overrides)
  build_seconds = time.perf_counter() - start

  index.search(queries[:256], k)  # Warm-up (thread pool, page faults).
  start = time.perf_counter()
  rows, _ = index.search(queries, k)
  qps = len(queries) / (time.perf_counter() - start)

  recall_queries = queries[:_NUM_RECALL_QUERIES.value]
  start = time.perf_counter()
  exact_rows, _ = index_lib.exact_search(database, recall_queries, k)
  exact_qps = len(recall_queries) / (time.perf_counter() - start)
  hits = [len(np.intersect1d(a, b)) for a, b in zip(rows[:len(recall_queries)], exact_rows)]
  recall = float(np.sum(hits)) / (len(recall_queries) * k)

  print(json.dumps({
      "num_points": _NUM_POINTS.value,
      "dim": _DIM.value,
      "method": index.method,
      "params": getattr(index, "params", {}),
      f"recall_at_{k}": round(recall, 4),
      "qps": round(qps, 1),
      "exact_qps": round(exact_qps, 1),
      "speedup": round(qps / exact_qps, 1),
      "build_seconds": round(build_seconds, 1),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
  }))


if __name__ == "__main__":
  app.run(main)
