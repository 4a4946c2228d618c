"""How the ingress answers an error: OpenAI's body ``{"error": {"message", "type", "param", "code"}}`` for every
failure (docs/serving.md).

- :func:`server_error`: a 5xx gets an ``error_id`` (uuid4 hex) and a generic message; the exception's text and
  traceback go to the log under that id, never into the body.
- :func:`model_error`: what a failed call to the model deployment becomes (503 at capacity or no replica, the
  deployment's own :class:`~serve_app.schemas.APIError`, else 500).
- :func:`install_error_handlers`: FastAPI's exception handlers, so that errors raised before a route runs (form
  validation, the body parser, the upload middleware, unknown routes) have the same body as the routes' own and are
  counted in the ingress metrics (:class:`~serve_app.metrics.IngressMetrics`) like them.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.schemas import APIError, api_error_of, request_error

log = logging.getLogger(__name__)

#: The route whose failures the ingress metrics count.
TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
#: The ``response_format`` values a metrics tag may take (anything else is "invalid").
FORMAT_TAGS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")


class TransportError(StarletteHTTPException):
    """An :class:`APIError` raised while the request body is still being received (by the upload middleware's
    ``receive``). It is an HTTPException so that FastAPI's body reader passes it on as it is (any other exception
    there becomes a plain 400); :func:`install_error_handlers` answers it as ``api_error``."""

    def __init__(self, api_error: APIError):
        super().__init__(api_error.status_code, api_error.message, api_error.headers)
        self.api_error = api_error


def server_error(err: APIError, exc: Optional[BaseException] = None) -> APIError:
    """Give a 5xx ``err`` its ``error_id`` (uuid4 hex; kept if the model deployment already set one) and log it
    with the full text of ``exc`` and its traceback, which never go into the response body. 4xx pass unchanged.

    Returns:
        ``err``, for ``raise`` / ``return``.
    """
    if err.status_code < 500:
        return err
    err.error_id = err.error_id or uuid.uuid4().hex
    detail = f": {type(exc).__name__}: {exc}" if exc is not None and exc is not err else ""
    log.error("error_id=%s status=%d code=%s %s%s", err.error_id, err.status_code, err.code, err.message, detail,
              exc_info=exc if detail else None)
    return err


def error_response(err: APIError) -> JSONResponse:
    """``err`` as a JSON response with OpenAI's error body and ``err.headers``; a 5xx that did not pass through
    :func:`server_error` yet gets its error id (and log line) here."""
    if err.status_code >= 500 and err.error_id is None:
        server_error(err)
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


def format_tag(value: Any) -> str:
    """A bounded metrics tag for a requested ``response_format`` ("json" when absent, "invalid" when unknown)."""
    value = value or "json"
    return value if value in FORMAT_TAGS else "invalid"


def record(scope: dict, err: APIError, fmt: str = "unknown") -> None:
    """Count a failed transcription request in the ingress metrics (other routes are not counted). The latency is
    from the request's start (set by the upload middleware) to now."""
    metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
    if metrics is None or scope.get("path") != TRANSCRIPTIONS_PATH:
        return
    started = scope.get("state", {}).get("started")
    latency_s = 0.0 if started is None else max(0.0, time.perf_counter() - started)
    metrics.record(fmt, err.status_code, latency_s, error_code=err.code)


def model_error(exc: BaseException, retry_after_s: float) -> APIError:
    """The :class:`APIError` for a failed call to the model deployment: 503 ``server_overloaded`` with
    Retry-After (its queue is full), 503 ``model_unavailable`` (no replica), the deployment's own APIError, or
    500 ``internal_error``."""
    if isinstance(exc, BackPressureError):
        wait = max(1, math.ceil(exc.retry_after_s if exc.retry_after_s is not None else retry_after_s))
        return APIError(503, f"the server is at capacity; retry after {wait} s", code="server_overloaded",
                        headers={"Retry-After": str(wait)})
    if isinstance(exc, (ActorDiedError, ActorUnavailableError)):
        return APIError(503, "the model replica is unavailable; retry shortly", code="model_unavailable",
                        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})
    return api_error_of(exc) or APIError(500, "internal error", code="internal_error")


def _respond(request: Request, err: APIError, exc: Optional[BaseException] = None,
             fmt: Optional[str] = None) -> JSONResponse:
    server_error(err, exc)
    record(request.scope, err, fmt or getattr(request.state, "response_format", "unknown"))
    return error_response(err)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return _respond(request, exc, exc.__cause__)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, TransportError):
        return _respond(request, exc.api_error)
    if exc.status_code == 400:  # only the form parser raises these: a malformed body, too many fields or files
        err = APIError(400, f"malformed multipart/form-data body: {exc.detail}", code="invalid_body")
    else:
        code = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}.get(exc.status_code)
        err = APIError(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None))
    return _respond(request, err)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    body = exc.body if hasattr(exc.body, "get") else {}
    return _respond(request, request_error(list(exc.errors())), fmt=format_tag(body.get("response_format")))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # anything a route did not map itself: 500 with an error id, never the exception's text
    return _respond(request, APIError(500, "internal error", code="internal_error"), exc)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with OpenAI's body (see the module doc)."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
