"""`procrop serve`: every route and error code, dynamic batching, a bad photo failing alone,
the queue limit, the time limit and SIGTERM's drain.

Batching, limits and shutdown run on a stand-in cropper (tests/serve_worker.py: no model, so
they take milliseconds); the answers' contents run on the shipped model.
"""

import concurrent.futures
import io
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
from PIL import Image
from PIL import ImageCms
import pytest
import skimage.data

pytest.importorskip("starlette", reason="the [serve] extra is not installed")
pytest.importorskip("httpx2", reason="httpx2 (Starlette's TestClient; the [test] extra) is "
                    "missing")

# pylint: disable=g-import-not-at-top,wrong-import-position  (after the extra's check)
from starlette import testclient

from procrop_jax import cropper as cropper_lib
from procrop_jax.serve import app as app_lib
from procrop_jax.serve import batcher as batcher_lib
from procrop_jax.serve import limits as limits_lib
from tests import serve_worker
from tests.conftest import REPO_ROOT
from tests.conftest import free_port

JPEG = {"Content-Type": "image/jpeg"}


def _jpeg(width: int = 90, height: int = 60, **save) -> bytes:
  rng = np.random.default_rng(width * 1000 + height)
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(
      buffer, format="JPEG", **save)
  return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
  """A PNG's header (signature, IHDR, the start of IDAT): its size, and almost no pixel."""
  chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                              + struct.pack(">I", zlib.crc32(kind + data)))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _fake_client(fake=None, **settings) -> testclient.TestClient:
  settings.setdefault("max_batch", 4)
  settings.setdefault("max_wait_ms", 1)
  limits = settings.pop("limits", limits_lib.Limits(max_body_bytes=2**20, max_pixels=10**6))
  return testclient.TestClient(app_lib.create_app(
      fake or serve_worker.FakeCropper(), app_lib.Settings(limits=limits, **settings)))


def _error(response, status: int, kind: str) -> str:
  assert response.status_code == status, response.text
  assert response.headers["content-type"] == "application/json"
  error = response.json()["error"]
  assert (error["status"], error["kind"]) == (status, kind)
  return error["message"]


# ------------------------------------------------------------------------------------ batching
def _crop_job(batcher, size=(90, 60), targets=(cropper_lib.FREE,), top_k=3):
  prepared = cropper_lib.Prepared(np.zeros((8, 16, 3), np.float32), np.ones(2), size)
  return batcher.submit_crop(prepared, targets, top_k)


def test_batch_sizes_are_powers_of_two_up_to_max_batch():
  assert batcher_lib.batch_sizes(16) == [1, 2, 4, 8, 16]
  assert batcher_lib.batch_sizes(12) == [1, 2, 4, 8, 12]
  assert batcher_lib.batch_sizes(1) == [1]


def test_jobs_that_arrive_together_run_as_one_batch_and_get_their_own_answers():
  fake = serve_worker.FakeCropper()
  seen = []
  batcher = batcher_lib.Batcher(fake, max_batch=4, max_wait_s=0.2,
                                on_batch=lambda n, seconds: seen.append(n))
  wide = cropper_lib.parse_aspect("16:9")
  futures = [_crop_job(batcher, targets=(wide,), top_k=1), _crop_job(batcher, top_k=2)]
  futures += [_crop_job(batcher) for _ in range(4)]
  batcher.start(warm_up=False)
  results = [f.result(timeout=10) for f in futures]
  batcher.close()
  assert fake.batches == seen == [4, 2]
  # The batch ran both aspects at the largest top_k; each job gets what it asked for.
  assert list(results[0]) == ["16x9"] and len(results[0]["16x9"]) == 1
  assert list(results[1]) == ["free"] and len(results[1]["free"]) == 2
  assert len(results[2]["free"]) == 3


