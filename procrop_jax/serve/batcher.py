"""Dynamic batching: one model thread runs what requests arrive together as one batch.

The model thread takes the first waiting job, then whatever else arrives within `max_wait_s`,
up to `max_batch` jobs, and runs them together: crop jobs are grouped by canvas shape (a batch
is one shape, `Cropper.crop_batch`) and run with the union of their aspects and the largest
top_k (greedy NMS keeps a prefix, so a smaller top_k is the first crops of a larger one). A
batch is padded to the next power of two up to max_batch, not to max_batch itself: a lone
request at low load runs a batch of one. If a batch fails, its jobs are run again one by one,
so a photo that breaks the model fails alone. Results go back through `concurrent.futures`
futures; a job whose request gave up (timed out, disconnected) is cancelled and skipped.

Only this thread calls the model, so the predictor's compiled passes are never run or prepared
from two threads at once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from typing import Callable, Sequence

import numpy as np

from procrop_jax import cropper as cropper_lib

# Width / height of photos whose canvases are prepared before the server is ready: with the
# "orientation" layout 2 canvases, with "buckets" up to 5, "square" 1.
WARM_RATIOS = (16 / 9, 3 / 2, 1.0, 2 / 3, 9 / 16, 4.0, 1 / 4)
_STOP = object()


@dataclasses.dataclass
class CropJob:
  prepared: cropper_lib.Prepared
  targets: tuple[cropper_lib.Target, ...]
  top_k: int
  future: concurrent.futures.Future  # -> {target label: [Crop, ...]}


@dataclasses.dataclass
class ScoreJob:
  prepared: cropper_lib.Prepared
  boxes: np.ndarray  # [N, 4] pixels of the upright photo.
  future: concurrent.futures.Future  # -> scores [N]


def batch_sizes(max_batch: int) -> list[int]:
  """The padded batch sizes: powers of two below max_batch, and max_batch."""
  sizes = [1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch]
  return sizes + [max_batch]


class Batcher:
  """Runs crop and score jobs on the model in batches (see the module docstring)."""

  def __init__(self, cropper: cropper_lib.Cropper, *, max_batch: int = 16,
               max_wait_s: float = 0.005,
               on_batch: Callable[[int, float], None] | None = None):
    """`on_batch(photos, seconds)` is told of every model batch (for /metrics)."""
    if max_batch < 1:
      raise ValueError(f"max_batch={max_batch}: use at least 1")
    self.max_batch = max_batch
    self.max_wait_s = max_wait_s
    self.sizes = batch_sizes(max_batch)  # Each batch size is its own compiled shape.
    self._cropper = cropper
    self._on_batch = on_batch or (lambda n, seconds: None)
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._run, name="procrop-model", daemon=True)
    self.ready = threading.Event()  # Set once every canvas's passes are prepared.
    self.failed: BaseException | None = None  # Why the warm-up failed, if it did.
    self._warm_up: list[tuple[cropper_lib.Target, ...]] = []  # Targets to prepare (start).

  @property
  def cropper(self) -> cropper_lib.Cropper:
    return self._cropper

  @property
  def depth(self) -> int:
    """Jobs waiting for the model."""
    return self._queue.qsize()

  def canvas_shapes(self) -> list[tuple[int, int]]:
    """The canvases photos of WARM_RATIOS go on (every one a layout uses)."""
    sizes = [(1000, round(1000 / r)) if r >= 1 else (round(1000 * r), 1000) for r in WARM_RATIOS]
    return sorted({self.cropper.canvas_shape(w, h) for w, h in sizes})

  # ---------------------------------------------------------------------------------- control
  def start(self, *, warm_up: bool = True,
            aspects: Sequence[cropper_lib.Target] = ()) -> None:
    """Starts the model thread; it prepares every batch size's free-crop passes (and those of
    `aspects`) on every canvas, and the face detector's on each of its canvases, first, two at
    a time (`ready` is set after), so no such request waits for a compilation."""
    self._warm_up = [(cropper_lib.FREE,)] + [(t,) for t in aspects] if warm_up else []
    self._thread.start()

  def close(self, timeout: float | None = None) -> None:
    """Runs the jobs already queued, then stops the model thread."""
    self._queue.put(_STOP)
    self._thread.join(timeout)

  def submit_crop(self, prepared: cropper_lib.Prepared,
                  targets: Sequence[cropper_lib.Target], top_k: int
                  ) -> concurrent.futures.Future:
    job = CropJob(prepared, tuple(targets), top_k, concurrent.futures.Future())
    self._queue.put(job)
    return job.future

  def submit_score(self, prepared: cropper_lib.Prepared, boxes: np.ndarray
                   ) -> concurrent.futures.Future:
    job = ScoreJob(prepared, np.asarray(boxes, np.float64).reshape(-1, 4),
                   concurrent.futures.Future())
    self._queue.put(job)
    return job.future

  # ------------------------------------------------------------------------------ the thread
  def _run(self) -> None:
    try:
      self._prepare()
    except Exception as e:  # pylint: disable=broad-except  (reported by /readyz, not raised)
      logging.exception("procrop serve: preparing the model failed")
      self.failed = e
    self.ready.set()
    while True:
      jobs, stop = self._collect()
      # Jobs whose requests gave up are dropped here; the rest are marked running.
      jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
      try:
        self._run_jobs(jobs)
      except Exception as e:  # pylint: disable=broad-except  (the thread must outlive any batch)
        logging.exception("procrop serve: a batch failed")
        for job in jobs:
          if not job.future.done():
            job.future.set_exception(e)
      if stop:
        return

  def _prepare(self) -> None:
    """Prepares the passes `start` asked for, two at a time: one after another they left a
    core idle for about a quarter of the time (tracing holds the interpreter, some compilations
    run on one thread), and the server was ready 6-9 s later with an empty compilation cache,
    1 s later with a filled one (experiments/README.md, "Serving")."""
    if not self._warm_up:
      return
    shapes = self.canvas_shapes()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      # Faces are found in the decoding threads, on canvases of their own.
      jobs = [pool.submit(self._cropper.warm_up_faces)]
      jobs += [pool.submit(self._cropper.warm_up, shape, targets, batch_size=size)
               for size in self.sizes for shape in shapes for targets in self._warm_up]
      done, _ = concurrent.futures.wait(jobs, return_when=concurrent.futures.FIRST_EXCEPTION)
      for job in jobs:  # After a failure, drops those not started, so it is reported sooner.
        job.cancel()
      for job in done:
        job.result()  # Raises the failure, if any.

  def _collect(self) -> tuple[list, bool]:
    """The first waiting job and what arrives within max_wait_s, up to max_batch."""
    first = self._queue.get()
    if first is _STOP:
      return [], True
    jobs = [first]
    deadline = time.monotonic() + self.max_wait_s
    while len(jobs) < self.max_batch:
      remaining = deadline - time.monotonic()
      try:
        job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
      except queue.Empty:
        break
      if job is _STOP:
        return jobs, True
      jobs.append(job)
    return jobs, False

  def _run_jobs(self, jobs: list) -> None:
    by_shape: dict[tuple[int, ...], list[CropJob]] = {}
    for job in jobs:
      if isinstance(job, CropJob):
        by_shape.setdefault(job.prepared.canvas.shape, []).append(job)
    for group in by_shape.values():
      self._crop(group)
    for job in jobs:
      if isinstance(job, ScoreJob):
        self._settle(job, lambda job=job: self.cropper.score_prepared(job.prepared, job.boxes))

  def _crop(self, group: list[CropJob]) -> None:
    """One batch of crop jobs on one canvas shape; one by one if the batch fails."""
    size = cropper_lib.calls_batch_size(len(group), self.max_batch)
    targets = list({t.label: t for job in group for t in job.targets}.values())
    top_k = max(job.top_k for job in group)
    start = time.perf_counter()
    try:
      results = self._cropper.crop_batch([j.prepared for j in group], targets, top_k=top_k,
                                         batch_size=size)
    except Exception as e:  # pylint: disable=broad-except  (retried alone: a bad photo fails alone)
      if len(group) == 1:
        group[0].future.set_exception(e)
      else:
        for job in group:
          self._crop([job])
      return
    self._on_batch(len(group), time.perf_counter() - start)
    for job, by_label in zip(group, results):
      job.future.set_result({t.label: by_label[t.label][:job.top_k] for t in job.targets})

  @staticmethod
  def _settle(job, compute: Callable[[], object]) -> None:
    try:
      job.future.set_result(compute())
    except Exception as e:  # pylint: disable=broad-except  (the request reports it)
      job.future.set_exception(e)
