"""The API key of the ``/v1`` routes (docs/security.md): ``Authorization: Bearer <key>``, compared in constant
time, checked by an ASGI middleware before the request body is read, so a caller without the key never gets an
upload parsed or spooled to disk.
"""

from __future__ import annotations

import hmac
import os
from typing import Iterable, Mapping, Optional

from pipelines.config import ServeConfig
from pipelines.core.errors import ConfigError
from serve_app.errors import error_response, record
from serve_app.schemas import APIError

#: The routes that need the key: (method, path).
PROTECTED = frozenset({("POST", "/v1/audio/transcriptions"), ("GET", "/v1/models")})
#: Path prefixes under which every route needs the key (any method): the job endpoints.
PROTECTED_PREFIXES = ("/v1/jobs",)


def resolve_api_key(cfg: ServeConfig) -> Optional[str]:
    """The API key requests must carry: the variable named by ``http.api_key_env``, else ``http.api_key``;
    None when neither is set (no auth).

    Raises:
        ConfigError: ``http.api_key_env`` names a variable that is unset or empty (refuse to run open).
    """
    http = cfg.http
    if http.api_key_env:
        value = os.environ.get(http.api_key_env, "")
        if not value:
            raise ConfigError(f"http.api_key_env names {http.api_key_env!r}, which is not set or empty")
        return value
    return http.api_key.get_secret_value() if http.api_key else None


def check_api_key(headers: Mapping[str, str], api_key: Optional[str]) -> None:
    """Raises APIError 401 unless ``headers`` (lower-case names) hold ``Authorization: Bearer <api_key>``; no-op
    when no key is set."""
    if api_key is None:
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key",
                       headers=challenge)
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key", headers=challenge)


class APIKeyMiddleware:
    """Pure ASGI middleware: a request to one of ``protected`` (method, path), or to any path at or under one of
    ``prefixes``, without the key gets 401 before its body is read. Other routes (health, docs, unknown paths)
    pass."""

    def __init__(self, app, api_key: Optional[str], protected: Iterable[tuple[str, str]] = PROTECTED,
                 prefixes: Iterable[str] = PROTECTED_PREFIXES):
        self.app = app
        self.api_key = api_key
        self.protected = frozenset(protected)
        self.prefixes = tuple(prefixes)

    def _needs_key(self, method: Optional[str], path: str) -> bool:
        return (method, path) in self.protected or any(path == p or path.startswith(p + "/") for p in self.prefixes)

    async def __call__(self, scope, receive, send):
        if (self.api_key is not None and scope["type"] == "http"
                and self._needs_key(scope.get("method"), scope.get("path") or "")):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            try:
                check_api_key(headers, self.api_key)
            except APIError as err:
                record(scope, err)
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)
