"""The professional-photo database: ids, reference tokens, embeddings, projection and index.

On disk (`build.build_index` writes it, `ReferenceDatabase.load` reads it):

  metadata.json                       written last: its presence means the database is complete
  shards/shard-IIIII-of-NNNNN.ids.json      the photos' ids, in row order
  shards/shard-IIIII-of-NNNNN.tokens.npy    float16 [n, T, C] reference tokens (memory-mapped)
  shards/shard-IIIII-of-NNNNN.done          written after the two above, with the shard's key
                                            (what made it: see build.shard_key); a restart skips
                                            the shard only when the key is the same
  projection.npz                      the embedding's PCA (embedding.Projection)
  embeddings.npy                      float32 [N, D], L2-normalised, rows = shards in order
  index/                              the searcher (index.py): index.json (+ scann/)

Every file is written under a unique temporary name and renamed into place. A (re)build first
removes metadata.json, so an interrupted one never loads as complete; a shard being rewritten
loses its `.done` first for the same reason.

Each process writes its own shard (rows = its slice of the photos); process 0 then fits the
projection, writes the embeddings and builds the index over all shards. Bytes per photo:
T * C * 2 (tokens; 40,960 at 4x4 x 1280) + D * 4 (embedding; 1,024 at 256) + the index (ScaNN
keeps its own float32 copy for re-ranking plus 128 B of AH codes) + the id.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import numpy as np

from procrop_jax import artifacts
from procrop_jax import photos as photos_lib
from procrop_jax.retrieval import embedding as embedding_lib
from procrop_jax.retrieval import index as index_lib

FORMAT = "procrop_reference_db"
VERSION = 1
METADATA = "metadata.json"
SHARDS_DIR = "shards"
PROJECTION = "projection.npz"
EMBEDDINGS = "embeddings.npy"
INDEX_DIR = "index"
# Metadata fields that must equal the model config's for the tokens and embeddings to fit it.
CHECKED_FIELDS = ("backbone", "pretrained", "image_size", "tokens_grid", "embedding_grid",
                  "embedding_dim")


class DatabaseError(ValueError):
  """A reference database that cannot be used."""


class DatabaseMismatchError(DatabaseError):
  """The database was built for another backbone, input size or grid than the config's."""


class EmptyDatabaseError(DatabaseError):
  """The database holds no photos."""


# ----------------------------------------------------------------------------------------- ids
def exclusion_ids(image_id: str | bytes) -> tuple[str, ...]:
  """What a training image must not retrieve: itself, its key and, for CAD's `<id>_<k>`, `<id>`.

  `ReferenceDatabase.rows_for_ids` matches these against database ids and photo keys. The source
  is derived by name, so a query named like "IMG_1234" also excludes a database photo whose key
  is "IMG": a harmless over-exclusion.
  """
  if isinstance(image_id, bytes):
    image_id = image_id.decode("utf-8")
  # Its own photo key too: a database photo saved as "<id>.jpg" (e.g. the example's expert crop,
  # retrieval/crop_regions.py) has that key although its id differs.
  own_key = photos_lib.photo_key(f"{image_id}.jpg")  # "<id>.jpg"'s key, whatever dots the id has.
  source = photos_lib.source_photo_id(image_id)
  # Photos whose names repeat get a checksum suffix in CAD names (`photos.photo_ids`) that their
  # database key lacks: exclude the bare key too (and so every photo of that name: harmless).
  bare = re.sub(r"-[0-9a-f]{8}$", "", source)
  return tuple(dict.fromkeys([image_id, source, own_key, bare]))


# -------------------------------------------------------------------------------------- shards
def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}"


def _shard_file(prefix: pathlib.Path, suffix: str) -> pathlib.Path:
  return prefix.with_name(prefix.name + suffix)


