"""How runs write and guard what they leave on disk: atomic writes, fingerprints, workdir locks.

Every artifact is written to a unique temporary name beside its destination and renamed into
place, so a reader sees the old file or the new one, never half of one, and two writers never
share a temporary file. Caches record a fingerprint of everything that made them and are reused
only when it matches.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pathlib
import socket
import tempfile
from typing import Any, Iterator

PathLike = str | os.PathLike[str]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a unique temporary file and a rename."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # The rename must not land before the bytes do (power loss).
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def atomic_write_text(path: PathLike, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, **dumps_kwargs) -> None:
  atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def cache_dir() -> pathlib.Path:
  """The user's procrop_jax cache: $PROCROP_CACHE_DIR, else ~/.cache/procrop_jax (converted
  ImageNet weights; compiled model passes in its `jax/` folder)."""
  env = os.environ.get("PROCROP_CACHE_DIR")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "procrop_jax"


def fingerprint(obj: Any) -> str:
  """A short stable hash of a JSON-serialisable value (dict keys in any order)."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_sha256(path: PathLike) -> str:
  """The sha256 of a file's bytes, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: PathLike, name: str = "train.lock") -> Iterator[pathlib.Path]:
  """Holds WORKDIR/<name> for the duration of a run; a second run there fails at once.

  The lock is an advisory `flock` on a file that records the holder's pid and host. The kernel
  drops it when its process dies, however it dies, so the run that resumes after a kill (even
  `kill -9`) takes it over without anyone deleting the file.

  Raises:
    WorkdirInUseError: another live process holds the lock.
  """
  path = pathlib.Path(workdir) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown process"
      raise WorkdirInUseError(
          f"{workdir} is in use by another run ({holder}; lock file {path}). Wait for it to "
          "finish, stop it, or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    yield path
  finally:
    os.close(fd)  # Releases the lock; the file stays (removing it would race a new holder).
