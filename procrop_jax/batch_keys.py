"""Keys of a batch dict besides the photos: cached backbone maps and a kept encoding.

Batches are flat dicts (they cross jit, sharding and exported passes as such); a model's
cached backbone maps and its kept encoder output travel in them under these prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FEATURE_PREFIX = "features_"  # Cached backbone maps ("features_stride32", ...).
ENCODING_PREFIX = "encoding_"  # A model's "encoding", kept from an earlier pass.


def batch_features(batch: Mapping[str, Any]) -> dict[str, Any] | None:
  """The cached backbone maps of a batch ({"stride32", ...}), or None for an image batch."""
  feats = {k[len(FEATURE_PREFIX):]: v for k, v in batch.items() if k.startswith(FEATURE_PREFIX)}
  return feats or None


def batch_encoding(batch: Mapping[str, Any]) -> dict[str, Any] | None:
  """The model's "encoding" held by a batch, or None."""
  found = {k[len(ENCODING_PREFIX):]: v for k, v in batch.items()
           if k.startswith(ENCODING_PREFIX)}
  return found or None
