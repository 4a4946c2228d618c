"""Reach storage through fsspec (local paths, ``file://``, ``s3://``, any installed fsspec protocol): read input
bytes with retries, write output files atomically, check an output location before any work.

- :func:`resolve_storage` turns the ``storage`` config section into a :class:`Storage`: fsspec options per
  protocol (the S3 endpoint from the config, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, read when it
  is called, never at import) and a :class:`RetryPolicy`. It holds no credentials: those are found by the client
  the standard way (environment, profile, instance role) in whichever process reads or writes.
- :func:`read_audio_bytes`: a whole input and its SHA-256; :func:`hash_source`: the same SHA-256 read in blocks of
  :data:`HASH_BLOCK_BYTES` (the job's hash pass, never a whole file in memory). Transient errors (connection
  refused/reset, timeouts, throttling, 5xx) are retried with exponential backoff (tenacity) on top of botocore's
  own per-request retries; a missing object, access denied, a directory or an empty file fail at once.
- :func:`write_atomic`: a reader never sees a half-written file. On object stores (S3...) the final key is
  written by one PUT (or one multipart upload), which makes the object appear whole or not at all; a rename
  there would be a copy plus a delete. Elsewhere the data goes to a temporary name and is then renamed.

The SHA-256 of the source bytes is the content key of a row (``sha256``), used for resume. Both readers refuse
what would hang or exhaust memory before opening it: a local directory, FIFO or device (reading a FIFO blocks
forever, ``/dev/zero`` never ends), a file or object above ``max_bytes`` (local files by ``stat``, remote objects
by their size from ``fs.info``, a HEAD on S3; and while reading, should it grow in between), a remote "directory"
(a key prefix).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import stat
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, TypeVar

import tenacity
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.config import StorageConfig, StorageRetryConfig
from pipelines.core.errors import AudioDecodeError, AudioLimitError, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_PROTOCOLS = ("s3", "s3a")
#: Filesystems where one PUT of the final key is atomic and a rename is a copy plus a delete.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "oss"})
#: Error codes of S3-compatible services that mean "try again later".
RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "ProvisionedThroughputExceededException",
})
#: Bytes per read while hashing (the hash pass never holds a whole file).
HASH_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceBytes:
    """The bytes of one input and their hex SHA-256."""

    content: bytes
    sha256: str


# ------------------------------------------------------------------------------------------------------ retries
def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> tuple[Optional[int], Optional[str]]:
    """(HTTP status, error code) of a botocore ClientError or aiohttp ClientResponseError; (None, None) else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, response["Error"].get("Code")
    status = getattr(exc, "status", None)
    if isinstance(status, int) and type(exc).__module__.startswith("aiohttp"):
        return status, None
    return None, None


def _transient_types() -> tuple[type, ...]:
    types: list[type] = [ConnectionError, TimeoutError, http.client.IncompleteRead]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, ResponseParserError

        types += [BotoConnectionError, HTTPClientError, ResponseParserError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError

        types += [ClientConnectionError, ClientPayloadError]
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(types)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection refused/reset/closed, timeouts, a truncated body, throttling
    (429, SlowDown...) and 5xx answers, found anywhere in the exception's cause chain. False for a missing
    object, access denied, a directory, and anything else."""
    transient = _transient_types()
    for err in _chain(exc):
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        status, code = _http_status(err)
        if status is not None or code is not None:
            return code in RETRYABLE_CODES or (status is not None and (status >= 500 or status in (408, 429)))
        if isinstance(err, transient):
            return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a storage operation on transient errors (:func:`is_transient`): at most ``attempts`` tries,
    exponential backoff with jitter from ``initial_backoff_s`` up to ``max_backoff_s``, and no new try once
    ``max_elapsed_s`` would be passed. Other errors are raised at once."""

    attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_elapsed_s: float = 120.0

    @classmethod
    def from_config(cls, cfg: StorageRetryConfig) -> "RetryPolicy":
        return cls(cfg.attempts, cfg.initial_backoff_s, cfg.max_backoff_s, cfg.max_elapsed_s)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried as described; the last error is raised as is."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s: try %d of %d failed (%s: %s); retrying in %.1f s", what, state.attempt_number,
                        self.attempts, type(exc).__name__, exc, state.next_action.sleep if state.next_action else 0)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts) | tenacity.stop_before_delay(self.max_elapsed_s),
            wait=tenacity.wait_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s)
            + tenacity.wait_random(0, self.initial_backoff_s),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)