def test_every_batch_size_and_canvas_is_prepared_before_ready():
  fake = serve_worker.FakeCropper()  # It records each warm-up's batch size.
  batcher = batcher_lib.Batcher(fake, max_batch=4)
  batcher.start(aspects=(cropper_lib.parse_aspect("16:9"),))
  assert batcher.ready.wait(10) and batcher.failed is None
  batcher.close()
  shapes = [(8, 16), (16, 8)]
  assert sorted(fake.warmed) == sorted((size, shape, labels) for size in (1, 2, 4)
                                       for shape in shapes for labels in (("free",), ("16x9",)))


def test_the_face_detector_is_prepared_before_ready_unless_warm_up_is_off():
  for warm_up, want in ((True, 1), (False, 0)):
    fake = serve_worker.FakeCropper()
    batcher = batcher_lib.Batcher(fake, max_batch=2)
    batcher.start(warm_up=warm_up)
    assert batcher.ready.wait(10) and batcher.failed is None
    batcher.close()
    assert fake.faces_warmed == want


class _OverlapRecorder(serve_worker.FakeCropper):
  """Records how many warm-ups run at once; the one for `fail_size` raises."""

  def __init__(self, fail_size=None):
    super().__init__()
    self.fail_size = fail_size
    self.lock = threading.Lock()
    self.running = self.most_at_once = 0

  def _enter(self):
    with self.lock:
      self.running += 1
      self.most_at_once = max(self.most_at_once, self.running)
    time.sleep(0.3)
    with self.lock:
      self.running -= 1

  def warm_up(self, canvas_hw, targets=(cropper_lib.FREE,), *, batch_size=None):
    if batch_size == self.fail_size:
      raise RuntimeError("compilation failed")
    self._enter()
    super().warm_up(canvas_hw, targets, batch_size=batch_size)

  def warm_up_faces(self):
    self._enter()
    super().warm_up_faces()


def test_passes_are_prepared_two_at_a_time_and_a_failure_skips_the_rest():
  fake = _OverlapRecorder()
  batcher = batcher_lib.Batcher(fake, max_batch=4)
  batcher.start()
  assert batcher.ready.wait(10) and batcher.failed is None
  batcher.close()
  assert fake.most_at_once == 2 and fake.faces_warmed == 1 and len(fake.warmed) == 6

  # The first batch size fails at once: the passes not started by then never are.
  fake = _OverlapRecorder(fail_size=1)
  batcher = batcher_lib.Batcher(fake, max_batch=16)
  batcher.start()
  assert batcher.ready.wait(10)
  batcher.close()
  assert isinstance(batcher.failed, RuntimeError)
  assert len(fake.warmed) <= 1  # Of the 8 warm-ups that follow batch size 1's two.


def test_a_bad_photo_fails_alone_in_its_batch():
  fake = serve_worker.FakeCropper()
  batcher = batcher_lib.Batcher(fake, max_batch=4, max_wait_s=0.2)
  futures = [_crop_job(batcher), _crop_job(batcher, size=serve_worker.BAD_SIZE),
             _crop_job(batcher)]
  batcher.start(warm_up=False)
  with pytest.raises(RuntimeError, match="breaks the model"):
    futures[1].result(timeout=10)
  assert futures[0].result(timeout=10)["free"] and futures[2].result(timeout=10)["free"]
  batcher.close()
  assert fake.batches == [1, 1]  # The batch of three failed; the good two ran alone.


def test_a_job_whose_request_gave_up_is_skipped():
  fake = serve_worker.FakeCropper()
  batcher = batcher_lib.Batcher(fake, max_batch=4, max_wait_s=0.05)
  gone, kept = _crop_job(batcher), _crop_job(batcher)
  assert gone.cancel()
  batcher.start(warm_up=False)
  assert kept.result(timeout=10)
  batcher.close()
  assert fake.batches == [1]


