"""A stand-in cropper for the server's tests (no model: batching, limits and shutdown are
tested in milliseconds), and a server process around it for the SIGTERM test.

  python tests/serve_worker.py PORT DELAY_S   serves the fake on 127.0.0.1:PORT; each batch
                                              takes DELAY_S seconds
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

from procrop_jax import cropper as cropper_lib
from procrop_jax.serve import app as app_lib
from procrop_jax.serve import cli

BAD_SIZE = (13, 13)  # A photo of this size makes any batch holding it fail.


class FakeCropper:
  """What the batcher and the routes use of a Cropper; crops are the whole photo.

  `gate`, when given, holds every batch until it is set (a busy model)."""

  def __init__(self, *, delay_s: float = 0.0, gate: threading.Event | None = None):
    self.batch_size = 1
    self.delay_s = delay_s
    self.gate = gate
    self.batches: list[int] = []  # Photos per crop_batch call.
    self.warmed: list[tuple] = []  # (batch size, canvas, target labels) per warm_up call.
    self.faces_warmed = 0  # warm_up_faces calls (the fake finds no faces).

  def canvas_shape(self, width: int, height: int) -> tuple[int, int]:
    return (8, 16) if width >= height else (16, 8)

  def prepare(self, image) -> cropper_lib.Prepared:
    h, w = self.canvas_shape(*image.size)
    return cropper_lib.Prepared(np.zeros((h, w, 3), np.float32), np.ones(2, np.float32),
                                image.size)

  def warm_up(self, canvas_hw, targets=(cropper_lib.FREE,), *, batch_size=None) -> None:
    self.warmed.append((batch_size or self.batch_size, tuple(canvas_hw),
                        tuple(t.label for t in targets)))

  def warm_up_faces(self) -> None:
    self.faces_warmed += 1

  def crop_batch(self, batch, targets, *, top_k, batch_size=None):
    del batch_size  # The fake model takes any batch.
    if self.gate is not None:
      self.gate.wait()
    time.sleep(self.delay_s)
    if any(p.size == BAD_SIZE for p in batch):
      raise RuntimeError("this photo breaks the model")
    self.batches.append(len(batch))
    out = []
    for p in batch:
      w, h = p.size
      out.append({t.label: [cropper_lib.Crop((0, 0, w, h), 1.0 - k / 10, t.label)
                            for k in range(top_k)] for t in targets})
    return out

  def score_prepared(self, prepared, boxes):
    del prepared
    return np.full((len(boxes),), 0.5)


if __name__ == "__main__":
  port, delay = int(sys.argv[1]), float(sys.argv[2])
  app = app_lib.create_app(FakeCropper(delay_s=delay),  # type: ignore[arg-type]
                           app_lib.Settings(max_batch=4, max_wait_ms=1))
  sys.exit(cli.run_server(app, host="127.0.0.1", port=port, quiet=True))
