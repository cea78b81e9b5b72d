r"""Builds the professional-photo database: `main --mode=build_index`.

  python -m procrop_jax.main --mode=build_index --config=configs/default.py \
      --workdir=workdirs/default [--config.retrieval.index_dir=/data/ava_db]

Steps (multi-host: every process runs this with the same config):
  1. process 0 prepares the photo dataset if needed (a TFDS builder; by default `photo_folder`
     over the CAD source photos) while the others wait (`prepare.ensure_dataset`);
  2. each process reads its slice of the photos (`tfds.split_for_jax_process`), runs the jitted
     backbone over its local devices (embedding.TokenExtractor) and writes its own shard of
     float16 reference tokens, batch by batch into a memory map (bounded memory; a progress bar;
     a finished shard is skipped when the command is re-run with the same inputs: its
     `shard_key`, i.e. backbone, weights, image size, tokens grid and photo list, is recorded
     with it, and any difference rebuilds it);
  3. after a barrier, process 0 fits the embedding projection, writes the embeddings of all
     shards and builds the ScaNN index over them, then writes metadata.json (which marks the
     database complete; process 0 removed it before any shard was written, so an interrupted
     build never loads as complete); a last barrier lets every process return together.
The database goes to config.retrieval.index_dir, or <workdir>/reference_db when that is empty.

Config fields read here (config.retrieval; their defaults are in configs/default.py):
  index_dir                 database directory ("" -> <workdir>/reference_db)
  tokens_grid, embedding_grid, embedding_dim   see embedding.py
  search                    index method: auto | brute_force | scann | exact
  database_dataset          TFDS builder of the professional photos
  database_config           its builder config ("" -> "skimage" when config.cad.source is
                            "skimage", else "default")
  database_manual_dir       its manual dir ("" -> config.cad.source when that is a folder)
  database_data_dir         TFDS data dir ("" -> config.data.data_dir)
  database_split
  batch_size                images per extraction step on each host
  scann                     ScaNN tree-AH overrides (index.default_scann_params keys)
and config.model.backbone / pretrained, config.data, config.cad.source, config.seed.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import time
from typing import Any, Iterable, Mapping

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from procrop_jax import artifacts
from procrop_jax import input_pipeline
from procrop_jax import settings as settings_lib
from procrop_jax.datasets import prepare
from procrop_jax.models import efficientnet_lite
from procrop_jax.retrieval import database as database_lib
from procrop_jax.retrieval import embedding as embedding_lib
from procrop_jax.weights import imagenet


@dataclasses.dataclass(frozen=True)
class RetrievalSettings:
  """What retrieval needs from the config (read in `from_config` only)."""
  index_dir: str
  tokens_grid: int
  embedding_grid: int
  embedding_dim: int
  search: str
  database_dataset: str
  database_config: str
  database_manual_dir: str
  database_data_dir: str
  database_split: str
  batch_size: int
  scann: Mapping[str, Any]

  @classmethod
  def from_config(cls, config: Any) -> "RetrievalSettings":
    settings = settings_lib.read(cls, config.retrieval, "config.retrieval")
    return dataclasses.replace(settings, scann=dict(settings.scann))  # A plain, unlocked copy.


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def database_data_config(config: Any) -> dict[str, Any]:
  """The `config.data`-like dict of the professional-photo dataset (see the module docstring)."""
  settings = RetrievalSettings.from_config(config)
  source = config.cad.source or "skimage"
  builder_config = settings.database_config or ("skimage" if source == "skimage" else "default")
  manual_dir = settings.database_manual_dir or (None if source == "skimage" else source)
  # config.data's other fields (image_size, max_pairs, prefetch) carry over as they are.
  return {
      **config.data.to_dict(),
      "dataset": settings.database_dataset,
      "builder_config": builder_config,
      "data_dir": settings.database_data_dir or config.data.data_dir,
      "manual_dir": manual_dir,
      "train_split": settings.database_split,
      "eval_split": settings.database_split,
      "max_boxes": 1,
      "augment": False,
  }


def database_metadata(config: Any) -> dict[str, Any]:
  """The metadata a database built with `config` records (and that loading checks)."""
  metadata = database_lib.expected_metadata(config)
  embedding_lib.check_grids(metadata["tokens_grid"], metadata["embedding_grid"],
                            metadata["embedding_dim"])
  return metadata


# Bump when the bytes of a shard change for the same inputs (token layout, dtype, extractor).
SHARD_FORMAT_VERSION = 2


def weights_fingerprint(config: Any) -> str:
  """Which backbone weights made the tokens: the pretrained file's sha256, or the random seed."""
  if config.model.pretrained:
    digest = artifacts.file_sha256(imagenet.checkpoint_path(config.model.backbone))
    return f"sha256:{digest[:16]}"
  return f"random:seed={config.seed}"


