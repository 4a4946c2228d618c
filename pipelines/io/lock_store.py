"""The lock object ``DIR/_lock.json`` on storage: what it holds (:class:`LockHolder`) and how it is read, created,
replaced, rewritten and deleted (:class:`LockStore`). The protocol around it (staleness, takeover, heartbeat, a
lost lock) is :mod:`pipelines.io.lock`; see docs/resume.md.

Creating it is atomic where the storage allows:

- **local disk**: ``open(O_CREAT | O_EXCL)``; only one process can create the file.
- **S3** (s3fs): ``PutObject`` with ``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``), refused with 412 when
  the object exists. Refreshes and takeovers are ``PutObject`` with ``If-Match: <ETag>`` of the version this run
  last wrote or saw, so a run that lost its lock finds out on its next refresh and cannot overwrite the new one.
- **other fsspec filesystems** (no conditional create in fsspec): best effort. The run writes its lock when none
  exists, waits a moment and reads it back; it holds the lock only if the token read back is its own (a warning
  says so).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.core.errors import StorageError
from pipelines.io.retry import RetryPolicy

log = logging.getLogger("raywhisper")


LOCK_FILE = "_lock.json"
#: How long the best-effort create waits before reading its lock back (s): another writer's PUT that raced with
#: ours has landed by then on any store that is read-after-write consistent.
READ_BACK_WAIT_S = 0.5


def _boot_id() -> Optional[str]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True
    return True


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LockHolder:
    """The content of a lock object. Times are seconds since the epoch (``time.time()``) of the holder's clock."""

    run_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    token: str
    boot_id: Optional[str] = None
    pid_namespace: Optional[str] = None

    def to_json(self) -> bytes:
        return json.dumps({
            "run_id": self.run_id, "host": self.host, "pid": self.pid,
            "started_at": _iso(self.started_at), "heartbeat_at": _iso(self.heartbeat_at),
            "started_at_s": self.started_at, "heartbeat_at_s": self.heartbeat_at, "token": self.token,
            "boot_id": self.boot_id, "pid_namespace": self.pid_namespace,
        }, indent=2).encode()

    @classmethod
    def here(cls, run_id: str, started_at: float, heartbeat_at: float, token: str) -> "LockHolder":
        """The holder that is this process (its host name, pid, boot id and pid namespace)."""
        return cls(run_id, socket.gethostname(), os.getpid(), started_at, heartbeat_at, token, _boot_id(),
                   _pid_namespace())

    @classmethod
    def from_json(cls, data: bytes) -> "LockHolder":
        """Parse a lock object.

        Raises:
            ValueError: not a lock object (empty, half written, not JSON, fields missing).
        """
        try:
            d = json.loads(data.decode("utf-8"))
            return cls(run_id=str(d["run_id"]), host=str(d["host"]), pid=int(d["pid"]),
                       started_at=float(d["started_at_s"]), heartbeat_at=float(d["heartbeat_at_s"]),
                       token=str(d["token"]), boot_id=d.get("boot_id"), pid_namespace=d.get("pid_namespace"))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a lock object ({type(exc).__name__}: {exc})") from exc

    def process_gone(self) -> bool:
        """True when the holder ran in this process space (same host name, boot id and pid namespace) and its
        process no longer exists. False when that cannot be told from here (another host, another container)."""
        same = (self.host == socket.gethostname() and self.boot_id is not None and self.boot_id == _boot_id()
                and self.pid_namespace is not None and self.pid_namespace == _pid_namespace())
        return same and not _pid_alive(self.pid)

    def describe(self, now: float) -> str:
        """``run R (host H, pid P, started ..., last heartbeat N s ago)``."""
        return (f"run {self.run_id!r} (host {self.host}, pid {self.pid}, started {_iso(self.started_at)}, "
                f"last heartbeat {max(0.0, now - self.heartbeat_at):.0f} s ago)")


@dataclass(frozen=True)
class SeenLock:
    """A lock object as read: its holder (None: unreadable), its bytes, its version (S3 ETag) and mtime."""

    holder: Optional[LockHolder]
    raw: bytes
    version: Optional[str]
    mtime: float

    def describe(self, now: float) -> str:
        if self.holder is not None:
            return self.holder.describe(now)
        return f"an unreadable lock object (last written {max(0.0, now - self.mtime):.0f} s ago)"

    def age_s(self, now: float) -> float:
        return now - (self.holder.heartbeat_at if self.holder is not None else self.mtime)


def _precondition_failed(exc: BaseException) -> bool:
    """s3fs's answer to a failed ``If-Match``/``If-None-Match`` (412) or a conflicting conditional write (409), or
    a missing object under ``If-Match``."""
    if isinstance(exc, (FileExistsError, FileNotFoundError)):
        return True
    cause = exc
    while cause is not None:
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412):
                return True
        cause = cause.__cause__ or cause.__context__
    return False


def _etag_of(response: object) -> Optional[str]:
    return response.get("ETag") if isinstance(response, dict) else None