class ShardWriter:
  """Writes one shard's tokens into a preallocated memory map, then its ids and done-marker.

  Memory stays bounded by one batch whatever the shard's size. `key` (see `build.shard_key`)
  is recorded in the done-marker; `shard_is_done` compares it.
  """

  def __init__(self, directory: str | os.PathLike[str], index: int, count: int, *,
               num_photos: int, tokens_shape: tuple[int, int],
               key: Mapping[str, Any] | None = None):
    self.prefix = pathlib.Path(directory) / SHARDS_DIR / shard_name(index, count)
    self.prefix.parent.mkdir(parents=True, exist_ok=True)
    self.num_photos = num_photos
    self.key = dict(key or {})
    # A shard being rewritten is not done until the new one is complete.
    _shard_file(self.prefix, ".done").unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=self.prefix.parent, prefix=f".{self.prefix.name}.tokens.",
                               suffix=".npy.tmp")
    os.close(fd)
    self._tmp = pathlib.Path(tmp)
    self._tokens = np.lib.format.open_memmap(
        self._tmp, mode="w+", dtype=embedding_lib.TOKEN_DTYPE,
        shape=(num_photos, *tokens_shape)) if num_photos else None
    self.ids: list[str] = []

  def add(self, ids: Sequence[str | bytes], tokens: np.ndarray) -> None:
    n = len(ids)
    if len(self.ids) + n > self.num_photos:
      raise ValueError(f"shard {self.prefix.name} expected {self.num_photos} photos, got more")
    self._tokens[len(self.ids):len(self.ids) + n] = tokens
    self.ids.extend(i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids)

  def close(self) -> None:
    if len(self.ids) != self.num_photos:
      raise ValueError(f"shard {self.prefix.name} expected {self.num_photos} photos, got "
                       f"{len(self.ids)}")
    if self._tokens is not None:
      self._tokens.flush()
      del self._tokens
    else:
      with open(self._tmp, "wb") as f:
        np.save(f, np.zeros((0, 0, 0), embedding_lib.TOKEN_DTYPE))
    os.replace(self._tmp, _shard_file(self.prefix, ".tokens.npy"))
    artifacts.atomic_write_json(_shard_file(self.prefix, ".ids.json"), self.ids)
    artifacts.atomic_write_json(_shard_file(self.prefix, ".done"),  # Last: marks it complete.
                                {"num_photos": self.num_photos, "key": self.key})


def shard_is_done(directory: str | os.PathLike[str], index: int, count: int,
                  num_photos: int, key: Mapping[str, Any] | None = None) -> bool:
  """Whether a previous run wrote this shard completely from the same inputs (`key`).

  A shard made from other inputs (another backbone, weights, image size, grid or photo list), an
  unreadable done-marker or a missing file means the shard is built again; the log says why.
  """
  prefix = pathlib.Path(directory) / SHARDS_DIR / shard_name(index, count)
  done = _shard_file(prefix, ".done")
  if not done.exists():
    return False
  try:
    record = json.loads(done.read_text())
    recorded = (record["num_photos"], record.get("key", {}))
  except (ValueError, KeyError, TypeError) as e:
    logging.warning("Rebuilding shard %s: its done-marker is unreadable (%s)", prefix, e)
    return False
  expected = (num_photos, json.loads(json.dumps(dict(key or {}))))
  if recorded != expected:
    diffs = _differences({"num_photos": recorded[0], **recorded[1]},
                         {"num_photos": expected[0], **expected[1]})
    logging.warning("Rebuilding shard %s: made from other inputs (%s)", prefix, diffs)
    return False
  missing = [s for s in (".tokens.npy", ".ids.json") if not _shard_file(prefix, s).exists()]
  if missing:
    logging.warning("Rebuilding shard %s: %s missing", prefix, ", ".join(missing))
    return False
  return True


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
  keys = sorted(set(old) | set(new))
  return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys
                   if old.get(k) != new.get(k))


def invalidate(directory: str | os.PathLike[str]) -> None:
  """Marks the database at `directory` incomplete (before anything in it is rewritten)."""
  (pathlib.Path(directory) / METADATA).unlink(missing_ok=True)


