"""The one error type the routes raise: an HTTP status, a kind for /metrics, and a reason.

Every error the server answers is JSON, `{"error": {"status", "kind", "message"}}`, so a client
reads the reason the same way whatever went wrong.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
  """A request answered with `status`; `kind` labels it in /metrics (a few fixed names)."""

  def __init__(self, status: int, kind: str, message: str, *,
               headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.kind = kind
    self.message = message
    self.headers = headers or {}

  def response(self) -> JSONResponse:
    return JSONResponse({"error": {"status": self.status, "kind": self.kind,
                                   "message": self.message}},
                        status_code=self.status, headers=self.headers)
