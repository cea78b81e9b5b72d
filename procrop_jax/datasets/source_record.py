"""What a prepared dataset was built from: a small record kept beside the build.

`prepare.ensure_dataset` reuses a prepared TFDS build only when its record names the source
that the config names now:

  manual_dir   the manual directory, an absolute path (null: the builder needs none)
  generation   the CAD generation parameters where the set is generated (else null)
  files        how many files are below the manual directory
  fingerprint  a hash of their relative paths, sizes and modification times
  content      a hash of their relative paths and bytes (taken once, after the build)

The fingerprint reads no file's bytes, so checking a folder of many thousands of photos costs
one `stat` each; a file replaced by another of the same size within the same nanosecond goes
unnoticed. Only when the fingerprint differs and nothing else does (a folder copied or synced
without its files' times) are the bytes read and compared with `content`, so that the same
files do not cost a rebuild, nor the feature caches keyed on the build's source.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

from absl import logging

from procrop_jax import artifacts

RECORD = "procrop_source.json"  # In the build's own folder (name/config/version).


def _file_stats(root: str) -> list[tuple[str, int, int]]:
  """(relative path, size, mtime in ns) of every file below `root`, sorted."""
  stats, seen = [], set()
  # Linked folders are followed as the builders follow them; `seen` stops a link cycle.
  for folder, dirnames, filenames in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:
      dirnames[:] = []
      continue
    seen.add(real)
    for name in filenames:
      path = os.path.join(folder, name)
      try:
        stat = os.stat(path)
      except FileNotFoundError:  # A dangling link or a file removed meanwhile.
        continue
      stats.append((os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns))
  return sorted(stats)


def content_fingerprint(manual_dir: str | None,
                        stats: list[tuple[str, int, int]] | None = None) -> str:
  """A hash of the relative paths and bytes of every file below `manual_dir` (`stats`: its
  `_file_stats`, when already taken)."""
  if stats is None:
    stats = _file_stats(manual_dir) if manual_dir else []
  return artifacts.fingerprint([(rel, artifacts.file_sha256(os.path.join(manual_dir, rel)))
                                for rel, _, _ in stats])


def describe(manual_dir: str | None, generation: Mapping[str, Any] | None, *,
             content: bool = False) -> dict[str, Any]:
  """The record of a source: `manual_dir` (absolute or None) as it is on disk now; with
  `content`, also the hash of its files' bytes (reads them all)."""
  stats = _file_stats(manual_dir) if manual_dir else []
  record = {"manual_dir": manual_dir, "generation": dict(generation) if generation else None,
            "files": len(stats), "fingerprint": artifacts.fingerprint(stats)}
  if content:
    record["content"] = content_fingerprint(manual_dir, stats)
  return record


def matches(recorded: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> bool:
  """Whether a build recorded as `recorded` was made from the source `wanted` (a `describe`
  without content) describes: the same files, or the same bytes under new file times."""
  if recorded is None:
    return False
  plain = {k: v for k, v in recorded.items() if k != "content"}
  if plain == dict(wanted):
    return True
  if not recorded.get("content") or {**plain, "fingerprint": None} != {**wanted,
                                                                       "fingerprint": None}:
    return False
  return content_fingerprint(wanted["manual_dir"]) == recorded["content"]


def cache_fingerprint(record: Mapping[str, Any]) -> str | None:
  """What a cache of a build's examples is keyed on: its source's bytes where recorded (file
  times change when a folder is copied), else the stat fingerprint (older records)."""
  return record.get("content") or record.get("fingerprint")


def read(build_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
  """The record of the build in `build_dir`, or None (an older build, or an unreadable record)."""
  path = pathlib.Path(build_dir) / RECORD
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning("%s is unreadable (%s): the build's source is unknown", path, e)
    return None


def write(build_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
  artifacts.atomic_write_json(pathlib.Path(build_dir) / RECORD, dict(record), indent=1,
                              sort_keys=True)


def summary(record: Mapping[str, Any] | None) -> str:
  """One line naming a source."""
  if record is None:
    return "an unrecorded source (built by an older procrop_jax)"
  text = (f"{record['manual_dir'] or 'no manual directory'} ({record['files']} files, "
          f"fingerprint {record['fingerprint']}")
  if record["generation"]:
    text += f", generated with {json.dumps(record['generation'], sort_keys=True)}"
  return text + ")"


def same_place(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
  """True when two records name the same folder and generation (their files may differ)."""
  return a is not None and (a["manual_dir"], a["generation"]) == (b["manual_dir"],
                                                                  b["generation"])
