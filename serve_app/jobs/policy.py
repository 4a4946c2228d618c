"""What a job request may ask for (docs/jobs.md, "Security"): every check a ``POST /v1/jobs`` passes before anything
is submitted, each failing with an OpenAI-style :class:`~serve_app.schemas.APIError` that names the field.

- :func:`require_enabled`: 403 ``jobs_disabled`` while ``jobs.allowed_prefixes`` is empty.
- :func:`check_output`, :func:`check_manifest`, :func:`check_urls`: the output folder, the manifest and every
  audio file it lists lie under ``jobs.allowed_prefixes`` by the ``url`` input's rules
  (:func:`serve_app.url_input.resolve_under`: no traversal, no chained ``::`` URLs, no symlinks leading out);
  the manifest is read here, its rows counted against ``jobs.max_manifest_rows`` (413) and its size against
  ``jobs.max_manifest_bytes`` (413) before anything is submitted.
- :func:`check_overrides`: the request's ``config`` keys are among ``jobs.allowed_overrides`` (403) and, applied
  to the job's config, pass the job's own config loader (400 naming the field).
- :func:`check_webhook`: ``webhook_url`` lies under ``jobs.webhook_prefixes`` (http(s): scheme, host, port and a
  path prefix at a segment boundary; no user info, query or fragment).
- :func:`key_hash`: the caller's identity for listing and limits, a hash of the API key (never the key).

Plain functions over the config: tested without Ray.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

from fsspec.core import url_to_fs

from pipelines.config import load_config
from pipelines.config.jobs import ALLOWED_PREFIXES_ENV, ServeJobsConfig
from pipelines.core.errors import ConfigError, ManifestError
from pipelines.io.manifest import ManifestRow, read_manifest
from pipelines.io.storage import Storage
from serve_app.schemas import APIError
from serve_app.url_input import resolve_under

#: The identity of callers when the endpoint has no API key.
ANONYMOUS = "anonymous"


def require_enabled(cfg: ServeJobsConfig) -> None:
    """Raises APIError 403 ``jobs_disabled`` (saying how to enable them) unless some prefix is allowed."""
    if not cfg.enabled:
        raise APIError(403, "asynchronous jobs are disabled on this server: no allowed prefixes. Set "
                            f"jobs.allowed_prefixes in the Serve config or {ALLOWED_PREFIXES_ENV} (comma-separated "
                            "URL prefixes such as file:///srv/audio/,s3://bucket/in/) where the application is built",
                       code="jobs_disabled")


def key_hash(api_key: Optional[str]) -> str:
    """The caller's identity stored with its jobs: the first 32 hex digits of SHA-256 over a fixed label and the
    key; :data:`ANONYMOUS` without a key."""
    if not api_key:
        return ANONYMOUS
    return hashlib.sha256(b"raywhisper-jobs\0" + api_key.encode()).hexdigest()[:32]


def as_url(location: str) -> str:
    """A manifest row's resolved ``uri`` as a URL (local absolute paths become ``file://`` URLs)."""
    return location if "://" in location else "file://" + location


def check_output(output: Any, cfg: ServeJobsConfig) -> str:
    """The output folder's location (a local path or a URL) once it is allowed.

    Raises:
        APIError: 400 not a URL; 403 ``url_not_allowed``.
    """
    return resolve_under(output, cfg.allowed_prefixes, "output")


def check_rows(rows: Sequence[ManifestRow], cfg: ServeJobsConfig, param: str) -> list[ManifestRow]:
    """``rows`` with each ``uri`` replaced by its checked location (symlinks resolved), in order.

    Raises:
        APIError: 413 ``too_many_rows`` above ``jobs.max_manifest_rows``; 403 ``url_not_allowed`` naming the first
            row outside the prefixes (by its line).
    """
    if len(rows) > cfg.max_manifest_rows:
        raise APIError(413, f"{param} has {len(rows)} rows; the limit is {cfg.max_manifest_rows} "
                            "(jobs.max_manifest_rows): split it into several jobs", code="too_many_rows", param=param)
    checked = []
    for row in rows:
        if row.error is not None:  # never read by the job: it becomes an error row as it is
            checked.append(row)
            continue
        where = f"{param} line {row.line}" if row.line else param
        location = resolve_under(as_url(row.uri), cfg.allowed_prefixes, where)
        checked.append(ManifestRow(**{**row.to_dict(), "uri": location}))
    return checked