# -------------------------------------------------------------------------- routes and limits
def test_every_refusal_is_json_with_its_status():
  with _fake_client() as client:
    _error(client.post("/v1/crop", content=b"", headers=JPEG), 400, "bad_photo")
    assert "truncated" in _error(client.post("/v1/crop", content=_jpeg()[:-300], headers=JPEG),
                                 400, "bad_photo")
    assert "not an image" in _error(client.post("/v1/crop", content=b"hello" * 50,
                                                headers=JPEG), 400, "bad_photo")
    png = {"Content-Type": "image/png"}
    assert "decompression bomb" in _error(client.post(
        "/v1/crop", content=_png_header(20000, 20000), headers=png), 413, "too_many_pixels")
    assert "2000x1000 = 2.0 MP exceeds the limit of 1.0 MP" in _error(client.post(
        "/v1/crop", content=_png_header(2000, 1000), headers=png), 413, "too_many_pixels")
    _error(client.post("/v1/crop", content=_jpeg(), headers={"Content-Type": "text/plain"}),
           415, "unsupported_media_type")
    _error(client.post("/v1/crop", content=b"\0" * (2**20 + 1), headers=JPEG), 413,
           "body_too_large")

    def chunked():  # No Content-Length: refused as the body passes the limit.
      for _ in range(40):
        yield b"\0" * 65536
    _error(client.post("/v1/crop", content=chunked(), headers=JPEG), 413, "body_too_large")
    for query in ("aspect=wide", "aspect=0:1", "top_k=0", "top_k=x", "format=xml", "colour=red",
                  "size=10", "aspect=1:1&aspect=1:1", "top_k=1&top_k=2"):
      _error(client.post(f"/v1/crop?{query}", content=_jpeg(), headers=JPEG), 422,
             "bad_options")
    _error(client.post("/v1/score?box=0,0,500,10", content=_jpeg(), headers=JPEG), 422,
           "bad_options")
    _error(client.post("/v1/score?box=5,5,1,1", content=_jpeg(), headers=JPEG), 422,
           "bad_options")
    _error(client.post("/v1/score", content=_jpeg(), headers=JPEG), 422, "bad_options")
    _error(client.post("/v1/crop", files={"other": ("a.txt", b"x")}, data={"a": "b"}), 422,
           "bad_options")
    _error(client.get("/v1/nothing"), 404, "not_found")
    _error(client.get("/v1/crop"), 405, "method_not_allowed")
    # The server still answers, and /metrics counts the refusals by kind.
    assert client.post("/v1/crop", content=_jpeg(), headers=JPEG).status_code == 200
    metrics = client.get("/metrics").text
  assert 'procrop_errors_total{kind="bad_options"} 13.0' in metrics
  assert 'procrop_errors_total{kind="body_too_large"} 2.0' in metrics
  assert 'procrop_requests_total{route="crop",status="200"} 1.0' in metrics


def test_options_come_from_the_query_a_form_or_json():
  with _fake_client() as client:
    raw = client.post("/v1/crop?aspect=16:9&aspect=free&top_k=2", content=_jpeg(),
                      headers={"Content-Type": "application/octet-stream"}).json()
    form = client.post("/v1/crop", files={"image": ("p.jpg", _jpeg(), "image/jpeg")},
                       data={"options": json.dumps({"aspect": ["16:9", "free"], "top_k": 2})}
                       ).json()
    fields = client.post("/v1/crop?top_k=2", files={"image": ("p.jpg", _jpeg())},
                         data={"aspect": ["16:9", "free"]}).json()
  assert raw == form == fields
  assert (raw["width"], raw["height"]) == (90, 60)
  assert [c["aspect"] for c in raw["crops"]] == ["16x9", "16x9", "free", "free"]
  # results.jsonl's fields.
  assert set(raw["crops"][0]) == {"box", "score", "aspect", "not_kept", "cut_faces"}
  assert raw["faces"] == []


