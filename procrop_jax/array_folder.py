"""A folder of row-aligned .npy arrays, written whole or not at all, read memory-mapped.

The on-disk layer of the two training caches (feature_cache.py, canvas_cache.py): one
`NAME.npy` per array (row i of each belongs to example i), `image_id.npy`, and `metadata.json`
(the caller's key and figures, plus the arrays' shapes), written last. A folder is written under
a temporary name and renamed into place when complete, so an interrupted build leaves nothing
that looks finished. `EpochOrder` is the order training visits such a folder's examples in.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping

from absl import logging
import numpy as np


class Writer:
  """Writes `rows` rows of arrays into `out`, a batch at a time, with progress lines.

    with array_folder.Writer(out, rows, "Canvas cache", "photos") as writer:
      for batch in batches:
        writer.append({"canvas": ..., "boxes": ...}, batch["image_id"])
      writer.finish({"key": key})

  Leaving the block without `finish` (an error, an interrupt) removes the temporary folder.
  """

  def __init__(self, out: pathlib.Path, rows: int, what: str, unit: str):
    self.out, self.rows, self.what, self.unit = out, rows, what, unit
    out.parent.mkdir(parents=True, exist_ok=True)
    self.tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    self.arrays: dict[str, np.ndarray] = {}
    self.ids: list[bytes] = []
    self.row = 0
    self.start = time.time()
    self._next_report = 0

  def __enter__(self) -> "Writer":
    return self

  def __exit__(self, exc_type, *unused) -> None:
    if exc_type is not None or self.tmp.exists():
      self.arrays = {}
      shutil.rmtree(self.tmp, ignore_errors=True)

  def append(self, values: Mapping[str, np.ndarray], image_ids: np.ndarray) -> None:
    """The next rows: each array's leading axis is the batch."""
    if not self.arrays:  # Shapes are known after the first batch: open the files.
      self.arrays = {k: np.lib.format.open_memmap(self.tmp / f"{k}.npy", mode="w+",
                                                  dtype=v.dtype, shape=(self.rows,) + v.shape[1:])
                     for k, v in values.items()}
    count = len(image_ids)
    for k, v in values.items():
      self.arrays[k][self.row:self.row + count] = v
    self.ids.extend(np.asarray(image_ids).tolist())
    self.row += count
    if self.row >= self._next_report or self.row == self.rows:
      self._next_report = self.row + max(self.rows // 20, 1)
      elapsed = max(time.time() - self.start, 1e-9)
      logging.info("%s: %d/%d %s (%.1f/s, %.0f s left).", self.what, self.row, self.rows,
                   self.unit, self.row / elapsed, (self.rows - self.row) * elapsed / self.row)

  def finish(self, metadata: Mapping[str, Any]) -> float:
    """Writes the ids and metadata.json, renames the folder into place; returns the seconds."""
    if self.row != self.rows:
      raise ValueError(f"{self.what}: {self.row} rows written, {self.rows} expected")
    for array in self.arrays.values():
      array.flush()
    np.save(self.tmp / "image_id.npy", np.array(self.ids, dtype=object).astype(bytes))
    seconds = round(time.time() - self.start, 1)
    full = {**metadata, "shapes": {k: list(v.shape) for k, v in self.arrays.items()},
            "seconds": seconds}
    (self.tmp / "metadata.json").write_text(json.dumps(full, indent=2))
    self.arrays = {}
    os.replace(self.tmp, self.out)
    return seconds


def is_complete(path: pathlib.Path) -> bool:
  return (path / "metadata.json").is_file()


def open_folder(path: str | os.PathLike[str], what: str,
                rows: Callable[[Mapping[str, Any]], int]
                ) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
  """(metadata, memory-mapped arrays, image_id) of a complete folder, whose arrays must each
  have `rows(metadata)` rows.

  Raises:
    FileNotFoundError: the folder is not complete (no metadata.json).
    ValueError: an array has another row count (the message names its file).
  """
  path = pathlib.Path(path)
  if not is_complete(path):
    raise FileNotFoundError(f"{path} is not a complete {what} (no metadata.json)")
  metadata = json.loads((path / "metadata.json").read_text())
  arrays = {k: np.load(path / f"{k}.npy", mmap_mode="r") for k in metadata["shapes"]}
  image_id = np.load(path / "image_id.npy")
  expected = rows(metadata)
  for k, v in {**arrays, "image_id": image_id}.items():
    if len(v) != expected:
      raise ValueError(f"{path}/{k}.npy has {len(v)} rows, expected {expected}: the {what} is "
                       "damaged; delete the folder to rebuild it.")
  return metadata, arrays, image_id


def read_rows(arrays: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
  """The given rows of every array, in the given order (read in sorted order: sequential in
  the memory map)."""
  order = np.argsort(rows)
  inverse = np.empty_like(order)
  inverse[order] = np.arange(len(order))
  return {k: np.asarray(v[rows[order]])[inverse] for k, v in arrays.items()}


class EpochOrder:
  """Stream position -> example: epoch e visits the n examples in a permutation seeded by
  (seed, e), so a resumed run continues exactly where it stopped. The permutation is drawn once
  per epoch, not once per position."""

  def __init__(self, n: int, seed: int):
    self.n, self.seed = n, seed
    self._epoch: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

  def __call__(self, position: int) -> int:
    epoch, offset = divmod(int(position), self.n)
    if self._epoch is None or self._epoch[0] != epoch:
      self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
    return int(self._epoch[1][offset])