def _read_shards(directory: pathlib.Path, count: int, *, mmap: bool
                 ) -> tuple[list[str], list[np.ndarray]]:
  ids, tokens = [], []
  for i in range(count):
    prefix = directory / SHARDS_DIR / shard_name(i, count)
    if not _shard_file(prefix, ".done").exists():
      raise DatabaseError(f"shard {prefix.name} of {directory} is missing or incomplete: "
                          "did every process finish --mode=build_index?")
    try:
      shard_ids = json.loads(_shard_file(prefix, ".ids.json").read_text())
    except (OSError, ValueError) as e:
      raise DatabaseError(f"{_shard_file(prefix, '.ids.json')} is unreadable ({e}): rebuild "
                          "the database with --mode=build_index") from None
    if shard_ids:
      tokens.append(np.load(prefix.with_name(prefix.name + ".tokens.npy"),
                            mmap_mode="r" if mmap else None))
      ids.extend(shard_ids)
  return ids, tokens


class ShardedTokens:
  """Row access to tokens stored as several [n_i, T, C] arrays, as if concatenated."""

  def __init__(self, shards: Sequence[np.ndarray]):
    self.shards = list(shards)
    self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
    first = self.shards[0].shape[1:] if self.shards else (0, 0)
    self.shape = (int(self.offsets[-1]), *first)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    rows = (np.arange(*key.indices(len(self))) if isinstance(key, slice) else np.asarray(key))
    return self.take(rows)

  def take(self, rows: np.ndarray) -> np.ndarray:
    """rows (any shape, -1 = none) -> rows.shape + (T, C) float16; -1 rows are zeros."""
    rows = np.asarray(rows, np.int64)
    flat = rows.reshape(-1)
    out = np.zeros((len(flat), *self.shape[1:]), embedding_lib.TOKEN_DTYPE)
    if np.any(flat >= len(self)):
      raise IndexError(f"row {flat.max()} out of range for {len(self)} photos")
    shard_of = np.searchsorted(self.offsets[1:], flat, side="right")
    for s in np.unique(shard_of[flat >= 0]):
      sel = np.flatnonzero((shard_of == s) & (flat >= 0))
      local = flat[sel] - self.offsets[s]
      order = np.argsort(local, kind="stable")  # Sorted reads from the memory map.
      out[sel[order]] = self.shards[s][local[order]]
    return out.reshape(*rows.shape, *self.shape[1:])


# ------------------------------------------------------------------------------------ metadata
def expected_metadata(config: Any) -> dict[str, Any]:
  """The database fields a config requires (see CHECKED_FIELDS)."""
  retrieval = config.retrieval
  return {
      "backbone": config.model.backbone,
      "pretrained": bool(config.model.pretrained),
      "image_size": int(config.data.image_size),
      "tokens_grid": int(retrieval.tokens_grid),
      "embedding_grid": int(retrieval.embedding_grid),
      "embedding_dim": int(retrieval.embedding_dim),
  }


def check_metadata(metadata: Mapping[str, Any], config: Any, *, where: str = "") -> None:
  """Raises DatabaseMismatchError naming every field where the database and config differ."""
  expected = expected_metadata(config)
  diffs = [f"{k}: database {metadata.get(k)!r} != config {v!r}" for k, v in expected.items()
           if metadata.get(k) != v]
  if diffs:
    raise DatabaseMismatchError(
        f"reference database {where or ''} does not fit the config ({'; '.join(diffs)}). "
        "Rebuild it with `python -m procrop_jax.main --mode=build_index --config=<this config> "
        "--workdir=...` or point config.retrieval.index_dir at a database built for it.")


def _fingerprint(metadata: Mapping[str, Any], ids: Sequence[str],
                 projection: embedding_lib.Projection) -> str:
  """Changes with anything that changes a search result: caches of neighbours key on it."""
  h = hashlib.sha256()
  fields = {k: metadata.get(k) for k in CHECKED_FIELDS}
  if metadata.get("tokens_key"):  # The weights and photos the tokens came from (built on disk).
    fields["tokens_key"] = metadata["tokens_key"]
  h.update(json.dumps(fields, sort_keys=True).encode())
  h.update("\n".join(ids).encode())
  h.update(projection.mean.tobytes())
  h.update(projection.components.tobytes())
  return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ database