def test_health_readiness_metrics_and_page():
  with _fake_client() as client:
    assert client.get("/healthz").json() == {"status": "alive"}
    for _ in range(100):  # The warm-up runs in the model thread (instant for the fake).
      if client.get("/readyz").status_code == 200:
        break
      time.sleep(0.05)
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/crop", content=_jpeg(), headers=JPEG)
    metrics = client.get("/metrics")
    page = client.get("/")
  assert metrics.headers["content-type"].startswith("text/plain")
  for name in ("procrop_requests_total", "procrop_errors_total", "procrop_request_seconds_bucket",
               "procrop_batch_size_bucket", "procrop_queue_depth", "procrop_requests_held"):
    assert name in metrics.text
  assert page.status_code == 200 and "/v1/crop" in page.text
  assert "http" not in page.text.replace("http-equiv", "")  # Self-contained: no CDN.


def test_a_full_queue_answers_503_with_retry_after_and_recovers():
  gate = threading.Event()
  fake = serve_worker.FakeCropper(gate=gate)
  with _fake_client(fake, max_batch=1, queue=1) as client:  # Holds 1 + 1 requests.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      held = [pool.submit(client.post, "/v1/crop", content=_jpeg(), headers=JPEG)
              for _ in range(2)]
      for _ in range(200):
        if "procrop_requests_held 2.0" in client.get("/metrics").text:
          break
        time.sleep(0.02)
      refused = client.post("/v1/crop", content=_jpeg(), headers=JPEG)
      _error(refused, 503, "overloaded")
      assert refused.headers["Retry-After"] == "1"
      assert client.get("/healthz").status_code == 200  # Health is never refused.
      gate.set()
      assert [f.result(timeout=10).status_code for f in held] == [200, 200]
    assert client.post("/v1/crop", content=_jpeg(), headers=JPEG).status_code == 200


def test_a_request_past_its_time_limit_is_504_and_its_job_is_dropped():
  gate = threading.Event()
  fake = serve_worker.FakeCropper(gate=gate)
  limits = limits_lib.Limits(timeout_s=0.3)
  with _fake_client(fake, limits=limits) as client:
    _error(client.post("/v1/crop", content=_jpeg(), headers=JPEG), 504, "timeout")
    gate.set()
    assert client.post("/v1/crop", content=_jpeg(), headers=JPEG).status_code == 200


def _get(url: str, **kwargs):
  return urllib.request.urlopen(urllib.request.Request(url, **kwargs), timeout=30)


def _wait_until_up(url: str, process: subprocess.Popen, seconds: float) -> None:
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    assert process.poll() is None, process.stderr.read().decode()
    try:
      if _get(url).status == 200:
        return
    except (urllib.error.URLError, ConnectionError):
      time.sleep(0.1)
  raise AssertionError(f"{url} did not answer 200 in {seconds} s")


def test_sigterm_answers_the_requests_in_flight_then_exits_0():
  port = free_port()
  process = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests/serve_worker.py"),
                              str(port), "1.0"], cwd=REPO_ROOT, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
  try:
    base = f"http://127.0.0.1:{port}"
    _wait_until_up(f"{base}/readyz", process, 60)
    post = lambda: _get(f"{base}/v1/crop", data=_jpeg(), headers=JPEG, method="POST")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      in_flight = [pool.submit(post) for _ in range(3)]
      time.sleep(0.4)  # Their batch is on the (1 s) model now.
      process.send_signal(signal.SIGTERM)
      assert [f.result(timeout=20).status for f in in_flight] == [200, 200, 200]
    assert process.wait(timeout=20) == 0
    with pytest.raises(urllib.error.URLError):
      _get(f"{base}/healthz")
  finally:
    if process.poll() is None:
      process.kill()
    process.stderr.close()


# ------------------------------------------------------------------------- the shipped model
@pytest.fixture(scope="module")
def model_client(shared_tmp):
  del shared_tmp  # Its compilation cache: other workers' and later runs' passes are reused.
  cropper = cropper_lib.Cropper.pretrained()
  app = app_lib.create_app(cropper, app_lib.Settings(max_batch=2, warm_up=False))
  with testclient.TestClient(app) as client:
    yield client, cropper