def photos_fingerprint(config: Any) -> dict[str, Any]:
  """Which photos the database holds: the prepared dataset's name, version and split size."""
  settings = input_pipeline.DataSettings.from_config(database_data_config(config))
  builder = input_pipeline.load_builder(settings)
  split = builder.info.splits[settings.eval_split.split("[")[0]]  # A slice has no byte count.
  return {"dataset": builder.info.full_name, "split": settings.eval_split,
          "num_examples": int(split.num_examples), "num_bytes": int(split.num_bytes)}


def shard_key(config: Any) -> dict[str, Any]:
  """Everything that makes a shard's bytes; a shard is reused only when its key is this."""
  metadata = database_lib.expected_metadata(config)
  return {"format_version": SHARD_FORMAT_VERSION, "backbone": metadata["backbone"],
          "pretrained": metadata["pretrained"], "weights": weights_fingerprint(config),
          "image_size": metadata["image_size"], "tokens_grid": metadata["tokens_grid"],
          "photos": photos_fingerprint(config)}


def create_backbone(config: Any):
  """The backbone whose stride-32 features the tokens are made of (frozen, inference mode)."""
  backbone = efficientnet_lite.EfficientNetLite(config.model.backbone,
                                                rngs=nnx.Rngs(config.seed))
  if config.model.pretrained:
    imagenet.load_pretrained(backbone, config.model.backbone)
  return backbone


def create_extractor(config: Any, backbone=None) -> embedding_lib.TokenExtractor:
  """A TokenExtractor for `config` (its backbone built with `create_backbone` unless given)."""
  settings = RetrievalSettings.from_config(config)
  return embedding_lib.TokenExtractor(
      backbone if backbone is not None else create_backbone(config),
      tokens_grid=settings.tokens_grid, image_size=int(config.data.image_size),
      batch_size=settings.batch_size)


def extract_tokens(batches: Iterable[Mapping[str, np.ndarray]],
                   extractor: embedding_lib.TokenExtractor, *, total: int | None = None,
                   desc: str = "tokens") -> Iterable[tuple[list[str], np.ndarray]]:
  """Yields (ids, tokens) per batch of the input pipeline's eval format (valid rows only)."""
  with tqdm.tqdm(total=total, desc=desc, unit="photo", mininterval=5.0,
                 disable=total == 0) as bar:
    for batch in batches:
      valid = np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool)), bool)
      if not valid.any():
        continue
      tokens = extractor(batch["image"][valid], batch["image_valid_hw"][valid])
      ids = [i.decode("utf-8") if isinstance(i, bytes) else str(i)
             for i in np.asarray(batch["image_id"])[valid]]
      bar.update(len(ids))
      yield ids, tokens


def _open_photos(config: Any, *, batch_size: int, all_processes: bool = False):
  """(this host's number of photos, its batch iterator) for the database dataset."""

  data_config = database_data_config(config)
  prepare.ensure_dataset(data_config)  # Every process: process 0 builds, the others wait.
  settings = input_pipeline.DataSettings.from_config(data_config)
  builder = input_pipeline.load_builder(settings)
  split = settings.eval_split
  if all_processes:  # Every process reads every photo (the in-memory database).
    num = builder.info.splits[split].num_examples
    ds = input_pipeline.create_eval_dataset(
        settings, batch_size=batch_size, split=split) if jax.process_count() == 1 else None
    if ds is None:
      raise NotImplementedError(
          "an in-memory reference database (config.retrieval.index_dir='') is single-process "
          "only; build one with --mode=build_index and set config.retrieval.index_dir")
    return num, ds.as_numpy_iterator()
  num = len(input_pipeline.open_source(builder, tfds.split_for_jax_process(split)))
  if num == 0:
    return 0, iter(())
  ds = input_pipeline.create_eval_dataset(settings, batch_size=batch_size, split=split)
  return num, ds.as_numpy_iterator()


