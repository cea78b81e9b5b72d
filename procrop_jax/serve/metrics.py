"""The server's Prometheus metrics, in a registry of its own (one per app, so tests and several
apps in one process do not share counters).

- procrop_requests_total{route, status}: every answered request.
- procrop_errors_total{kind}: refusals and failures by kind (`ApiError.kind`: body_too_large,
  too_many_pixels, bad_photo, bad_options, unsupported_media_type, overloaded, timeout, ...).
- procrop_request_seconds{route}: latency histogram of /v1/crop and /v1/score.
- procrop_batch_size: photos per model batch; procrop_batch_seconds: each batch's model time.
- procrop_queue_depth: jobs waiting for the model; procrop_requests_held: requests admitted
  and not yet answered (the admission limit is --queue plus --max-batch).
"""

from __future__ import annotations

from typing import Callable

import prometheus_client

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST


class Metrics:
  """The counters, histograms and gauges above."""

  def __init__(self, *, queue_depth: Callable[[], float], held: Callable[[], float]):
    self.registry = prometheus_client.CollectorRegistry()
    r = self.registry
    self.requests = prometheus_client.Counter(
        "procrop_requests", "Requests answered, by route and status.", ["route", "status"],
        registry=r)
    self.errors = prometheus_client.Counter(
        "procrop_errors", "Requests refused or failed, by kind.", ["kind"], registry=r)
    self.latency = prometheus_client.Histogram(
        "procrop_request_seconds", "Time from a request's arrival to its answer.", ["route"],
        buckets=LATENCY_BUCKETS, registry=r)
    self.batch_size = prometheus_client.Histogram(
        "procrop_batch_size", "Photos per model batch.", buckets=BATCH_BUCKETS, registry=r)
    self.batch_seconds = prometheus_client.Histogram(
        "procrop_batch_seconds", "Model time per batch.", buckets=LATENCY_BUCKETS, registry=r)
    prometheus_client.Gauge("procrop_queue_depth", "Jobs waiting for the model.",
                            registry=r).set_function(queue_depth)
    prometheus_client.Gauge("procrop_requests_held", "Requests admitted, not yet answered.",
                            registry=r).set_function(held)

  def observe_batch(self, photos: int, seconds: float) -> None:
    self.batch_size.observe(photos)
    self.batch_seconds.observe(seconds)

  def exposition(self) -> bytes:
    return prometheus_client.generate_latest(self.registry)