def test_crops_keep_the_faces_found_and_say_so(model_client):
  client, _ = model_client
  photo = io.BytesIO()
  Image.fromarray(skimage.data.astronaut()).save(photo, format="JPEG")
  answer = client.post("/v1/crop?aspect=16:9&top_k=1", content=photo.getvalue(),
                       headers=JPEG).json()
  assert len(answer["faces"]) == 1  # Her face, about x 170-280, y 65-175.
  fx1, fy1, fx2, fy2 = answer["faces"][0]
  assert 150 < fx1 < 190 and 45 < fy1 < 85
  (crop,) = answer["crops"]
  x1, y1, x2, y2 = crop["box"]
  assert x1 <= fx1 and y1 <= fy1 and fx2 <= x2 and fy2 <= y2  # A 16:9 crop that keeps it.
  assert crop["cut_faces"] == [] and crop["not_kept"] == []


def test_crops_of_the_shipped_model(model_client):
  client, cropper = model_client
  photo = _jpeg(160, 100)
  free = client.post("/v1/crop?top_k=2", content=photo, headers=JPEG).json()
  assert (free["width"], free["height"]) == (160, 100)
  assert len(free["crops"]) == 2 and all(c["aspect"] == "free" for c in free["crops"])
  expected = cropper.crop(Image.open(io.BytesIO(photo)), top_k=2)
  assert [c["box"] for c in free["crops"]] == [list(c.box) for c in expected]
  for c in free["crops"]:
    x1, y1, x2, y2 = c["box"]
    assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 100 and 0 <= c["score"] <= 1
  boxes = [[0, 0, 80, 50], [10, 10, 150, 90]]
  scores = client.post(f"/v1/score?boxes={json.dumps(boxes)}", content=photo,
                       headers=JPEG).json()["scores"]
  np.testing.assert_allclose(scores, cropper.score(Image.open(io.BytesIO(photo)), boxes),
                             atol=1e-5)


def test_the_top_crop_as_an_image_keeps_icc_and_exif(model_client):
  client, _ = model_client
  icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  exif = Image.Exif()
  exif[0x010F] = "procrop test camera"  # Make.
  photo = _jpeg(160, 100, icc_profile=icc, exif=exif.tobytes())
  response = client.post("/v1/crop?size=64x36&format=image", content=photo, headers=JPEG)
  assert response.status_code == 200, response.text
  assert response.headers["content-type"] == "image/jpeg"
  crop = Image.open(io.BytesIO(response.content))
  assert crop.size == (64, 36)
  assert crop.info["icc_profile"] == icc
  assert crop.getexif()[0x010F] == "procrop test camera"
  x1, y1, x2, y2 = (int(v) for v in response.headers["X-Crop-Box"].split(","))
  assert abs((x2 - x1) / (y2 - y1) - 16 / 9) < 0.05
  wide = client.post("/v1/crop?aspect=16:9&top_k=1", content=photo, headers=JPEG).json()
  assert wide["crops"][0]["box"] == [x1, y1, x2, y2]


@pytest.mark.slow
def test_procrop_serve_command_serves_and_stops_on_sigterm(tmp_path):
  port = free_port()
  process = subprocess.Popen(
      [sys.executable, "-m", "procrop_jax.main", "serve", "--port", str(port), "--max-batch",
       "1", "--quiet", "--compile-cache", str(tmp_path / "cache")],
      cwd=REPO_ROOT, stderr=subprocess.PIPE)
  try:
    base = f"http://127.0.0.1:{port}"
    _wait_until_up(f"{base}/readyz", process, 240)
    answer = json.load(_get(f"{base}/v1/crop?top_k=1", data=_jpeg(), headers=JPEG,
                            method="POST"))
    assert len(answer["crops"]) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
  finally:
    if process.poll() is None:
      process.kill()
    process.stderr.close()