def finalize_database(directory: str | os.PathLike[str], config: Any, *, num_shards: int,
                      source: Mapping[str, Any] | None = None,
                      key: Mapping[str, Any] | None = None
                      ) -> database_lib.ReferenceDatabase:
  """Process 0's part: projection, embeddings and index over all shards; metadata last.

  `key` (the shards' `shard_key`) is recorded in the metadata and the database's fingerprint,
  so that neighbour caches made with other weights or photos are not reused.
  """
  directory = pathlib.Path(directory)
  settings = RetrievalSettings.from_config(config)
  ids, shards = database_lib._read_shards(directory, num_shards, mmap=True)  # pylint: disable=protected-access
  if not ids:
    raise database_lib.EmptyDatabaseError(
        f"no photos were found for the reference database (source {dict(source or {})}); "
        "put photos in the folder or point config.retrieval.database_* at a dataset with photos")
  tokens = database_lib.ShardedTokens(shards)
  metadata = {**database_metadata(config), "source": dict(source or {}), "shards": num_shards}
  if key:
    metadata.update(build_key=dict(key), tokens_key=artifacts.fingerprint(dict(key)))
  start = time.perf_counter()
  projection = embedding_lib.fit_projection(
      tokens, tokens_grid=settings.tokens_grid, embedding_grid=settings.embedding_grid,
      embedding_dim=settings.embedding_dim, seed=config.seed)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{database_lib.EMBEDDINGS}.",
                             suffix=".tmp")
  os.close(fd)
  embeddings = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                         shape=(len(ids), projection.dim))
  for s in range(0, len(ids), 65_536):
    embeddings[s:s + 65_536] = projection(tokens[s:s + 65_536])
  embeddings.flush()
  os.replace(tmp, directory / database_lib.EMBEDDINGS)  # The memory map follows the file.
  logging.info("Embedded %d photos in %.1f s", len(ids), time.perf_counter() - start)
  start = time.perf_counter()
  db = database_lib.ReferenceDatabase.from_tokens(
      ids, tokens, metadata=metadata, index_method=settings.search,
      index_params=settings.scann, projection=projection, embeddings=embeddings)
  logging.info("Built the %s index in %.1f s", db.index.method, time.perf_counter() - start)
  db.directory = directory
  db.save(directory)
  return db


def build_index(config: Any, workdir: str) -> pathlib.Path:
  """Embeds the configured professional photos and writes the database; returns its directory.

  See the module docstring for the steps, files and config fields.
  """
  settings = RetrievalSettings.from_config(config)
  database_metadata(config)  # Validates the grids before any work.
  directory = pathlib.Path(settings.index_dir or os.path.join(workdir, "reference_db"))
  directory.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:  # Incomplete until finalize_database writes it again.
    database_lib.invalidate(directory)
  extractor = create_extractor(config)
  num_photos, batches = _open_photos(config, batch_size=extractor.batch_size)
  key = shard_key(config)
  index, count = jax.process_index(), jax.process_count()
  start = time.perf_counter()
  if database_lib.shard_is_done(directory, index, count, num_photos, key):
    logging.info("Shard %d/%d of %s is already complete", index, count, directory)
  else:
    writer = database_lib.ShardWriter(directory, index, count, num_photos=num_photos,
                                      tokens_shape=extractor.token_shape, key=key)
    for ids, tokens in extract_tokens(batches, extractor, total=num_photos,
                                      desc=f"reference tokens {index + 1}/{count}"):
      writer.add(ids, tokens)
    writer.close()
    seconds = time.perf_counter() - start
    logging.info("Process %d: %d photos in %.1f s (%.2f photos/s)", index, num_photos, seconds,
                 num_photos / max(seconds, 1e-9))
  _barrier("procrop_retrieval_shards_written")
  if jax.process_index() == 0:
    source = {k: v for k, v in database_data_config(config).items()
              if k in ("dataset", "builder_config", "data_dir", "manual_dir", "train_split")}
    db = finalize_database(directory, config, num_shards=count, source=source, key=key)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    print(f"Reference database: {db.num_photos} photos, {db.index.method} index, "
          f"{size / db.num_photos:,.0f} bytes/photo on disk -> {directory}", flush=True)
  _barrier("procrop_retrieval_database_ready")
  return directory


def build_in_memory(config: Any, *, extractor: embedding_lib.TokenExtractor | None = None
                    ) -> database_lib.ReferenceDatabase:
  """The database of config.retrieval's photos, embedded now and kept in memory (no files).

  What `load_database` returns when config.retrieval.index_dir is empty; meant for small photo
  sets like the embedded default's (single process).
  """
  settings = RetrievalSettings.from_config(config)
  extractor = extractor or create_extractor(config)
  num, batches = _open_photos(config, batch_size=extractor.batch_size, all_processes=True)
  ids, tokens = [], []
  for batch_ids, batch_tokens in extract_tokens(batches, extractor, total=num):
    ids.extend(batch_ids)
    tokens.append(batch_tokens)
  if not ids:
    raise database_lib.EmptyDatabaseError(
        f"no photos in {database_data_config(config)} for the in-memory reference database")
  return database_lib.ReferenceDatabase.from_tokens(
      ids, np.concatenate(tokens), metadata=database_metadata(config),
      index_method=settings.search, index_params=settings.scann)


def load_database(config: Any, *, extractor: embedding_lib.TokenExtractor | None = None
                  ) -> database_lib.ReferenceDatabase:
  """config.retrieval.index_dir's database (checked against the config), or an in-memory one."""
  settings = RetrievalSettings.from_config(config)
  if settings.index_dir:
    return database_lib.ReferenceDatabase.load(settings.index_dir, config=config)
  return build_in_memory(config, extractor=extractor)
