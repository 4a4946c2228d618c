"""Reading inputs: a whole file and its SHA-256 (:func:`read_source`, the decode stage's read) or the same SHA-256
in blocks of :data:`HASH_BLOCK_BYTES` (:func:`hash_source`, the job's hash pass, never a whole file in memory).

Both take a local path, ``file://`` or any fsspec URL, retry transient errors (:mod:`pipelines.io.retry`) on top of
botocore's own per-request retries, and refuse what would hang or exhaust memory before opening it: a local
directory, FIFO or device (reading a FIFO blocks forever, ``/dev/zero`` never ends), a file or object above
``max_bytes`` (local files by ``stat``, remote objects by their size from ``fs.info``, a HEAD on S3; and while
reading, should it grow in between), a remote "directory" (a key prefix). A missing object, access denied or an
empty file fail at once. Every refusal is a :class:`~pipelines.core.errors.SourceReadError` naming the URI and the
reason (:class:`~pipelines.core.errors.SourceTooLargeError` for the size limit). The SHA-256 of the source bytes is
the content key of a row (``sha256``), used for resume (docs/resume.md).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from fsspec.core import url_to_fs

from pipelines.core.errors import SourceReadError, SourceTooLargeError
from pipelines.io.retry import RetryPolicy, is_transient

T = TypeVar("T")

#: Bytes per read while hashing (the hash pass never holds a whole file).
HASH_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceBytes:
    """The bytes of one input and their hex SHA-256."""

    content: bytes
    sha256: str


def _detail(exc: BaseException, uri: str) -> str:
    """``: <message>`` when the storage's message says more than the path (e.g. that the bucket is missing)."""
    message = str(exc).strip()
    return f": {message}" if message and message not in uri and uri not in message else ""


def _local(uri: str) -> Optional[str]:
    """The local path of ``uri``, or None for a remote URL."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return None if "://" in path else path


def _too_large(uri: str, size: Optional[int], max_bytes: int) -> SourceTooLargeError:
    """The refusal of a file above ``max_bytes`` (``size`` None: found while reading)."""
    if size is None:
        return SourceTooLargeError(f"{uri}: larger than the limit of {max_bytes / 1e9:.2f} GB (guards.max_file_bytes)")
    return SourceTooLargeError(f"{uri}: {size / 1e9:.2f} GB, above the limit of {max_bytes / 1e9:.2f} GB "
                               "(guards.max_file_bytes)")


def _check_local(uri: str, path: str, max_bytes: Optional[int]) -> None:
    """Refuse, before opening it, a local path that is missing, not a regular file (a read of a FIFO blocks
    forever, a device may never end) or larger than ``max_bytes``."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise SourceReadError(f"{uri}: no such file") from exc
    except PermissionError as exc:
        raise SourceReadError(f"{uri}: permission denied") from exc
    except OSError as exc:
        raise SourceReadError(f"{uri}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise SourceReadError(f"{uri}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise SourceReadError(f"{uri}: is {kind}, not a regular file")
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


def _read_error(uri: str, exc: BaseException, is_url: bool, tries: int, t0: float) -> SourceReadError:
    """The :class:`SourceReadError` for a read of ``uri`` that failed with ``exc`` (after the retries)."""
    where = uri[len("file://"):] if uri.startswith("file://") else uri
    if isinstance(exc, FileNotFoundError):
        return SourceReadError(f"{uri}: no such file (not found{_detail(exc, where) if is_url else ''})")
    if isinstance(exc, PermissionError):
        return SourceReadError(f"{uri}: permission denied (access denied{_detail(exc, where) if is_url else ''})")
    if isinstance(exc, IsADirectoryError):
        return SourceReadError(f"{uri}: is a directory, not an audio file")
    if isinstance(exc, ImportError):  # e.g. s3fs not installed
        return SourceReadError(f"{uri}: cannot be read ({exc})")
    if is_transient(exc):
        return SourceReadError(f"{uri}: storage unavailable after {tries} tries over {time.monotonic() - t0:.0f} s "
                               f"({type(exc).__name__}: {exc})")
    return SourceReadError(f"{uri}: cannot be read ({type(exc).__name__}: {exc})")


def _read_with_retries(uri: str, storage_options: Optional[dict], retry: Optional[RetryPolicy],
                       max_bytes: Optional[int], body: Callable[[Any, str], T], empty: T) -> T:
    """``body(fs, path)`` for ``uri`` with the checks, retries and error mapping that :func:`read_source` and
    :func:`hash_source` share: local stat checks (directory, FIFO, size) first; per try, a remote size check by
    ``fs.info`` (``empty`` for a 0-byte object); transient errors retried; our own refusals raised as they are;
    anything else mapped to a :class:`SourceReadError` that names the URI and reason."""
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
    except SourceReadError:  # a refusal of our own (the size limit)
        raise
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
        raise _read_error(uri, exc, local is None, tries, t0) from exc


def read_source(uri: str, storage_options: Optional[dict] = None, retry: Optional[RetryPolicy] = None,
                max_bytes: Optional[int] = None) -> SourceBytes:
    """Read a whole input file (local path, ``file://`` or any fsspec URL), retrying transient errors.

    Args:
        uri: local path, ``file://`` or any fsspec URL.
        storage_options: fsspec options for its filesystem.
        retry: retries on transient errors (default: ``RetryPolicy()``).
        max_bytes: refuse larger files: checked before reading (``stat`` locally, ``fs.info`` remotely) and while
            reading (at most ``max_bytes + 1`` bytes are ever read).

    Raises:
        SourceReadError: the path does not exist ("no such file"), is a directory, a FIFO or device, is empty,
            access is denied, or it still cannot be read after the retries; the message names the URI and the
            reason, and the storage error is its cause.
        SourceTooLargeError: the file is larger than ``max_bytes``.
    """
    def body(fs, path: str) -> bytes:
        if max_bytes is None:
            return fs.cat_file(path)
        return fs.cat_file(path, start=0, end=max_bytes + 1)  # a ranged GET: never more than the limit + 1

    content = _read_with_retries(uri, storage_options, retry, max_bytes, body, b"")
    if max_bytes is not None and len(content) > max_bytes:  # it grew after the size check
        raise _too_large(uri, None, max_bytes)
    if not content:
        raise SourceReadError(f"{uri}: file is empty (0 bytes)")
    return SourceBytes(content, hashlib.sha256(content).hexdigest())


def hash_source(uri: str, storage_options: Optional[dict] = None, retry: Optional[RetryPolicy] = None,
                max_bytes: Optional[int] = None) -> str:
    """The hex SHA-256 of an input's bytes, read in blocks of :data:`HASH_BLOCK_BYTES` (never the whole file at
    once): the same value :func:`read_source` gives, with the same options, retries and refusals (so a file
    that cannot be read has no hash on either path). A transient error restarts the hash from the first byte.

    Raises:
        SourceReadError, SourceTooLargeError: as :func:`read_source`.
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
        raise SourceReadError(f"{uri}: file is empty (0 bytes)")
    return hexdigest