class ReferenceDatabase:
  """Searchable professional photos: embeddings + index for search, tokens for the model.

  Build one in memory with `from_tokens`, or load what `build.build_index` wrote with `load`.
  """

  def __init__(self, *, ids: Sequence[str], tokens: ShardedTokens,
               projection: embedding_lib.Projection, embeddings: np.ndarray,
               index: index_lib.Index, metadata: Mapping[str, Any],
               directory: pathlib.Path | None = None):
    self.ids = list(ids)
    self.tokens = tokens
    self.projection = projection
    self.embeddings = embeddings
    self.index = index
    self.metadata = dict(metadata)
    self.directory = directory
    self._rows_by_id: dict[str, list[int]] | None = None

  @property
  def num_photos(self) -> int:
    return len(self.ids)

  @property
  def fingerprint(self) -> str:
    return self.metadata["fingerprint"]

  @property
  def token_shape(self) -> tuple[int, int]:
    """(T, C) of one photo's reference tokens."""
    return tuple(self.tokens.shape[1:])

  # -------------------------------------------------------------------------- construction
  @classmethod
  def from_tokens(cls, ids: Sequence[str | bytes], tokens: np.ndarray | ShardedTokens, *,
                  metadata: Mapping[str, Any], index_method: str = "auto",
                  index_params: Mapping[str, Any] | None = None,
                  projection: embedding_lib.Projection | None = None,
                  embeddings: np.ndarray | None = None) -> "ReferenceDatabase":
    """Fits the projection (unless given), embeds and indexes photos held in memory.

    Args:
      ids: [N] photo ids, unique.
      tokens: [N, T, C] reference tokens (embedding.TokenExtractor output).
      metadata: at least the CHECKED_FIELDS (see `expected_metadata`).
      index_method: index.build_index's method ("auto", "brute_force", "scann", "exact").
      index_params: ScaNN tree-AH overrides.
      projection: a fitted projection (default: fit on these tokens).
      embeddings: precomputed embeddings for these tokens and projection (default: computed).
    """
    ids = [i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in ids]
    if not ids:
      raise EmptyDatabaseError("the reference database has no photos: the photo source is empty "
                               "(check config.retrieval's database dataset / folder)")
    if len(set(ids)) != len(ids):
      raise DatabaseError("photo ids in the reference database must be unique")
    if not isinstance(tokens, ShardedTokens):
      tokens = ShardedTokens([np.asarray(tokens, embedding_lib.TOKEN_DTYPE)])
    if len(tokens) != len(ids):
      raise DatabaseError(f"{len(ids)} ids for {len(tokens)} token rows")
    metadata = dict(metadata)
    missing = [k for k in CHECKED_FIELDS if k not in metadata]
    if missing:
      raise ValueError(f"metadata lacks {missing}")
    if projection is None:
      projection = embedding_lib.fit_projection(
          tokens, tokens_grid=metadata["tokens_grid"],
          embedding_grid=metadata["embedding_grid"], embedding_dim=metadata["embedding_dim"])
    if embeddings is None:
      embeddings = projection(tokens)
    index = index_lib.build_index(embeddings, method=index_method, params=dict(index_params or {}))
    metadata.update({
        "format": FORMAT, "version": VERSION, "num_photos": len(ids),
        "token_channels": int(tokens.shape[2]), "num_tokens": int(tokens.shape[1]),
        "token_dtype": np.dtype(embedding_lib.TOKEN_DTYPE).name,
        "index": {"method": index.method, "params": getattr(index, "params", {})},
    })
    metadata["fingerprint"] = _fingerprint(metadata, ids, projection)
    return cls(ids=ids, tokens=tokens, projection=projection, embeddings=embeddings,
               index=index, metadata=metadata)

  def save(self, directory: str | os.PathLike[str]) -> pathlib.Path:
    """Writes the database. Where it already lives there (`build`), writes only what is new:
    the shards and embeddings are in place (memory-mapped) and are not rewritten."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    invalidate(directory)
    shards = self.metadata.get("shards")
    in_place = self.directory is not None and self.directory.resolve() == directory.resolve()
    if not in_place:
      writer = ShardWriter(directory, 0, 1, num_photos=self.num_photos,
                           tokens_shape=self.token_shape)
      for start in range(0, self.num_photos, 4096):
        writer.add(self.ids[start:start + 4096], self.tokens[start:start + 4096])
      writer.close()
      shards = 1
      with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{EMBEDDINGS}.", suffix=".tmp",
                                       delete=False) as f:
        np.save(f, np.asarray(self.embeddings, np.float32))
      os.replace(f.name, directory / EMBEDDINGS)
    self.projection.save(directory / PROJECTION)
    self.index.save(directory / INDEX_DIR)
    metadata = {**self.metadata, "shards": shards}
    artifacts.atomic_write_json(directory / METADATA, metadata, indent=1,  # Last: complete.
                                sort_keys=True)
    self.metadata, self.directory = metadata, directory
    return directory

  @classmethod
  def load(cls, directory: str | os.PathLike[str], *, config: Any = None, mmap: bool = True,
           num_threads: int = 0) -> "ReferenceDatabase":
    """Loads a database; with `config`, refuses one built for another model set-up.

    Raises:
      DatabaseError: no (complete) database there; DatabaseMismatchError: it does not fit
        `config`; EmptyDatabaseError: it has no photos.
    """
    directory = pathlib.Path(directory)
    meta_path = directory / METADATA
    if not meta_path.exists():
      raise DatabaseError(f"no reference database at {directory} ({METADATA} missing: not built, "
                          "or the build did not finish); build one with --mode=build_index")
    try:
      metadata = json.loads(meta_path.read_text())
    except ValueError as e:
      raise DatabaseError(f"{meta_path} is unreadable ({e}): rebuild the database with "
                          "--mode=build_index") from None
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
      raise DatabaseError(f"{directory} holds format {metadata.get('format')!r} v"
                          f"{metadata.get('version')}, expected {FORMAT!r} v{VERSION}")
    if config is not None:
      check_metadata(metadata, config, where=str(directory))
    if not metadata.get("num_photos"):
      raise EmptyDatabaseError(f"the reference database at {directory} has no photos")
    ids, shards = _read_shards(directory, metadata["shards"], mmap=mmap)
    if len(ids) != metadata["num_photos"]:
      raise DatabaseError(f"{directory}: metadata says {metadata['num_photos']} photos, shards "
                          f"hold {len(ids)}")
    embeddings = np.load(directory / EMBEDDINGS, mmap_mode="r" if mmap else None)
    index = index_lib.load_index(directory / INDEX_DIR, embeddings, num_threads=num_threads)
    return cls(ids=ids, tokens=ShardedTokens(shards),
               projection=embedding_lib.Projection.load(directory / PROJECTION),
               embeddings=embeddings, index=index, metadata=metadata, directory=directory)

  # ------------------------------------------------------------------------------- queries
  def rows_for_ids(self, ids: Iterable[str | bytes]) -> np.ndarray:
    """Database rows whose id, or photo key (see `photo_key`), is one of `ids`."""
    if self._rows_by_id is None:
      table: dict[str, list[int]] = {}
      for row, photo_id in enumerate(self.ids):
        for name in dict.fromkeys([photo_id, photos_lib.photo_key(photo_id)]):
          table.setdefault(name, []).append(row)
      self._rows_by_id = table
    rows = []
    for i in ids:
      rows.extend(self._rows_by_id.get(i.decode("utf-8") if isinstance(i, bytes) else i, ()))
    return np.unique(np.asarray(rows, np.int64))

  def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
    """[B, T, C] query tokens (same extractor set-up) -> [B, D] embeddings."""
    if tuple(tokens.shape[1:]) != self.token_shape:
      raise ValueError(f"query tokens {tokens.shape[1:]} do not match the database's "
                       f"{self.token_shape}")
    return self.projection(tokens)

  def search(self, embeddings: np.ndarray, k: int, *,
             exclude_ids: Sequence[Iterable[str | bytes]] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows per query embedding, never one named (by id or photo key) in `exclude_ids`.

    Returns rows [Q, k] int64 (-1 where fewer than k photos are admissible) and scores [Q, k].
    """
    exclude_rows = None if exclude_ids is None else [self.rows_for_ids(e) for e in exclude_ids]
    return self.index.search(embeddings, k, exclude_rows=exclude_rows)

  def gather_tokens(self, rows: np.ndarray) -> np.ndarray:
    """rows [..., K] -> [..., K, T, C] float16 reference tokens (zeros for row -1)."""
    return self.tokens.take(rows)