def check_manifest(manifest: Any, cfg: ServeJobsConfig, storage: Storage) -> tuple[str, list[ManifestRow]]:
    """Read the manifest a request names and check it and its rows; returns its location and the checked rows.

    Raises:
        APIError: as :func:`check_rows`; 403 the manifest is outside the prefixes; 413 ``manifest_too_large``
            above ``jobs.max_manifest_bytes``; 400 ``invalid_manifest`` (the job's manifest reader's message,
            naming the line).
    """
    location = resolve_under(manifest, cfg.allowed_prefixes, "manifest")
    try:
        fs, path = url_to_fs(location, **storage.options_for(location))
        size = fs.size(path) if fs.isfile(path) else 0
    except FileNotFoundError:
        size = 0  # a glob: read_manifest says what it finds
    except Exception as exc:  # noqa: BLE001 - unreachable storage, no fsspec package for the scheme
        raise APIError(400, f"manifest {manifest!r} cannot be reached ({type(exc).__name__})",
                       code="invalid_manifest", param="manifest") from exc
    if size > cfg.max_manifest_bytes:
        raise APIError(413, f"manifest {manifest!r} is {size / 1e6:.1f} MB; the limit is "
                            f"{cfg.max_manifest_bytes / 1e6:.1f} MB (jobs.max_manifest_bytes)",
                       code="manifest_too_large", param="manifest")
    try:
        rows = read_manifest(location, storage.options_for(location))
    except ManifestError as exc:
        raise APIError(400, f"manifest: {exc}", code="invalid_manifest", param="manifest") from exc
    return location, check_rows(rows, cfg, "manifest")


def check_urls(urls: Sequence[str], cfg: ServeJobsConfig) -> list[ManifestRow]:
    """The manifest rows of a ``urls`` request (id: the URL as given), each checked.

    Raises:
        APIError: as :func:`check_rows`; 400 ``invalid_value`` for a URL given twice.
    """
    if len(urls) > cfg.max_manifest_rows:
        raise APIError(413, f"urls has {len(urls)} entries; the limit is {cfg.max_manifest_rows} "
                            "(jobs.max_manifest_rows)", code="too_many_rows", param="urls")
    if len(set(urls)) != len(urls):
        raise APIError(400, "urls lists a URL more than once", code="invalid_value", param="urls")
    return [ManifestRow(id=url, audio_filepath=url, line=i + 1,
                        uri=resolve_under(url, cfg.allowed_prefixes, f"urls[{i}]")) for i, url in enumerate(urls)]


def override_list(config: dict[str, Any]) -> list[str]:
    """The ``--set key=value`` items of a request's ``config`` mapping (values as JSON, which YAML reads)."""
    return [f"{key}={json.dumps(value)}" for key, value in config.items()]


def check_overrides(config: dict[str, Any], cfg: ServeJobsConfig) -> list[str]:
    """The job's ``--set`` items for a request's ``config`` (``{"decoding.beam_size": 1}``), once each key is allowed
    and the job's config loader accepts them over ``jobs.job_config``.

    Raises:
        APIError: 403 ``config_not_allowed`` naming a key outside ``jobs.allowed_overrides``; 400 ``invalid_value``
            with the loader's message (it names the field).
    """
    for key in config:
        if not any(key == entry or (entry.endswith(".") and key.startswith(entry)) for entry in cfg.allowed_overrides):
            raise APIError(403, f"config key {key!r} may not be set by a request; allowed: "
                                f"{', '.join(cfg.allowed_overrides)} (jobs.allowed_overrides)",
                           code="config_not_allowed", param=f"config.{key}")
    items = override_list(config)
    try:
        load_config(cfg.job_config, items)
    except ConfigError as exc:
        raise APIError(400, f"config: {exc}", code="invalid_value", param="config") from exc
    return items


def check_webhook(url: Optional[str], cfg: ServeJobsConfig) -> Optional[str]:
    """``url`` once it lies under one of ``jobs.webhook_prefixes`` (None passes).

    Raises:
        APIError: 403 ``webhook_not_allowed`` (no prefixes, or outside them); 400 ``invalid_value`` (not an
            http(s) URL, user info, a query, a fragment, '.'/'..' segments).
    """
    if url is None:
        return None
    bad = APIError(400, "webhook_url must be a plain http(s) URL (no user info, query, fragment or '.'/'..' "
                        "segments)", code="invalid_value", param="webhook_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad from exc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment or "::" in url or "\\" in url \
            or any(seg in (".", "..") for seg in parts.path.split("/")) or any(ord(ch) < 33 for ch in url):
        raise bad
    for prefix in cfg.webhook_prefixes:
        allowed = urlsplit(prefix)
        base = allowed.path.rstrip("/")
        if (parts.scheme, parts.hostname, port) == (allowed.scheme, allowed.hostname, allowed.port) and (
                parts.path == base or parts.path.startswith(base + "/")):
            return url
    why = "no webhook prefixes are configured (jobs.webhook_prefixes)" if not cfg.webhook_prefixes else \
        "it is outside jobs.webhook_prefixes"
    raise APIError(403, f"webhook_url {url!r} is not allowed: {why}", code="webhook_not_allowed",
                   param="webhook_url")
