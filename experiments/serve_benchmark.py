r"""`procrop serve` under load: throughput against `Cropper.crop_many`, latency, bad requests,
overload.

  python -m experiments.serve_benchmark [--photos DIR] [--limit 200] [--seconds 30]
      [--clients 16] [--max-batch 16] [--bad 1000] [--overload-clients 64] [--queue 32]

Starts `procrop serve` on 127.0.0.1 (a free port) in its own process, drives it with bounded
client threads (one keep-alive connection each) posting FCDB photos (../shared/data/fcdb/data),
and prints one JSON line per phase, then a summary line:

  baseline        Cropper.crop_many's steady photos/s in this process (free crops, top 1,
                  batch --max-batch, decoding included; a first pass compiles), measured before
                  the server starts so the two never share the CPU
  throughput      --clients closed-loop clients for --seconds: photos/s, its ratio to the
                  baseline (target >= 0.8), latency percentiles, errors (target 0)
  latency         an open loop at half the throughput phase's rate for --seconds: p50/p99 ms
                  (target p99 <= 300 ms), errors (target 0)
  bad_requests    --bad bad requests of 7 kinds (zero bytes, truncated, not an image, a
                  20,000 x 20,000 PNG header, text/plain, a body over --max-body-mb, bad
                  options) mixed with one good one per 4 bad, from --clients threads, while a
                  thread polls /healthz every 50 ms: each kind's statuses (target: its 4xx
                  only), good ones' statuses (target 200), /healthz failures (target 0), and
                  the server's RSS before and after (target growth < 200 MB)
  overload        a second server with --queue; --overload-clients clients for --seconds / 3:
                  how many 200 and 503 (each with Retry-After), other 5xx (target 0), then the
                  seconds from the load's end to the first 200 (target <= 2)

Each server warms its passes up before the clock starts (/readyz); compiled passes come from the
user's compilation cache after a first run.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable
import zlib

import numpy as np

from procrop_jax import cropper as cropper_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "fcdb" / "data"


# ------------------------------------------------------------------------------- the server
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ServerProcess:
  """`procrop serve` in a subprocess, ready (/readyz 200) when the constructor returns."""

  def __init__(self, *flags: str):
    self.port = _free_port()
    # The server's log goes to a file: a pipe nobody reads would block it once full.
    self.log = tempfile.NamedTemporaryFile(prefix="procrop_serve_", suffix=".log", delete=False)
    self.process = subprocess.Popen(
        [sys.executable, "-m", "procrop_jax.main", "serve", "--port", str(self.port),
         "--quiet", *flags], cwd=REPO, stderr=self.log,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})
    start = time.monotonic()
    while time.monotonic() - start < 600:
      if self.process.poll() is not None:
        raise RuntimeError(pathlib.Path(self.log.name).read_text())
      try:
        if request(self.port, "GET", "/readyz")[0] == 200:
          self.ready_s = time.monotonic() - start
          return
      except OSError:
        pass
      time.sleep(0.2)
    raise RuntimeError("the server was not ready in 600 s")

  def rss_mb(self) -> float:
    for line in pathlib.Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
    return float("nan")

  def stop(self) -> int:
    self.process.terminate()
    code = self.process.wait(timeout=120)
    self.log.close()
    return code


_local = threading.local()


def request(port: int, method: str, path: str, body: bytes = b"",
            content_type: str = "image/jpeg") -> tuple[int, dict[str, str], float]:
  """(status, headers, seconds) over this thread's keep-alive connection; a connection the
  server closed (after a 413 it did not read the body of) is opened again."""
  start = time.perf_counter()
  for attempt in range(2):
    conn = getattr(_local, "conns", {}).get(port)
    if conn is None:
      conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
      _local.__dict__.setdefault("conns", {})[port] = conn
    try:
      conn.request(method, path, body=body or None,
                   headers={"Content-Type": content_type} if method == "POST" else {})
      response = conn.getresponse()
      response.read()
      if response.getheader("connection", "").lower() == "close":
        conn.close()
        _local.conns.pop(port)
      return response.status, dict(response.getheaders()), time.perf_counter() - start
    except (ConnectionError, http.client.HTTPException, BrokenPipeError):
      conn.close()
      _local.conns.pop(port, None)
      if attempt:
        raise
  raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ phases
def _percentiles(seconds: list[float]) -> dict[str, float]:
  if not seconds:
    return {}
  ms = np.array(seconds) * 1000
  return {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)}


def baseline(paths: list[pathlib.Path], max_batch: int) -> dict:
  cropper = cropper_lib.Cropper.pretrained(batch_size=max_batch)
  cropper.crop_many(paths, top_k=1)  # Compiles (or loads) every canvas's pass.
  start = time.perf_counter()
  cropper.crop_many(paths, top_k=1)
  seconds = time.perf_counter() - start
  return {"phase": "baseline", "photos": len(paths), "seconds": round(seconds, 2),
          "photos_per_s": round(len(paths) / seconds, 2)}


def _post_back_to_back(port: int, photos: list[bytes], clients: int, seconds: float,
                       record: Callable[[Any, dict, float], None]) -> None:
  """`clients` threads posting photos back to back for `seconds`; `record(status, headers,
  seconds)` is called under a lock for each answer (a failed connection's status is its
  exception's name)."""
  lock = threading.Lock()
  end = time.monotonic() + seconds

  def client(k: int) -> None:
    i = k
    while time.monotonic() < end:
      try:
        status, headers, took = request(port, "POST", "/v1/crop?top_k=1",
                                        photos[i % len(photos)])
      except OSError as e:
        status, headers, took = type(e).__name__, {}, 0.0
      with lock:
        record(status, headers, took)
      i += clients

  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    list(pool.map(client, range(clients)))


def closed_loop(port: int, photos: list[bytes], clients: int, seconds: float) -> dict:
  """`clients` threads posting photos back to back for `seconds`."""
  statuses: collections.Counter = collections.Counter()
  latencies: list[float] = []

  def record(status, headers, took) -> None:
    del headers
    statuses[status] += 1
    if status == 200:
      latencies.append(took)

  start = time.perf_counter()
  _post_back_to_back(port, photos, clients, seconds, record)
  wall = time.perf_counter() - start
  return {"ok": statuses[200], "errors": sum(v for k, v in statuses.items() if k != 200),
          "statuses": {str(k): v for k, v in statuses.items()}, "seconds": round(wall, 2),
          "photos_per_s": round(statuses[200] / wall, 2), **_percentiles(latencies)}


def open_loop(port: int, photos: list[bytes], rate: float, seconds: float) -> dict:
  """Requests sent at `rate` per second (evenly spaced) for `seconds`, each timed from when it
  was due; a bounded pool of 64 clients sends them."""
  statuses: collections.Counter = collections.Counter()
  latencies: list[float] = []
  lock = threading.Lock()
  start = time.perf_counter()
  count = int(rate * seconds)

  def send(i: int) -> None:
    due = start + i / rate
    time.sleep(max(0.0, due - time.perf_counter()))
    try:
      status, _, _ = request(port, "POST", "/v1/crop?top_k=1", photos[i % len(photos)])
    except OSError as e:
      status = type(e).__name__
    with lock:
      statuses[status] += 1
      if status == 200:
        latencies.append(time.perf_counter() - due)

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    list(pool.map(send, range(count)))
  return {"rate_per_s": round(rate, 2), "requests": count, "ok": statuses[200],
          "errors": sum(v for k, v in statuses.items() if k != 200), **_percentiles(latencies)}


def _png_header(width: int, height: int) -> bytes:
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                              + struct.pack(">I", zlib.crc32(kind + data)))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def bad_requests(server: ServerProcess, photos: list[bytes], count: int, clients: int,
                 max_body_mb: float) -> dict:
  """`count` bad requests of 7 kinds and one good per 4 bad, while /healthz is polled."""
  kinds = {  # kind -> (path, body, content type, the expected status)
      "zero_bytes": ("/v1/crop", b"", "image/jpeg", 400),
      "truncated": ("/v1/crop", photos[0][:len(photos[0]) // 2], "image/jpeg", 400),
      "not_an_image": ("/v1/crop", b"this is not a photo " * 100, "image/jpeg", 400),
      "png_20000x20000": ("/v1/crop", _png_header(20000, 20000), "image/png", 413),
      "wrong_content_type": ("/v1/crop", photos[0], "text/plain", 415),
      "oversized_body": ("/v1/crop", b"\0" * int((max_body_mb + 0.5) * 2**20), "image/jpeg",
                         413),
      "bad_options": ("/v1/crop?aspect=wide&top_k=0", photos[0], "image/jpeg", 422),
  }
  names = list(kinds)
  plan = [names[i % len(names)] for i in range(count)]
  plan = [item for i, name in enumerate(plan)
          for item in ([name, "good"] if i % 4 == 3 else [name])]
  results: dict[str, collections.Counter] = {k: collections.Counter() for k in [*names, "good"]}
  lock = threading.Lock()
  health_failures, health_checks, done = [0], [0], threading.Event()

  def poll_health() -> None:
    while not done.is_set():
      try:
        ok = request(server.port, "GET", "/healthz")[0] == 200
      except OSError:
        ok = False
      health_checks[0] += 1
      health_failures[0] += not ok
      time.sleep(0.05)

  def send(i: int) -> None:
    name = plan[i]
    if name == "good":
      path, body, content_type = "/v1/crop?top_k=1", photos[i % len(photos)], "image/jpeg"
    else:
      path, body, content_type, _ = kinds[name]
    try:
      status = request(server.port, "POST", path, body, content_type)[0]
    except OSError as e:
      status = type(e).__name__
    with lock:
      results[name][status] += 1

  rss_before = server.rss_mb()
  poller = threading.Thread(target=poll_health)
  poller.start()
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    list(pool.map(send, range(len(plan))))
  done.set()
  poller.join()
  expected = {name: spec[3] for name, spec in kinds.items()} | {"good": 200}
  wrong = sum(v for name, c in results.items() for k, v in c.items() if k != expected[name])
  return {"bad": count, "good": len(plan) - count, "seconds": round(time.perf_counter() - start, 1),
          "wrong_answers": wrong,
          "statuses": {name: {str(k): v for k, v in c.items()} for name, c in results.items()},
          "healthz_checks": health_checks[0], "healthz_failures": health_failures[0],
          "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(server.rss_mb(), 1),
          "rss_growth_mb": round(server.rss_mb() - rss_before, 1)}


def overload(port: int, photos: list[bytes], clients: int, seconds: float) -> dict:
  statuses: collections.Counter = collections.Counter()
  retry_after = [0]

  def record(status, headers, took) -> None:
    del took
    statuses[status] += 1
    retry_after[0] += status == 503 and "retry-after" in {h.lower() for h in headers}

  _post_back_to_back(port, photos, clients, seconds, record)
  load_end = time.perf_counter()
  while request(port, "POST", "/v1/crop?top_k=1", photos[0])[0] != 200:
    time.sleep(0.01)
  recovery = time.perf_counter() - load_end
  other_5xx = sum(v for k, v in statuses.items() if k != 503 and (not isinstance(k, int)
                                                                   or k >= 500))
  return {"clients": clients, "ok": statuses[200], "status_503": statuses[503],
          "with_retry_after": retry_after[0], "other_5xx_or_failed": other_5xx,
          "statuses": {str(k): v for k, v in statuses.items()},
          "recovery_s": round(recovery, 3)}


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photos", default=str(DEFAULT_PHOTOS))
  parser.add_argument("--limit", type=int, default=200)
  parser.add_argument("--seconds", type=float, default=30)
  parser.add_argument("--clients", type=int, default=16)
  parser.add_argument("--max-batch", type=int, default=16)
  parser.add_argument("--max-wait-ms", type=float, default=5)
  parser.add_argument("--bad", type=int, default=1000)
  parser.add_argument("--max-body-mb", type=float, default=2)
  parser.add_argument("--overload-clients", type=int, default=64)
  parser.add_argument("--queue", type=int, default=32)
  args = parser.parse_args(argv)
  paths = sorted(pathlib.Path(args.photos).glob("*.jpg"))[:args.limit]
  photos = [p.read_bytes() for p in paths]
  emit = lambda record: print(json.dumps(record), flush=True)
  summary = {"cpus": os.cpu_count()}

  base = baseline(paths, args.max_batch)
  emit(base)
  flags = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--max-body-mb", str(args.max_body_mb)]
  server = ServerProcess(*flags)
  emit({"phase": "server_ready", "seconds": round(server.ready_s, 1),
        "rss_mb": round(server.rss_mb(), 1)})
  closed_loop(server.port, photos, args.clients, 3)  # Connections and allocations settle.
  throughput = {"phase": "throughput", "clients": args.clients,
                **closed_loop(server.port, photos, args.clients, args.seconds)}
  throughput["vs_crop_many"] = round(throughput["photos_per_s"] / base["photos_per_s"], 3)
  emit(throughput)
  latency = {"phase": "latency", **open_loop(server.port, photos,
                                              throughput["photos_per_s"] / 2, args.seconds)}
  emit(latency)
  bad = {"phase": "bad_requests", **bad_requests(server, photos, args.bad, args.clients,
                                                 args.max_body_mb)}
  emit(bad)
  exit_code = server.stop()
  emit({"phase": "sigterm", "exit_code": exit_code})

  server = ServerProcess(*flags, "--queue", str(args.queue))
  over = {"phase": "overload", "queue": args.queue,
          **overload(server.port, photos, args.overload_clients, args.seconds / 3)}
  emit(over)
  server.stop()
  summary.update(
      phase="summary", crop_many_photos_per_s=base["photos_per_s"],
      serve_photos_per_s=throughput["photos_per_s"], vs_crop_many=throughput["vs_crop_many"],
      throughput_errors=throughput["errors"], half_load_p99_ms=latency.get("p99_ms"),
      half_load_errors=latency["errors"], bad_wrong_answers=bad["wrong_answers"],
      healthz_failures=bad["healthz_failures"], rss_growth_mb=bad["rss_growth_mb"],
      overload_503=over["status_503"], overload_other_5xx=over["other_5xx_or_failed"],
      recovery_s=over["recovery_s"], sigterm_exit_code=exit_code)
  emit(summary)


if __name__ == "__main__":
  main()