# ------------------------------------------------------------------------------------------------ fsspec options
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

    def endpoint(self) -> Optional[str]:
        """The S3 endpoint in use (None: AWS's own), for logs."""
        return self.options.get("s3", {}).get("endpoint_url")

    def read(self, uri: str, max_bytes: Optional[int] = None) -> SourceBytes:
        """:func:`read_audio_bytes` with this storage's options and retries."""
        return read_audio_bytes(uri, self.options_for(uri), self.retry, max_bytes)

    def hash(self, uri: str, max_bytes: Optional[int] = None) -> str:
        """:func:`hash_source` with this storage's options and retries."""
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


def is_object_store(fs) -> bool:
    """True for filesystems (S3, GCS, Azure...) where :func:`write_atomic` writes the final key directly."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool(set(protocols) & OBJECT_STORE_PROTOCOLS)


# ------------------------------------------------------------------------------------------------------ reading
def _detail(exc: BaseException, uri: str) -> str:
    """``: <message>`` when the storage's message says more than the path (e.g. that the bucket is missing)."""
    message = str(exc).strip()
    return f": {message}" if message and message not in uri and uri not in message else ""


def _local(uri: str) -> Optional[str]:
    """The local path of ``uri``, or None for a remote URL."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return None if "://" in path else path


def _too_large(uri: str, size: Optional[int], max_bytes: int) -> AudioLimitError:
    if size is None:
        return AudioLimitError(f"{uri}: larger than the limit of {max_bytes / 1e9:.2f} GB (guards.max_file_bytes)")
    return AudioLimitError(f"{uri}: {size / 1e9:.2f} GB, above the limit of {max_bytes / 1e9:.2f} GB "
                           "(guards.max_file_bytes)")


def _check_local(uri: str, path: str, max_bytes: Optional[int]) -> None:
    """Refuse, before opening it, a local path that is missing, not a regular file (a read of a FIFO blocks
    forever, a device may never end) or larger than ``max_bytes``."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise AudioDecodeError(f"{uri}: no such file") from exc
    except PermissionError as exc:
        raise AudioDecodeError(f"{uri}: permission denied") from exc
    except OSError as exc:
        raise AudioDecodeError(f"{uri}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise AudioDecodeError(f"{uri}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise AudioDecodeError(f"{uri}: is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise _too_large(uri, st.st_size, max_bytes)


def _check_remote(fs, path: str, uri: str, max_bytes: Optional[int]) -> Optional[int]:
    """The size of a remote object from ``fs.info`` (a HEAD on S3), after refusing a "directory" (a key prefix)
    and an object above ``max_bytes`` without reading it. Storage errors propagate (the caller retries)."""
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(path)
    size = info.get("size")
    if max_bytes is not None and size is not None and size > max_bytes:
        raise _too_large(uri, size, max_bytes)
    return size


def _read_error(uri: str, exc: BaseException, is_url: bool, tries: int, t0: float) -> AudioDecodeError:
    """The :class:`AudioDecodeError` for a read of ``uri`` that failed with ``exc`` (after the retries)."""
    where = uri[len("file://"):] if uri.startswith("file://") else uri
    if isinstance(exc, FileNotFoundError):
        return AudioDecodeError(f"{uri}: no such file (not found{_detail(exc, where) if is_url else ''})")
    if isinstance(exc, PermissionError):
        return AudioDecodeError(f"{uri}: permission denied (access denied{_detail(exc, where) if is_url else ''})")
    if isinstance(exc, IsADirectoryError):
        return AudioDecodeError(f"{uri}: is a directory, not an audio file")
    if isinstance(exc, ImportError):  # e.g. s3fs not installed
        return AudioDecodeError(f"{uri}: cannot be read ({exc})")
    if is_transient(exc):
        return AudioDecodeError(f"{uri}: storage unavailable after {tries} tries over {time.monotonic() - t0:.0f} s "
                                f"({type(exc).__name__}: {exc})")
    return AudioDecodeError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})")


