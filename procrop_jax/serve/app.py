"""The HTTP application: routes, the decoding threads, admission and time limits.

  POST /v1/crop    a photo (raw body or multipart) -> {width, height, faces, crops: [{box,
                   score, aspect, not_kept, cut_faces}]} (results.jsonl's fields), or with
                   format=image the top crop's bytes (the CLI's encoding)
  POST /v1/score   a photo and boxes -> {width, height, scores}
  GET  /healthz    the process answers; GET /readyz  the model is loaded and its passes ready
  GET  /metrics    Prometheus text (metrics.py);     GET /  the web page (page.py)

A crop or score request is admitted (or refused with 503 and Retry-After when `queue` plus
`max_batch` requests are already held), its body read within the limits (limits.py), its photo
decoded and put on the model's canvas in a thread pool, then handed to the model thread
(batcher.py), which batches it with what else has arrived. Every request has a time limit
(504). Any failure is a JSON error; an unexpected one is a 500 for that request alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np
from PIL import Image
from starlette import applications
from starlette import exceptions
from starlette import requests
from starlette import responses
from starlette import routing

from procrop_jax import cropper as cropper_lib
from procrop_jax import photos
from procrop_jax.serve import batcher as batcher_lib
from procrop_jax.serve import errors
from procrop_jax.serve import limits as limits_lib
from procrop_jax.serve import metrics as metrics_lib
from procrop_jax.serve import options
from procrop_jax.serve import page

Handler = Callable[[requests.Request], Awaitable[responses.Response]]


@dataclasses.dataclass(frozen=True)
class Settings:
  """The server's knobs (`procrop serve --help` describes each)."""
  limits: limits_lib.Limits = limits_lib.Limits()
  max_batch: int = 16
  max_wait_ms: float = 5.0
  queue: int = 64  # Requests held beyond the batch on the model.
  decode_workers: int = 2
  warm_up: bool = True  # Prepare every canvas's passes before /readyz says ready.
  warm_aspects: tuple[cropper_lib.Target, ...] = ()  # Their passes too.


