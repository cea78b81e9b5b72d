"""What refinement rounds keep on disk beside a CAD set, and how they write annotations.

  <root>/annotations/<stem>.txt     the base lines, then this round's extra lines
                                    "y1 x1 y2 x2 score" (pixels, score the model's, in [0, 1])
  <root>/refine/base/<stem>.txt     the annotation as it was before its first round
  <root>/refine/state-<p>.json      process p's round: its model, split, position, counts
  <root>/refine/rounds.jsonl        one summary line per finished round

Each round rewrites a canvas's file as its base lines plus the round's selection, so rounds
never pile up boxes of older models, and a round that sees the same proposals leaves the files
as they are. Every file is written through a temporary file and a rename.

The state files change before and after every batch of annotation writes, so their fingerprint
(`annotations_fingerprint`) changes whenever the annotations may have: the `procrop_cad` builder
records it, and `datasets.prepare.ensure_dataset` rebuilds a prepared set whose annotations were
refined since.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

from etils import epath
import numpy as np

from procrop_jax import artifacts
from procrop_jax.datasets import annotation_files

REFINE_DIR = "refine"
ROUNDS = "rounds.jsonl"


def state_path(root: str | pathlib.Path, process: int = 0) -> pathlib.Path:
  return pathlib.Path(root) / REFINE_DIR / f"state-{process}.json"


def read_state(root: str | pathlib.Path, process: int = 0) -> dict[str, Any] | None:
  path = state_path(root, process)
  return json.loads(path.read_text()) if path.is_file() else None


def write_state(root: str | pathlib.Path, state: dict[str, Any], process: int = 0) -> None:
  path = state_path(root, process)
  path.parent.mkdir(parents=True, exist_ok=True)
  artifacts.atomic_write_json(path, state, indent=1, sort_keys=True)


def annotations_fingerprint(root: str | pathlib.Path) -> str:
  """A hash of every process's round state: "" for a set never refined."""
  paths = sorted((epath.Path(root) / REFINE_DIR).glob("state-*.json"))  # The builder's paths.
  if not paths:
    return ""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
  return digest.hexdigest()[:16]


def append_round(root: str | pathlib.Path, summary: dict[str, Any]) -> None:
  path = pathlib.Path(root) / REFINE_DIR / ROUNDS
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(summary, sort_keys=True) + "\n")


def read_rounds(root: str | pathlib.Path) -> list[dict[str, Any]]:
  path = pathlib.Path(root) / REFINE_DIR / ROUNDS
  return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def base_path(root: str | pathlib.Path, stem: str) -> pathlib.Path:
  """The canvas's annotation as it was before its first round, saved on first use."""
  root = pathlib.Path(root)
  path = root / REFINE_DIR / "base" / f"{stem}.txt"
  if not path.is_file():
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_bytes(path, (root / "annotations" / f"{stem}.txt").read_bytes())
  return path


def pseudo_label(path: str | pathlib.Path) -> np.ndarray:
  """The first box of an annotation file (the pseudo-label), x1y1x2y2 pixels."""
  boxes, _ = annotation_files.parse_yxyx_lines(path)
  if not len(boxes):
    raise annotation_files.AnnotationError(path, None, "no box to refine around")
  return boxes[0]


def extra_lines(boxes_px: np.ndarray, scores: np.ndarray) -> str:
  """x1y1x2y2 pixel boxes and scores as "y1 x1 y2 x2 score" lines (GAIC's order)."""
  return "".join(f"{y1} {x1} {y2} {x2} {s:.4f}\n"
                 for (x1, y1, x2, y2), s in zip(np.asarray(boxes_px, np.int64).tolist(), scores))


def write_annotation(root: str | pathlib.Path, stem: str, text: str) -> bool:
  """Writes the canvas's annotation if it differs; returns whether it did."""
  path = pathlib.Path(root) / "annotations" / f"{stem}.txt"
  if path.is_file() and path.read_text() == text:
    return False
  artifacts.atomic_write_text(path, text)
  return True
