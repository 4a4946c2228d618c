"""Writing output files so that a reader never sees a half-written one (:func:`write_atomic`), and moving and
deleting them (:func:`move_file`, :func:`remove_file`), each retried on transient errors (:mod:`pipelines.io.retry`).

On object stores (S3...) the final key is written by one PUT (or one multipart upload), which makes the object
appear whole or not at all; a rename there would be a copy plus a delete. Elsewhere the data goes to a temporary
name and is then renamed. See docs/storage.md.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Optional

from pipelines.core.errors import StorageError
from pipelines.io.retry import RetryPolicy

#: Filesystems where one PUT of the final key is atomic and a rename is a copy plus a delete.
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "oss"})


def is_object_store(fs) -> bool:
    """True for filesystems (S3, GCS, Azure...) where :func:`write_atomic` writes the final key directly."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool(set(protocols) & OBJECT_STORE_PROTOCOLS)


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

