"""Checkpoints of a run: where they live, how they are restored, which one is the best.

WORKDIR/checkpoints holds the latest `config.train.keep_checkpoints` steps (Orbax
`CheckpointManager`, `StandardSave`/`StandardRestore` into an abstract, sharded target) and
WORKDIR/checkpoints_best the one with the best benchmark value (`BestCheckpoint`). The metrics
log and the TensorBoard event files are cut back to the restored step so that a resumed run does
not log steps twice.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from typing import Any, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from procrop_jax import artifacts
from procrop_jax import workdir as workdir_lib

State = dict[str, Any]
# Metrics where lower is better (for best-checkpoint tracking).
LOWER_IS_BETTER = frozenset({"bde"})


def create_checkpoint_manager(workdir: str, config: ml_collections.ConfigDict, *,
                              cleanup_tmp: bool = False) -> ocp.CheckpointManager:
  """WORKDIR/checkpoints. `cleanup_tmp` removes unfinished saves left by a killed run.

  Only the run holding the workdir lock may pass `cleanup_tmp`: a concurrent reader that did
  would delete the trainer's saves in progress.
  """
  save_each_array_once()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints, create=True,
      save_interval_steps=max(config.train.checkpoint_every, 1),
      cleanup_tmp_directories=cleanup_tmp)
  return ocp.CheckpointManager(workdir_lib.checkpoints_dir(workdir), options=options)


def save_each_array_once() -> None:
  """Makes Orbax write each replicated array whole, from one device, when one process saves.

  Off GPU, Orbax's default ("replica-parallel") cuts a replicated array into one slice per
  device, so that each host writes a part. In one process that buys nothing, and each slice is a
  small program compiled on the process's first save: on 8 host devices those compiles took
  about half of tests/test_train.py's kill-and-resume test (130 -> 76 s). Across processes
  Orbax's default stays.
  """
  if jax.process_count() > 1:
    return
  default = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(default, "_use_replica_parallel", False):
    # Orbax has no public option for this; the handler is its default one otherwise (the same
    # array metadata store).
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        array_metadata_store=getattr(default, "_array_metadata_store", None)), override=True)


def restore_state(manager: ocp.CheckpointManager, abstract_state: State,
                  step: int | None = None) -> tuple[State, dict]:
  """Restores `step` (default: latest) into the shardings of `abstract_state`."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


@contextlib.contextmanager
def finish_saves(*managers: ocp.CheckpointManager) -> Iterator[None]:
  """Waits for asynchronous checkpoint saves on the way out, also when training fails."""
  try:
    yield
  finally:
    for manager in managers:
      manager.wait_until_finished()


def is_better(metric: str, value: float, best: float | None) -> bool:
  """Whether `value` of `metric` beats `best` (None or non-finite: any finite value does)."""
  if best is None or not np.isfinite(best):
    return bool(np.isfinite(value))
  return value < best if metric in LOWER_IS_BETTER else value > best


class BestCheckpoint:
  """Keeps the checkpoint with the best value of one benchmark metric (checkpoints_best/).

  Resume-safe: the best value so far is read back from the saved checkpoint, so a restarted run
  replaces it only with a better one. A resumed run evaluates again the steps between its
  checkpoint and the kill; a better value there may land on a step that is already saved, or
  before the saved one, so this class (not Orbax's `max_to_keep`, which would keep the later
  step) decides what stays: the new best is written in full before the old one is deleted.
  """

  def __init__(self, workdir: str, metric: str, *, cleanup_tmp: bool = False):
    self.metric = metric
    save_each_array_once()
    self.manager = ocp.CheckpointManager(
        workdir_lib.checkpoints_dir(workdir, best=True),
        options=ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=cleanup_tmp))
    self.best = None
    self.step = self.manager.latest_step()
    if self.step is not None:
      meta = self.manager.restore(self.step,
                                  args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      if meta.get("metric") == metric:
        self.best = meta.get("value")
      else:  # eval.best_metric changed: the saved value measures something else.
        logging.warning("%s holds the best %s, not %s: the next evaluation replaces it.",
                        self.manager.directory, meta.get("metric"), metric)

  def update(self, step: int, value: float | None, state: State) -> bool:
    if value is None or not is_better(self.metric, value, self.best):
      return False
    self.best = float(value)
    if step in self.manager.all_steps():  # Saved before a kill; now better (non-determinism).
      self.manager.delete(step)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"step": step, "metric": self.metric, "value": self.best})),
        force=True)
    self.manager.wait_until_finished()
    for old in self.manager.all_steps():
      if old != step:
        self.manager.delete(old)
    self.step = step
    logging.info("New best %s = %.4f at step %d.", self.metric, self.best, step)
    return True


def truncate_metrics_log(path: str, step: int) -> None:
  """Drops the lines of steps after `step` from WORKDIR/metrics.jsonl, atomically.

  A run killed after its last checkpoint logged steps that its successor will train and log
  again; without this they would appear twice. A line cut short by the kill is dropped too.
  """
  if not os.path.exists(path):
    return
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and record.get("step", 0) <= step:
        kept.append(json.dumps(record) + "\n")
  artifacts.atomic_write_text(path, "".join(kept))


def truncate_event_files(logdir: str, step: int) -> None:
  """Drops the events of steps after `step` from the TensorBoard event files in `logdir`.

  The resumed run writes those steps again into a new event file; kept in the old one, they
  would draw every curve twice between the checkpoint and the kill. (TensorBoard's own purge of
  such "orphaned" steps needs a SessionLog.START marker and is not done by every reader, nor by
  a script reading the files, so the files themselves are rewritten.) A record cut short by the
  kill is dropped too. Each file that changes is rewritten to a unique temporary name and
  renamed.
  """
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    kept, dropped = [], False
    try:
      for record in tf.data.TFRecordDataset(path):
        record = record.numpy()
        if tf.compat.v1.Event.FromString(record).step > step:
          dropped = True
        else:
          kept.append(record)
    except tf.errors.DataLossError:  # The kill cut the last record short.
      dropped = True
    if not dropped:
      continue
    fd, tmp = tempfile.mkstemp(dir=logdir, prefix=".events.", suffix=".tmp")
    os.close(fd)
    try:
      with tf.io.TFRecordWriter(tmp) as writer:
        for record in kept:
          writer.write(record)
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
      raise