class Server:
  """One model, its batcher and decoding threads, and the routes over them."""

  def __init__(self, cropper: cropper_lib.Cropper, settings: Settings = Settings()):
    self.settings = settings
    self.limits = settings.limits
    self.admission = limits_lib.Admission(settings.queue + settings.max_batch)
    # The gauges read the batcher when scraped; it is made just below.
    self.metrics = metrics_lib.Metrics(queue_depth=lambda: self.batcher.depth,
                                       held=lambda: self.admission.held)
    self.batcher = batcher_lib.Batcher(cropper, max_batch=settings.max_batch,
                                       max_wait_s=settings.max_wait_ms / 1000,
                                       on_batch=self.metrics.observe_batch)
    self.decoder = concurrent.futures.ThreadPoolExecutor(settings.decode_workers,
                                                         thread_name_prefix="procrop-decode")
    self.stopping = False
    self.page = page.render()

  # ------------------------------------------------------------------------------- lifecycle
  @contextlib.asynccontextmanager
  async def lifespan(self, app):
    del app
    self.batcher.start(warm_up=self.settings.warm_up, aspects=self.settings.warm_aspects)
    try:
      yield
    finally:
      # Uvicorn has stopped accepting and answered the requests in flight (SIGTERM) by now.
      self.stopping = True
      await asyncio.get_running_loop().run_in_executor(None, self.batcher.close)
      self.decoder.shutdown(wait=True)

  def app(self) -> applications.Starlette:
    """The Starlette app; `app.state.server` is this Server."""
    app = applications.Starlette(
        routes=[
            routing.Route("/", self.index, methods=["GET"]),
            routing.Route("/healthz", self.healthz, methods=["GET"]),
            routing.Route("/readyz", self.readyz, methods=["GET"]),
            routing.Route("/metrics", self.metrics_page, methods=["GET"]),
            routing.Route("/v1/crop", self.crop, methods=["POST"]),
            routing.Route("/v1/score", self.score, methods=["POST"]),
        ],
        exception_handlers={exceptions.HTTPException: self._http_error,
                            Exception: self._unexpected},
        lifespan=self.lifespan)
    app.state.server = self
    return app

  # ---------------------------------------------------------------------------------- routes
  async def index(self, request: requests.Request) -> responses.Response:
    del request
    return responses.HTMLResponse(self.page)

  async def healthz(self, request: requests.Request) -> responses.Response:
    del request
    return responses.JSONResponse({"status": "alive"})

  async def readyz(self, request: requests.Request) -> responses.Response:
    del request
    if self.batcher.failed is not None:
      return errors.ApiError(503, "not_ready", f"preparing the model failed: "
                             f"{self.batcher.failed}").response()
    if self.stopping or not self.batcher.ready.is_set():
      return errors.ApiError(503, "not_ready", "stopping" if self.stopping
                             else "the model's passes are being prepared").response()
    return responses.JSONResponse({"status": "ready", "max_batch": self.settings.max_batch})

  async def metrics_page(self, request: requests.Request) -> responses.Response:
    del request
    return responses.Response(self.metrics.exposition(), media_type=metrics_lib.CONTENT_TYPE)

  async def crop(self, request: requests.Request) -> responses.Response:
    return await self._guarded("crop", self._crop, request)

  async def score(self, request: requests.Request) -> responses.Response:
    return await self._guarded("score", self._score, request)

  # ----------------------------------------------------------------------------- the work
  async def _crop(self, request: requests.Request) -> responses.Response:
    data, fields = await limits_lib.read_upload(request, self.limits)
    opts = options.crop_options(options.merged(request.query_params.multi_items(), fields))
    keep = opts.format == "image"  # The full photo is kept only to cut the crop from it.
    photo, prepared = await self._in_decoder(self._decode, data, keep)
    del data
    future = self.batcher.submit_crop(prepared, opts.targets, opts.top_k)
    by_label = await asyncio.wrap_future(future)
    if keep:
      target = opts.targets[0]
      if not by_label[target.label]:
        raise errors.ApiError(422, "no_crop", f"no crop of aspect {target.label} fits")
      top = by_label[target.label][0]
      body, fmt = await self._in_decoder(_encode, photo, top.box, target.size)
      return responses.Response(body, media_type=Image.MIME.get(fmt, "image/jpeg"), headers={
          "X-Crop-Box": ",".join(str(v) for v in top.box),
          "X-Crop-Score": f"{top.score:.6f}", "X-Crop-Aspect": top.aspect})
    width, height = prepared.size
    crops = [c.record() for t in opts.targets for c in by_label[t.label]]
    return responses.JSONResponse({"width": width, "height": height,
                                   "faces": prepared.face_records(), "crops": crops})

  async def _score(self, request: requests.Request) -> responses.Response:
    data, fields = await limits_lib.read_upload(request, self.limits)
    boxes = options.score_boxes(options.merged(request.query_params.multi_items(), fields))
    _, prepared = await self._in_decoder(self._decode, data, False)
    del data
    options.check_inside(boxes, prepared.size)
    scores = await asyncio.wrap_future(self.batcher.submit_score(prepared, np.array(boxes)))
    width, height = prepared.size
    return responses.JSONResponse({"width": width, "height": height,
                                   "scores": [round(float(s), 6) for s in scores]})

  def _decode(self, data: bytes, keep: bool
              ) -> tuple[photos.Photo | None, cropper_lib.Prepared]:
    """The photo (if kept) and its canvas; runs in a decoding thread."""
    photo = limits_lib.decode(data, self.limits)
    try:
      prepared = self.batcher.cropper.prepare(photo.image)
    except photos.PhotoError as e:
      raise errors.ApiError(400, "bad_photo", str(e)) from None
    except Exception as e:  # pylint: disable=broad-except  (pixels that fail late are the photo's)
      raise errors.ApiError(400, "bad_photo", f"cannot decode ({type(e).__name__}: {e})"
                            ) from None
    return (photo if keep else None), prepared

  async def _in_decoder(self, fn: Callable[..., Any], *args) -> Any:
    return await asyncio.get_running_loop().run_in_executor(self.decoder, fn, *args)

  # ------------------------------------------------------------------- admission and errors
  async def _guarded(self, route: str, handler: Handler, request: requests.Request
                     ) -> responses.Response:
    """Admission, the time limit, JSON errors and the metrics of one crop or score request."""
    start = time.perf_counter()
    if not self.admission.enter():
      response = errors.ApiError(
          503, "overloaded", f"the server holds {self.admission.capacity} requests; retry "
          f"in {self.limits.retry_after_s} s",
          headers={"Retry-After": str(self.limits.retry_after_s)}).response()
      self._count(route, response, "overloaded", start)
      return response
    kind = None
    try:
      response = await asyncio.wait_for(handler(request), self.limits.timeout_s)
    except errors.ApiError as e:
      response, kind = e.response(), e.kind
    except asyncio.TimeoutError:
      response = errors.ApiError(504, "timeout", f"no answer within the time limit of "
                                 f"{self.limits.timeout_s:g} s").response()
      kind = "timeout"
    except Exception as e:  # pylint: disable=broad-except  (the server outlives any request)
      logging.exception("procrop serve: %s failed", route)
      response = errors.ApiError(500, "internal", f"{type(e).__name__}: {e}").response()
      kind = "internal"
    finally:
      self.admission.leave()
    self._count(route, response, kind, start)
    return response

  def _count(self, route: str, response: responses.Response, kind: str | None,
             start: float) -> None:
    self.metrics.requests.labels(route, str(response.status_code)).inc()
    self.metrics.latency.labels(route).observe(time.perf_counter() - start)
    if kind:
      self.metrics.errors.labels(kind).inc()

  async def _http_error(self, request: requests.Request, exc: exceptions.HTTPException
                        ) -> responses.Response:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
    self.metrics.errors.labels(kind).inc()
    message = (f"{request.method} {request.url.path}: {exc.detail}; routes: POST /v1/crop, "
               "POST /v1/score, GET /healthz, /readyz, /metrics, /")
    return errors.ApiError(exc.status_code, kind, message, headers=exc.headers).response()

  async def _unexpected(self, request: requests.Request, exc: Exception
                        ) -> responses.Response:
    logging.exception("procrop serve: %s %s failed", request.method, request.url.path,
                      exc_info=exc)
    self.metrics.errors.labels("internal").inc()
    return errors.ApiError(500, "internal", f"{type(exc).__name__}: {exc}").response()


def _encode(photo: photos.Photo, box, size) -> tuple[bytes, str]:
  """The crop's bytes in the photo's format, with its ICC profile and EXIF (`photos.write_crop`,
  the command line's rules), and the format's name."""
  fmt = photos.output_format(photo, "keep")
  buffer = io.BytesIO()
  photos.write_crop(photo, box, buffer, fmt=fmt, size=size)
  return buffer.getvalue(), fmt


def create_app(cropper: cropper_lib.Cropper, settings: Settings = Settings()
               ) -> applications.Starlette:
  """The ASGI app serving `cropper` (run it with uvicorn; `procrop serve` does)."""
  return Server(cropper, settings).app()
