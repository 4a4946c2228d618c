"""The ``url`` form field of ``POST /v1/audio/transcriptions``: transcribe a stored object (``s3://bucket/key``,
``file:///path``) instead of an upload. Groq's OpenAI-compatible API has the same field ("either a file or a URL
must be provided"); OpenAI's own API has only ``file``.

Off unless ``http.url_input.enabled``; then a URL is read only when it lies under one of
``http.url_input.allowed_prefixes``, at a path-segment boundary, so a request can never read arbitrary local files
or buckets:

- the scheme must be the scheme of an allowed prefix; ``s3://`` URLs must name the prefix's bucket and a key under
  its key prefix (``s3://audio/in/`` allows ``s3://audio/in/a.flac``, not ``s3://audio/inbox/a.flac``);
- ``.`` and ``..`` segments, empty segments, query strings, fragments, backslashes and control characters are
  refused outright (nothing is normalised away);
- compound fsspec URLs are refused (400): a chain (``::`` anywhere, as in ``simplecache::s3://...`` or
  ``file:///allowed/x.flac::s3://...``, which fsspec would read through its first link while the checks saw the
  whole string), and archive or in-memory protocols (``zip://``, ``tar://``, ``memory://``...) are never a
  scheme of an allowed prefix (``pipelines.config.URL_INPUT_SCHEMES``: plain files and object stores only);
- ``file://`` URLs are resolved with every symlink followed (``os.path.realpath``) and must land inside the
  resolved prefix directory; the resolved path is what is read.

The bytes are read by the batch job's own code (:meth:`pipelines.io.storage.Storage.read`: fsspec, retries on
transient errors) with ``http.max_upload_bytes`` as its limit: a larger file is refused (413) by its size before
it is read (``stat`` locally, a HEAD on S3), and the read itself stops one byte past the limit.
"""

from __future__ import annotations

import os
import posixpath
from typing import Sequence

from pipelines.config import ServeURLInputConfig
from pipelines.core.errors import SourceTooLargeError
from pipelines.io.storage import Storage, is_transient
from serve_app.schemas import APIError


def _not_allowed(url: str, why: str, param: str = "url") -> APIError:
    return APIError(403, f"reading {url!r} is not allowed: {why}", code="url_not_allowed", param=param)


def resolve_url(url: str, cfg: ServeURLInputConfig) -> str:
    """The location to read for a request's ``url``: a local path (symlinks resolved) for ``file://``, the URL
    itself otherwise.

    Raises:
        APIError: 403 ``url_input_disabled`` (the option is off) or ``url_not_allowed`` (outside the allowed
            prefixes, traversal, a symlink leading out, another scheme); 400 ``invalid_value`` (not a URL, a query
            string, a chained ``::`` URL...).
    """
    if not cfg.enabled:
        raise APIError(403, "this server does not read audio from URLs (http.url_input.enabled is false); "
                            "upload the file instead", code="url_input_disabled", param="url")
    return resolve_under(url, cfg.allowed_prefixes)