def _read_with_retries(uri: str, storage_options: Optional[dict], retry: Optional[RetryPolicy],
                       max_bytes: Optional[int], body: Callable[[Any, str], T], empty: T) -> T:
    """``body(fs, path)`` for ``uri`` with the checks, retries and error mapping that :func:`read_audio_bytes` and
    :func:`hash_source` share: local stat checks (directory, FIFO, size) first; per try, a remote size check by
    ``fs.info`` (``empty`` for a 0-byte object); transient errors retried; our own refusals raised as they are;
    anything else mapped to an :class:`AudioDecodeError` that names the URI and reason."""
    local = _local(uri)
    if local is not None:
        _check_local(uri, local, max_bytes)
    retry = retry or RetryPolicy()
    tries = 0
    t0 = time.monotonic()

    def attempt() -> T:
        nonlocal tries
        tries += 1
        fs, path = url_to_fs(local or uri, **(storage_options or {}))
        if local is None and _check_remote(fs, path, uri, max_bytes) == 0:
            return empty
        return body(fs, path)

    try:
        return retry.call(attempt, uri)
    except AudioDecodeError:  # a refusal of our own (the size limit)
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
        raise _read_error(uri, exc, local is None, tries, t0) from exc


def read_audio_bytes(uri: str, storage_options: Optional[dict] = None, retry: Optional[RetryPolicy] = None,
                     max_bytes: Optional[int] = None) -> SourceBytes:
    """Read a whole input file (local path, ``file://`` or any fsspec URL), retrying transient errors.

    Args:
        uri: local path, ``file://`` or any fsspec URL.
        storage_options: fsspec options for its filesystem.
        retry: retries on transient errors (default: ``RetryPolicy()``).
        max_bytes: refuse larger files: checked before reading (``stat`` locally, ``fs.info`` remotely) and while
            reading (at most ``max_bytes + 1`` bytes are ever read).

    Raises:
        AudioDecodeError: the path does not exist ("no such file"), is a directory, a FIFO or device, is empty,
            access is denied, or it still cannot be read after the retries; the message names the URI and the
            reason, and the storage error is its cause.
        AudioLimitError: the file is larger than ``max_bytes``.
    """
    def body(fs, path: str) -> bytes:
        if max_bytes is None:
            return fs.cat_file(path)
        return fs.cat_file(path, start=0, end=max_bytes + 1)  # a ranged GET: never more than the limit + 1

    content = _read_with_retries(uri, storage_options, retry, max_bytes, body, b"")
    if max_bytes is not None and len(content) > max_bytes:  # it grew after the size check
        raise _too_large(uri, None, max_bytes)
    if not content:
        raise AudioDecodeError(f"{uri}: file is empty (0 bytes)")
    return SourceBytes(content, hashlib.sha256(content).hexdigest())


