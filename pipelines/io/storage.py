"""Reach storage through fsspec (local paths, ``file://``, ``s3://``, any installed fsspec protocol): the entry
point the job and the endpoint use (see docs/storage.md).

- :func:`resolve_storage` turns the ``storage`` config section into a :class:`Storage`: fsspec options per
  protocol (the S3 endpoint from the config, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, read when it
  is called, never at import) and a :class:`~pipelines.io.retry.RetryPolicy`. It holds no credentials: those are
  found by the client the standard way (environment, profile, instance role) in whichever process reads or writes.
- :meth:`Storage.read` and :meth:`Storage.hash` read an input with retries and guards (:mod:`pipelines.io.reading`);
  :func:`is_transient` (:mod:`pipelines.io.retry`) tells a storage outage from a bad file.
- :func:`check_output` checks, before any work, that an output location can be written; the writes themselves are
  :mod:`pipelines.io.writing`.
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.config import StorageConfig
from pipelines.core.errors import StorageError
from pipelines.io.reading import SourceBytes, hash_source, read_source
from pipelines.io.retry import RetryPolicy, is_transient
from pipelines.io.writing import write_atomic

__all__ = ["S3_PROTOCOLS", "RetryPolicy", "SourceBytes", "Storage", "check_output", "is_transient", "protocol_of",
           "resolve_storage"]

log = logging.getLogger(__name__)

S3_PROTOCOLS = ("s3", "s3a")


def protocol_of(uri: str) -> str:
    """The fsspec protocol of ``uri``: ``file`` for local paths and ``file://``, else the URL scheme."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


@dataclass(frozen=True)
class Storage:
    """How this job or replica reaches storage: fsspec options per protocol and the retry policy. Picklable
    (handed to the Ray workers), and free of credentials."""

    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def options_for(self, uri: str) -> dict:
        """fsspec options for the filesystem of ``uri`` (a fresh dict)."""
        return _merge({}, self.options.get(protocol_of(uri), {}))

    def read(self, uri: str, max_bytes: Optional[int] = None) -> SourceBytes:
        """:func:`~pipelines.io.reading.read_source` with this storage's options and retries.

        Raises:
            SourceReadError, SourceTooLargeError: see :func:`~pipelines.io.reading.read_source`.
        """
        return read_source(uri, self.options_for(uri), self.retry, max_bytes)

    def hash(self, uri: str, max_bytes: Optional[int] = None) -> str:
        """:func:`~pipelines.io.reading.hash_source` with this storage's options and retries."""
        return hash_source(uri, self.options_for(uri), self.retry, max_bytes)


def resolve_storage(cfg: Optional[StorageConfig] = None, environ: Optional[Mapping[str, str]] = None) -> Storage:
    """The :class:`Storage` of a ``storage`` config section. The S3 endpoint is ``cfg.endpoint_url``, else
    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` from ``environ`` (default: ``os.environ`` now), unless
    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is true (as botocore does)."""
    cfg = cfg or StorageConfig()
    env = os.environ if environ is None else environ
    # no listing cache: a long-lived process (a Serve replica) must see objects written after it listed a prefix
    s3: dict[str, Any] = {"use_listings_cache": False}
    endpoint = cfg.endpoint_url
    if endpoint is None and env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    if endpoint:
        s3["endpoint_url"] = endpoint
    client_kwargs = dict(cfg.client_kwargs)
    if cfg.region:
        client_kwargs["region_name"] = cfg.region
    if client_kwargs:
        s3["client_kwargs"] = client_kwargs
    s3["config_kwargs"] = _merge({"retries": {"max_attempts": cfg.retry.client_max_attempts, "mode": "standard"}},
                                 cfg.config_kwargs)
    if cfg.anon:
        s3["anon"] = True
    if cfg.profile:
        s3["profile"] = cfg.profile
    options: dict[str, dict] = {proto: _merge({}, s3) for proto in S3_PROTOCOLS}
    for proto, extra in cfg.options.items():
        options[proto] = _merge(options.get(proto, {}), extra)
    return Storage(options, RetryPolicy.from_config(cfg.retry))


def check_output(output_uri: str, storage: Optional[Storage] = None, probe_name: str = "write-probe") -> None:
    """Check, before any work, that the output location can be written.

    Local paths: the folder, or its nearest existing parent, is a writable directory (nothing is created).
    Other filesystems: a small probe object is written under ``_tmp/`` (atomically, as the parts will be) and
    removed; the bucket must exist, since the job never creates buckets.

    Raises:
        StorageError: the bucket does not exist, access is denied, the storage cannot be reached, or the local
            folder is not a writable directory; the message names the location and what to do.
    """
    storage = storage or Storage()
    try:
        fs, root = url_to_fs(output_uri, **storage.options_for(output_uri))
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"output {output_uri}: cannot be used ({exc})") from exc
    root = root.rstrip("/")
    if isinstance(fs, LocalFileSystem):
        existing = os.path.abspath(root)
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise StorageError(f"output {output_uri}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(f"output {output_uri}: the folder {existing} is not writable")
        return
    probe = posixpath.join(root, "_tmp", f"{probe_name}-{uuid.uuid4().hex[:8]}")
    bucket = root.split("/", 1)[0]
    try:
        write_atomic(fs, probe, b"", storage.retry)
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, FileNotFoundError):
            raise StorageError(
                f"output {output_uri}: the bucket {bucket!r} does not exist ({cause}); create it first: the job "
                "never creates buckets") from cause
        if isinstance(cause, PermissionError):
            raise StorageError(f"output {output_uri}: access denied writing under it ({cause}); check the "
                               "credentials' write permission (s3:PutObject)") from cause
        raise StorageError(f"output {output_uri}: cannot be written ({cause!r})") from cause
    try:
        fs.rm_file(probe)
    except Exception as exc:  # noqa: BLE001 - a leftover probe under _tmp/ is harmless (readers skip '_' names)
        log.warning("output %s: could not remove the write probe %s (%s)", output_uri, probe, exc)
