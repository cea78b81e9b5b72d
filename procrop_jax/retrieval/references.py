"""Reference tokens of the retrieved professional photos, added to training and eval batches.

The trainer and the predictor hold one `References` when the model uses retrieval
(`config.model.num_references` > 0); `add_references` wraps a batch iterator with it.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterator

import ml_collections
import numpy as np

from procrop_jax.retrieval import build as retrieval_build
from procrop_jax.retrieval import neighbors


class References:
  """Reference tokens of the retrieved professional photos, added to host batches (K > 0).

  The database is `config.retrieval.index_dir` (from `--mode=build_index`) or, when that is
  empty, built in memory from the configured photos. Each example's neighbours are computed once
  per (dataset, split) and cached under WORKDIR/neighbors; an example never retrieves itself or
  its own source photo.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.cache_dir = os.path.join(workdir, "neighbors")
    # An on-disk database needs no extractor unless a neighbour table must be computed.
    self.database = retrieval_build.load_database(
        config, extractor=None if config.retrieval.index_dir else self.extractor)
    self._tables = {}

  @functools.cached_property
  def extractor(self):
    """The database's token extractor (backbone + jitted pass), built once and shared."""
    return retrieval_build.create_extractor(self.config)

  def retriever(self, k: int) -> neighbors.Retriever:
    """Images -> the reference tokens of their k nearest professional photos (for new photos,
    which have no cached neighbours)."""
    return neighbors.Retriever(self.database, self.extractor, k=k)

  def for_split(self, data_config: ml_collections.ConfigDict, split: str
                ) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """A function adding `reference_tokens` [B, K, T, C] to batches of `split`."""
    key = (data_config.dataset, data_config.builder_config, split)
    if key not in self._tables:
      config = self.config.copy_and_resolve_references()
      with config.unlocked():
        config.data = data_config
      self._tables[key] = neighbors.precompute_neighbors(
          config, self.database, split=split, cache_dir=self.cache_dir,
          # The shared extractor if it exists; else precompute builds one only on a cache miss.
          extractor=self.__dict__.get("extractor"))
    table = self._tables[key]

    def add(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
      tokens = neighbors.gather_reference_tokens(self.database, table.lookup(batch["image_id"]))
      return {**batch, "reference_tokens": tokens}
    return add


def add_references(references: References | None, batches: Iterator[dict[str, np.ndarray]],
                   data_config: ml_collections.ConfigDict, split: str
                   ) -> Iterator[dict[str, np.ndarray]]:
  """`batches` of `split` with their cached neighbours' tokens (unchanged without retrieval)."""
  if references is None:
    return batches
  return map(references.for_split(data_config, split), batches)