def hash_source(uri: str, storage_options: Optional[dict] = None, retry: Optional[RetryPolicy] = None,
                max_bytes: Optional[int] = None) -> str:
    """The hex SHA-256 of an input's bytes, read in blocks of :data:`HASH_BLOCK_BYTES` (never the whole file at
    once): the same value :func:`read_audio_bytes` gives, with the same options, retries and refusals (so a file
    that cannot be read has no hash on either path). A transient error restarts the hash from the first byte.

    Raises:
        AudioDecodeError, AudioLimitError: as :func:`read_audio_bytes`.
    """
    def body(fs, path: str) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        with fs.open(path, "rb") as f:
            while block := f.read(HASH_BLOCK_BYTES):
                digest.update(block)
                size += len(block)
                if max_bytes is not None and size > max_bytes:  # it grew after the size check
                    raise _too_large(uri, None, max_bytes)
        return digest.hexdigest(), size

    hexdigest, size = _read_with_retries(uri, storage_options, retry, max_bytes, body, ("", 0))
    if not size:
        raise AudioDecodeError(f"{uri}: file is empty (0 bytes)")
    return hexdigest


# ------------------------------------------------------------------------------------------------------ writing
def write_atomic(fs, path: str, data: bytes, retry: Optional[RetryPolicy] = None,
                 tmp_dir: Optional[str] = None) -> None:
    """Write ``data`` at ``path`` (a path of ``fs``, no protocol) so that it appears complete or not at all.

    Object stores: one PUT of the final key (s3fs sends one ``PutObject`` below 100 MiB, else a multipart
    upload; either way the object becomes visible only when complete), retried whole on transient errors. Other
    filesystems: written under ``tmp_dir`` (default: beside ``path``) with a unique name, then renamed.

    Raises:
        StorageError: still failing after the retries, or refused (missing bucket, access denied); the cause
            is the storage error.
    """
    retry = retry or RetryPolicy()
    if is_object_store(fs):
        def attempt() -> None:
            fs.pipe_file(path, data)
    else:
        tmp_dir = tmp_dir or posixpath.dirname(path)

        def attempt() -> None:
            fs.makedirs(tmp_dir, exist_ok=True)
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            tmp = posixpath.join(tmp_dir, f"{posixpath.basename(path)}.{uuid.uuid4().hex}")
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
    try:
        retry.call(attempt, path)
    except Exception as exc:  # noqa: BLE001 - wrap whatever the filesystem raised
        reason = "access denied" if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}"
        raise StorageError(f"{path}: cannot be written ({reason})") from exc


def move_file(fs, src: str, dest: str, retry: Optional[RetryPolicy] = None) -> None:
    """Move one file of ``fs`` from ``src`` to ``dest`` (paths without protocol), never losing it.

    Object stores have no rename: the object is copied (a server-side copy, which makes ``dest`` appear whole or
    not at all), then ``src`` is deleted, each step retried on transient errors. A process killed between the two
    leaves the object in both places, never in neither: callers must (and the output folder does) treat a
    leftover ``src`` as still current. Elsewhere: one rename.

    Raises:
        StorageError: still failing after the retries, or refused; the cause is the storage error.
    """
    retry = retry or RetryPolicy()
    try:
        if is_object_store(fs):
            retry.call(lambda: fs.copy(src, dest), f"copy {src} -> {dest}")
            retry.call(lambda: fs.rm_file(src), f"delete {src}")  # idempotent: a retried DELETE of a gone key is fine
        else:
            def attempt() -> None:
                fs.makedirs(posixpath.dirname(dest), exist_ok=True)
                fs.mv(src, dest)
            retry.call(attempt, f"move {src} -> {dest}")
    except Exception as exc:  # noqa: BLE001 - wrap whatever the filesystem raised
        reason = "access denied" if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}"
        raise StorageError(f"{src}: cannot be moved to {dest} ({reason})") from exc


def remove_file(fs, path: str, retry: Optional[RetryPolicy] = None) -> None:
    """Delete one file of ``fs`` (retried on transient errors; already gone is fine).

    Raises:
        StorageError: still failing after the retries, or refused.
    """
    retry = retry or RetryPolicy()

    def attempt() -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
    try:
        retry.call(attempt, f"delete {path}")
    except Exception as exc:  # noqa: BLE001 - wrap whatever the filesystem raised
        reason = "access denied" if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}"
        raise StorageError(f"{path}: cannot be deleted ({reason})") from exc


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