def resolve_under(url: str, allowed_prefixes: Sequence[str], param: str = "url") -> str:
    """The location ``url`` names if it lies under one of ``allowed_prefixes`` by the rules of the module doc: a
    local path (symlinks resolved) for ``file://``, the URL itself otherwise. ``param`` is the request field
    named in the errors. Used by the ``url`` input and by the job endpoints (manifest, audio, output).

    Raises:
        APIError: 403 ``url_not_allowed`` (outside the prefixes, traversal, a symlink leading out, another
            scheme); 400 ``invalid_value`` (not a URL, a query string, a chained ``::`` URL...).
    """
    if not isinstance(url, str):
        raise APIError(400, f"{param} must be a URL string", code="invalid_value", param=param)
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.isascii() or not scheme.replace("+", "").isalnum():
        raise APIError(400, f"{param} must be a URL such as s3://bucket/key.flac or file:///srv/audio/a.flac",
                       code="invalid_value", param=param)
    if any(ch in url for ch in "?#\\") or any(ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise APIError(400, f"{param} must not carry a query string, a fragment, backslashes or control characters",
                       code="invalid_value", param=param)
    if "::" in url:
        raise APIError(400, f"{param} must be one plain URL; chained URLs ('::', as in simplecache::s3://...) are "
                            "not accepted", code="invalid_value", param=param)
    scheme = scheme.lower()
    prefixes = [p.partition("://")[2] for p in allowed_prefixes if p.partition("://")[0].lower() == scheme]
    if not prefixes:
        raise _not_allowed(url, f"{scheme}:// URLs are not accepted here", param)
    if scheme == "file":
        return _resolve_file(url, rest, prefixes, param)
    bucket, _, key = rest.partition("/")
    if not bucket or not key or any(seg in ("", ".", "..") for seg in key.rstrip("/").split("/")):
        raise _not_allowed(url, "it must name an object under a bucket, without '.', '..' or empty path segments",
                           param)
    for prefix in prefixes:
        allowed_bucket, _, allowed_key = prefix.partition("/")
        allowed_key = allowed_key.strip("/")
        if bucket == allowed_bucket and (not allowed_key or key.startswith(allowed_key + "/")):
            return f"{scheme}://{bucket}/{key}"
    raise _not_allowed(url, "it is outside the allowed prefixes", param)


def _resolve_file(url: str, rest: str, prefixes: Sequence[str], param: str) -> str:
    path = rest[len("localhost"):] if rest.startswith("localhost/") else rest
    if not path.startswith("/"):
        raise _not_allowed(url, "a file URL must be absolute (file:///path)", param)
    if any(seg in (".", "..") for seg in path.split("/")):
        raise _not_allowed(url, "'.' and '..' path segments are not accepted", param)
    real = os.path.realpath(path)
    if "::" in real:  # a symlink whose target fsspec would read as a chain
        raise _not_allowed(url, "it resolves to a path that fsspec would read as a chained URL ('::')", param)
    for prefix in prefixes:
        base = os.path.realpath(prefix)
        if real.startswith(base.rstrip("/") + "/"):
            return real
    raise _not_allowed(url, "it is outside the allowed prefixes (symlinks resolved)", param)


def _storage_error(exc: BaseException, url: str, retry_after_s: float) -> APIError:
    chain = []
    err = exc
    while err is not None and len(chain) < 16:
        chain.append(err)
        err = err.__cause__ or err.__context__
    if any(isinstance(e, FileNotFoundError) for e in chain):
        return APIError(404, f"{url!r} was not found", code="url_not_found", param="url")
    if any(isinstance(e, PermissionError) for e in chain):
        return APIError(403, f"the server's credentials may not read {url!r}", code="url_access_denied", param="url")
    if any(isinstance(e, IsADirectoryError) for e in chain):
        return APIError(400, f"{url!r} is a directory, not an audio file", code="invalid_value", param="url")
    if is_transient(exc):
        wait = str(max(1, round(retry_after_s)))
        return APIError(503, f"the storage holding {url!r} is unavailable; retry later", code="storage_unavailable",
                        headers={"Retry-After": wait})
    return APIError(502, f"{url!r} cannot be read ({type(exc).__name__})", code="storage_error", param="url")


def read_url(url: str, cfg: ServeURLInputConfig, storage: Storage, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of the object ``url`` names and its file name, after :func:`resolve_url` allowed it.

    Raises:
        APIError: as :func:`resolve_url`; 404 ``url_not_found``; 403 ``url_access_denied`` (the storage refused
            the server's credentials); 413 ``file_too_large`` (above ``max_bytes``: by its size before reading,
            and never more than ``max_bytes + 1`` bytes are read); 400 ``empty_file``; 503 ``storage_unavailable``
            (still failing after the retries).
    """
    location = resolve_url(url, cfg)
    too_large = APIError(413, f"{url!r} is too large; the limit is {max_bytes / 1e6:.1f} MB (http.max_upload_bytes)",
                         code="file_too_large", param="url")
    try:
        data = storage.read(location, max_bytes).content  # the job's read: size check first, then a capped read
    except SourceTooLargeError as exc:
        raise too_large from exc
    except Exception as exc:  # noqa: BLE001 - SourceReadError chaining the storage error
        if exc.__cause__ is None and "empty" in str(exc):
            raise APIError(400, f"{url!r} is empty (0 bytes)", code="empty_file", param="url") from exc
        raise _storage_error(exc, url, storage.retry.max_backoff_s) from exc
    if len(data) > max_bytes:  # Storage.read refuses this already; kept as the last word on the limit
        raise too_large
    return data, posixpath.basename(location.rstrip("/"))