class LockStore:
    """The lock object ``<output>/_lock.json`` of one output folder, reached the way its filesystem allows
    (``mode``: ``local``, ``s3`` or ``best-effort``; see the module doc).

    Args:
        output_uri: the output folder (local path or fsspec URL).
        storage_options: fsspec options for the folder.
        retry: retries of each storage call on transient errors.
        token: the random token of the holder writing through this store (the best-effort create reads it back).
    """

    def __init__(self, output_uri: str, storage_options: Optional[dict], retry: RetryPolicy, token: str):
        self.uri = output_uri
        self.fs, root = url_to_fs(output_uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.path = posixpath.join(self.root, LOCK_FILE)
        self.retry = retry
        self.token = token
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.mode = ("local" if isinstance(self.fs, LocalFileSystem)
                     else "s3" if {"s3", "s3a"} & set(protocols) else "best-effort")
        #: the version (S3 ETag) this store last wrote or saw as its own; conditional writes match it
        self.etag: Optional[str] = None

    def _call(self, fn: Callable[[], object], what: str):
        try:
            return self.retry.call(fn, what)
        except (StorageError, FileExistsError, FileNotFoundError):
            raise
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
            if self.mode == "s3" and _precondition_failed(exc):
                raise
            reason = "access denied" if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}"
            raise StorageError(f"output {self.uri}: {what} failed ({reason})") from exc

    # ------------------------------------------------------------------------------------------------ reading
    def read(self) -> Optional[SeenLock]:
        """The lock object now, or None when there is none.

        Raises:
            StorageError: it cannot be read after the retries.
        """
        return self._read_local() if self.mode == "local" else self._call(self._read_remote, f"reading {self.path}")

    def _read_local(self) -> Optional[SeenLock]:
        for _ in range(10):  # a creator between O_EXCL and its write: give it a moment
            try:
                with open(self.path, "rb") as f:
                    raw = f.read()
                mtime = os.stat(self.path).st_mtime
            except FileNotFoundError:
                return None
            try:
                return SeenLock(LockHolder.from_json(raw), raw, None, mtime)
            except ValueError:
                time.sleep(0.05)
        return SeenLock(None, raw, None, mtime)

    def _read_remote(self) -> Optional[SeenLock]:
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)  # the version first: a CAS on it fails if the object changed since
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        modified = info.get("LastModified") or info.get("mtime") or info.get("created")
        mtime = modified.timestamp() if isinstance(modified, dt.datetime) else float(modified or 0.0)
        try:
            holder = LockHolder.from_json(raw)
        except ValueError:
            holder = None
        return SeenLock(holder, raw, info.get("ETag"), mtime)

    # ------------------------------------------------------------------------------------------------ writing
    def create(self, data: bytes) -> bool:
        """Create the lock object with ``data`` if there is none; False when one exists.

        Raises:
            StorageError: the storage refused or failed after the retries.
        """
        if self.mode == "local":
            return self._create_local(data)
        if self.mode == "s3":
            return self._create_s3(data)
        return self._create_best_effort(data)

    def _create_local(self, data: bytes) -> bool:
        os.makedirs(self.root, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _create_s3(self, data: bytes) -> bool:
        try:
            response = self._call(lambda: self.fs.pipe_file(self.path, data, mode="create"), f"creating {self.path}")
        except FileExistsError:
            return False
        except Exception as exc:  # noqa: BLE001 - a 409 conflict: another create raced with ours
            if _precondition_failed(exc):
                return False
            raise
        self.etag = _etag_of(response)
        return True

    def _create_best_effort(self, data: bytes) -> bool:
        log.warning("output %s: %s has no conditional create; the output lock is best effort (write, wait %.1f s, "
                    "read back)", self.uri, self.fs.protocol, READ_BACK_WAIT_S)
        if self._call(lambda: self.fs.exists(self.path), f"checking {self.path}"):
            return False
        self._call(lambda: self.fs.pipe_file(self.path, data), f"writing {self.path}")
        time.sleep(READ_BACK_WAIT_S)
        seen = self.read()
        return seen is not None and seen.holder is not None and seen.holder.token == self.token

    def replace(self, seen: SeenLock, data: bytes) -> bool:
        """Replace the lock object ``seen`` by ``data``; False when it changed since it was read (or vanished and
        another run created one first)."""
        if self.mode == "s3" and seen.version:
            try:
                response = self._call(lambda: self.fs.pipe_file(self.path, data, IfMatch=seen.version),
                                      f"replacing {self.path}")
            except Exception as exc:  # noqa: BLE001
                if _precondition_failed(exc):
                    return False
                raise
            self.etag = _etag_of(response)
            return True
        if self.mode == "local":
            now = self.read()
            if now is not None and now.raw != seen.raw:
                return False
        self.delete()
        return self.create(data)

    def rewrite(self, data: bytes) -> tuple[bool, Optional[SeenLock]]:
        """Rewrite our own lock object with ``data`` (a heartbeat). Returns ``(True, None)`` when done, and
        ``(False, what is there now)`` when the lock is no longer ours (someone else's, or gone: None).

        Raises:
            StorageError: the storage failed after the retries (the lock may still be ours).
        """
        if self.mode == "s3" and self.etag:
            try:
                response = self._call(lambda: self.fs.pipe_file(self.path, data, IfMatch=self.etag),
                                      f"refreshing {self.path}")
            except Exception as exc:  # noqa: BLE001
                if not _precondition_failed(exc):
                    raise
                return False, self.read()
            self.etag = _etag_of(response)
            return True, None
        seen = self.read()
        if seen is None or seen.holder is None or seen.holder.token != self.token:
            return False, seen
        if self.mode == "local":
            tmp = f"{self.path}.{self.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        else:
            self._call(lambda: self.fs.pipe_file(self.path, data), f"refreshing {self.path}")
        return True, None

    def delete(self) -> None:
        """Delete the lock object (already gone is fine)."""
        if self.mode == "local":
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        try:
            self._call(lambda: self.fs.rm_file(self.path), f"deleting {self.path}")
        except FileNotFoundError:
            pass
