"""Limits on receiving a request body (docs/security.md): its size (``http.max_upload_bytes``) and the time it
may take (``http.request_timeout_s``, the same deadline the route then works under).
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from serve_app.errors import TransportError, error_response, record
from serve_app.schemas import APIError

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the text fields, allowed on top of max_upload_bytes
MAX_FORM_FIELDS = 32  # text fields accepted in one form (the API has 7)


class UploadLimitMiddleware:
    """Pure ASGI middleware for HTTP requests.

    Every request gets ``scope["state"]["started"]`` (``time.perf_counter()``) and ``["deadline"]`` (the event
    loop's clock + ``timeout_s``), which the route's work runs under. A POST/PUT/PATCH whose ``Content-Length`` is
    above ``max_body_bytes`` gets 413 ``file_too_large`` before its body is read; a body without one (chunked)
    fails with 413 from ``receive`` once it passes the limit, and a body still incomplete at the deadline with 408
    ``upload_timeout`` (both as :class:`~serve_app.errors.TransportError`, answered by the app's handlers).
    ``paths`` gives other limits to the routes at or under a path: ``{"/v1/jobs": (max_body_bytes, timeout_s)}``.
    """

    def __init__(self, app, max_body_bytes: int, timeout_s: float,
                 paths: Optional[dict[str, tuple[int, float]]] = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.paths = dict(paths or {})

    def _limits(self, path: str) -> tuple[int, float, str]:
        for prefix, (size, timeout) in self.paths.items():
            if path == prefix or path.startswith(prefix + "/"):
                return size, timeout, "jobs.upload_timeout_s"
        return self.max_body_bytes, self.timeout_s, "http.request_timeout_s"

    @staticmethod
    def _too_large(max_body_bytes: int, size: str) -> APIError:
        limit_mb = (max_body_bytes - FORM_OVERHEAD_BYTES) / 1e6
        return APIError(413, f"the upload is too large ({size}); the limit is {limit_mb:.1f} MB",
                        code="file_too_large", param="file")

    @staticmethod
    def _late(timeout_s: float, setting: str) -> APIError:
        return APIError(408, f"the request was not received within {timeout_s:g} s ({setting})",
                        code="upload_timeout")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_body_bytes, timeout_s, setting = self._limits(scope.get("path") or "")
        deadline = asyncio.get_running_loop().time() + timeout_s
        scope.setdefault("state", {}).update(started=time.perf_counter(), deadline=deadline)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            err = self._too_large(max_body_bytes, f"{int(length) / 1e6:.1f} MB")
            record(scope, err)
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive, deadline, max_body_bytes, timeout_s, setting), send)

    def _limited(self, receive, deadline: float, max_body_bytes: int, timeout_s: float, setting: str):
        seen = 0
        complete = False

        async def limited_receive():
            nonlocal seen, complete
            if complete:  # the body is in: later reads (a disconnect) are not the upload's
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError as exc:
                raise TransportError(self._late(timeout_s, setting)) from exc
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body_bytes:
                    raise TransportError(self._too_large(max_body_bytes, f"more than {max_body_bytes / 1e6:.1f} MB"))
                complete = not message.get("more_body", False)
            return message

        return limited_receive
