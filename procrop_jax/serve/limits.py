"""What the server accepts: body size, content type, pixel count, time, and how many requests
it holds at once; each refusal is an `ApiError` with its own status.

- A body over `max_body_bytes` is 413: refused from its Content-Length before it is read, or as
  soon as a chunked body passes the limit (it is never held whole).
- A photo over `max_pixels` is 413, refused from its header (PIL reads the size without
  decoding a pixel, `photos.decode_photo`); an empty, truncated or undecodable photo is 400
  with the decoder's reason.
- A body that is neither an image (`image/*`, `application/octet-stream`, or none named) nor
  `multipart/form-data` is 415.
- `Admission` holds at most `capacity` crop and score requests at once (read, decoded, queued
  or on the model); one more is 503 with Retry-After. With the body limit this bounds memory.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, AsyncIterator

from starlette import datastructures
from starlette import formparsers
from starlette import requests

from procrop_jax import photos
from procrop_jax.serve import errors

IMAGE_FIELD = "image"  # The multipart field that holds the photo (or the one file part).
_RAW_TYPES = ("application/octet-stream", "")
MAX_FIELDS = 32  # Multipart text fields per request.


@dataclasses.dataclass(frozen=True)
class Limits:
  max_body_bytes: int = 20 * 2**20
  max_pixels: int = photos.DEFAULT_MAX_PIXELS
  timeout_s: float = 30.0
  retry_after_s: int = 1


def _too_large(limits: Limits) -> errors.ApiError:
  return errors.ApiError(413, "body_too_large",
                         f"the body is over the limit of {limits.max_body_bytes / 2**20:g} MB")


async def read_body(request: requests.Request, limits: Limits) -> bytes:
  """The whole body, at most limits.max_body_bytes (413 beyond it, checked as it arrives)."""
  declared = request.headers.get("content-length")
  if declared is not None:
    try:
      if int(declared) > limits.max_body_bytes:
        raise _too_large(limits)
    except ValueError:
      raise errors.ApiError(400, "bad_request", "Content-Length is not a number") from None
  chunks, total = [], 0
  async for chunk in request.stream():
    total += len(chunk)
    if total > limits.max_body_bytes:
      raise _too_large(limits)
    chunks.append(chunk)
  return b"".join(chunks)


async def _once(body: bytes) -> AsyncIterator[bytes]:
  yield body


async def read_upload(request: requests.Request, limits: Limits
                      ) -> tuple[bytes, list[tuple[str, Any]]]:
  """(photo bytes, form fields) of a raw image body or a multipart form.

  A raw body's options come from the query string alone; a form's text fields are options too.
  """
  content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
  if content_type == "multipart/form-data":
    body = await read_body(request, limits)
    parser = formparsers.MultiPartParser(request.headers, _once(body), max_files=1,
                                         max_fields=MAX_FIELDS,
                                         max_part_size=limits.max_body_bytes)
    try:
      form = await parser.parse()
    except formparsers.MultiPartException as e:
      raise errors.ApiError(400, "bad_request", f"malformed multipart form ({e.message})"
                            ) from None
    try:
      files = [(k, v) for k, v in form.multi_items() if isinstance(v, datastructures.UploadFile)]
      fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
      if not files:
        raise errors.ApiError(422, "bad_options", f"the form has no file; send the photo as "
                              f"the field {IMAGE_FIELD!r} (curl -F {IMAGE_FIELD}=@photo.jpg)")
      data = await files[0][1].read()
    finally:
      await form.close()
    return data, fields
  if content_type.startswith("image/") or content_type in _RAW_TYPES:
    return await read_body(request, limits), []
  raise errors.ApiError(
      415, "unsupported_media_type",
      f"Content-Type {content_type!r}: send the photo's bytes as image/* or "
      "application/octet-stream (curl -H 'Content-Type: image/jpeg' --data-binary @photo.jpg), "
      f"or a multipart form (curl -F {IMAGE_FIELD}=@photo.jpg)")


def decode(data: bytes, limits: Limits) -> photos.Photo:
  """The photo, or 413 (too many pixels, from the header) / 400 (the reason); runs in a
  decoding thread."""
  try:
    return photos.decode_photo(data, max_pixels=limits.max_pixels)
  except photos.PhotoTooLargeError as e:
    raise errors.ApiError(413, "too_many_pixels", str(e)) from None
  except photos.PhotoError as e:
    raise errors.ApiError(400, "bad_photo", str(e)) from None
  except Exception as e:  # pylint: disable=broad-except  (any decoder failure is the photo's)
    raise errors.ApiError(400, "bad_photo", f"cannot decode ({type(e).__name__}: {e})"
                          ) from None


class Admission:
  """At most `capacity` requests held at once; `enter` is False for one more (a 503)."""

  def __init__(self, capacity: int):
    self.capacity = capacity
    self._held = 0
    self._lock = threading.Lock()

  @property
  def held(self) -> int:
    return self._held

  def enter(self) -> bool:
    with self._lock:
      if self._held >= self.capacity:
        return False
      self._held += 1
      return True

  def leave(self) -> None:
    with self._lock:
      self._held -= 1
