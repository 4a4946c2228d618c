"""One writer per output folder: the lock object ``DIR/_lock.json``.

A run takes the lock before it touches the folder (before ``_tmp/`` is cleaned, anything is planned or written),
refreshes it from a background thread every ``output.lock_heartbeat_s`` while it lives, and deletes it at the end,
also when it fails or is interrupted (Ctrl-C). The object holds JSON: ``run_id``, ``host``, ``pid``, ``started_at``
and ``heartbeat_at`` (ISO 8601, UTC), a random ``token`` naming this holder, and the ``boot_id`` and
``pid_namespace`` of its process space (Linux; to tell whether its pid can be checked from here).

Taking it is atomic where the storage allows:

- **local disk**: ``open(O_CREAT | O_EXCL)``; only one process can create the file.
- **S3** (s3fs): ``PutObject`` with ``If-None-Match: *`` (s3fs ``pipe_file(mode="create")``), refused with 412 when
  the object exists. Refreshes and takeovers are ``PutObject`` with ``If-Match: <ETag>`` of the version this run
  last wrote or saw, so a run that lost its lock finds out on its next refresh and cannot overwrite the new one.
- **other fsspec filesystems** (no conditional create in fsspec): best effort. The run writes its lock when none
  exists, waits a moment and reads it back; it holds the lock only if the token read back is its own (a warning
  says so).

A lock whose heartbeat is older than ``output.lock_stale_s`` is stale: its run is taken for dead, and the next run
takes the lock over (logged). So is a lock written by a process of this host (same host name, boot id and pid
namespace) that no longer exists: a run killed with SIGKILL can be rerun at once. Otherwise a second run stops with
:class:`~pipelines.core.errors.OutputLockedError` (exit code 2) naming the holder; ``--break-lock`` (``break_lock``)
replaces the lock whatever its age. A run that finds on a refresh that its lock is someone else's, or whose
refreshes have failed for ``lock_stale_s``, stops writing: :meth:`OutputLock.check` raises.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.core.errors import OutputLockedError, StorageError
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
class _Seen:
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


class OutputLock:
    """The lock of one output folder, held by one run (see the module doc).

    Args:
        output_uri: the output folder (local path or fsspec URL).
        run_id: the run taking it (shown to a run it keeps out).
        storage_options: fsspec options for the folder.
        stale_s: a lock whose heartbeat is older than this (s) is taken over (``output.lock_stale_s``).
        heartbeat_s: seconds between refreshes by :meth:`start_heartbeat` (``output.lock_heartbeat_s``).
        retry: retries of each storage call on transient errors.
        clock: wall clock, seconds since the epoch (tests inject one).
    """

    def __init__(self, output_uri: str, run_id: str, storage_options: Optional[dict] = None, *,
                 stale_s: float = 300.0, heartbeat_s: float = 30.0, retry: Optional[RetryPolicy] = None,
                 clock: Callable[[], float] = time.time):
        self.uri = output_uri
        self.fs, root = url_to_fs(output_uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.path = posixpath.join(self.root, LOCK_FILE)
        self.run_id = run_id
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.token = uuid.uuid4().hex
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.mode = ("local" if isinstance(self.fs, LocalFileSystem)
                     else "s3" if {"s3", "s3a"} & set(protocols) else "best-effort")
        self.held = False
        self._started_at = 0.0
        self._etag: Optional[str] = None
        self._last_ok = 0.0
        self._lost: Optional[str] = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------------------------------------ storage
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

    def _holder(self) -> LockHolder:
        return LockHolder(self.run_id, socket.gethostname(), os.getpid(), self._started_at, self.clock(),
                          self.token, _boot_id(), _pid_namespace())

    def _read(self) -> Optional[_Seen]:
        """The lock object now, or None when there is none."""
        if self.mode == "local":
            for _ in range(10):  # a creator between O_EXCL and its write: give it a moment
                try:
                    with open(self.path, "rb") as f:
                        raw = f.read()
                    mtime = os.stat(self.path).st_mtime
                except FileNotFoundError:
                    return None
                try:
                    return _Seen(LockHolder.from_json(raw), raw, None, mtime)
                except ValueError:
                    time.sleep(0.05)
            return _Seen(None, raw, None, mtime)

        def attempt() -> Optional[_Seen]:
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
            return _Seen(holder, raw, info.get("ETag"), mtime)
        return self._call(attempt, f"reading {self.path}")

    def _create(self, data: bytes) -> bool:
        """Create the lock object with ``data`` if there is none; False when one exists."""
        if self.mode == "local":
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
        if self.mode == "s3":
            try:
                response = self._call(lambda: self.fs.pipe_file(self.path, data, mode="create"),
                                      f"creating {self.path}")
            except FileExistsError:
                return False
            except Exception as exc:  # noqa: BLE001 - a 409 conflict: another create raced with ours
                if _precondition_failed(exc):
                    return False
                raise
            self._etag = response.get("ETag") if isinstance(response, dict) else None
            return True
        # best effort: no conditional create on this filesystem
        log.warning("output %s: %s has no conditional create; the output lock is best effort (write, wait %.1f s, "
                    "read back)", self.uri, self.fs.protocol, READ_BACK_WAIT_S)
        if self._call(lambda: self.fs.exists(self.path), f"checking {self.path}"):
            return False
        self._call(lambda: self.fs.pipe_file(self.path, data), f"writing {self.path}")
        time.sleep(READ_BACK_WAIT_S)
        seen = self._read()
        return seen is not None and seen.holder is not None and seen.holder.token == self.token

    def _replace(self, seen: _Seen, data: bytes) -> bool:
        """Replace the lock object ``seen`` by ours; False when it changed since it was read (or vanished and
        another run created one first)."""
        if self.mode == "s3" and seen.version:
            try:
                response = self._call(lambda: self.fs.pipe_file(self.path, data, IfMatch=seen.version),
                                      f"replacing {self.path}")
            except Exception as exc:  # noqa: BLE001
                if _precondition_failed(exc):
                    return False
                raise
            self._etag = response.get("ETag") if isinstance(response, dict) else None
            return True
        if self.mode == "local":
            now = self._read()
            if now is not None and now.raw != seen.raw:
                return False
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return self._create(data)
        try:
            self._call(lambda: self.fs.rm_file(self.path), f"deleting {self.path}")
        except FileNotFoundError:
            pass
        return self._create(data)

    def _delete(self) -> None:
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

    # ------------------------------------------------------------------------------------------------ the lock
    def acquire(self, break_lock: bool = False) -> Optional[LockHolder]:
        """Take the lock.

        Args:
            break_lock: replace the lock whatever its age (``--break-lock``: the operator knows its run is dead).

        Returns:
            The holder of the lock this run replaced (stale, its process gone, or broken), else None.

        Raises:
            OutputLockedError: another run holds the lock (its heartbeat is fresh); the message names it.
            StorageError: the lock object cannot be read or written after the retries.
        """
        self._started_at = self.clock()
        for _ in range(5):
            if self._create(self._holder().to_json()):
                self._took()
                return None
            seen = self._read()
            if seen is None:
                continue  # released in between: try again
            if seen.holder is not None and seen.holder.token == self.token:  # our create was retried after it landed
                self._etag = seen.version
                self._took()
                return None
            now = self.clock()
            age = seen.age_s(now)
            if break_lock:
                why = "broken by the operator (--break-lock)"
            elif age > self.stale_s:
                why = f"stale: no heartbeat for {age:.0f} s (output.lock_stale_s = {self.stale_s:g})"
            elif seen.holder is not None and seen.holder.process_gone():
                why = f"its process {seen.holder.pid} on this host is gone"
            else:
                raise OutputLockedError(
                    f"output {self.uri} is locked by {seen.describe(now)}: another run is writing this folder "
                    f"(lock {self.path}). Wait for it to end. If it is dead, its lock goes stale "
                    f"{max(0.0, self.stale_s - age):.0f} s from now (output.lock_stale_s) and the next run takes it "
                    "over; or rerun with --break-lock, only when sure it is not running")
            if self._replace(seen, self._holder().to_json()):
                log.warning("output %s: took over the lock of %s: %s", self.uri, seen.describe(now), why)
                self._took()
                return seen.holder
        raise OutputLockedError(f"output {self.uri}: could not take the lock {self.path}: it kept changing "
                                "(other runs are starting on this folder)")

    def _took(self) -> None:
        self.held, self._lost = True, None
        self._last_ok = self.clock()
        log.info("output %s: lock taken by run %s (%s)", self.uri, self.run_id, self.path)

    def refresh(self) -> None:
        """One heartbeat: rewrite the lock with the time now, if it is still ours. A lock that is someone else's
        (or gone) marks this run's lock lost (:meth:`check` raises from then on); a storage error is logged and
        the next heartbeat tries again."""
        with self._mutex:
            if not self.held or self._lost:
                return
            data = self._holder().to_json()
            try:
                if self.mode == "s3" and self._etag:
                    try:
                        response = self._call(lambda: self.fs.pipe_file(self.path, data, IfMatch=self._etag),
                                              f"refreshing {self.path}")
                    except Exception as exc:  # noqa: BLE001
                        if not _precondition_failed(exc):
                            raise
                        seen = self._read()
                        self._lose(seen)
                        return
                    self._etag = response.get("ETag") if isinstance(response, dict) else None
                else:
                    seen = self._read()
                    if seen is None or seen.holder is None or seen.holder.token != self.token:
                        self._lose(seen)
                        return
                    if self.mode == "local":
                        tmp = f"{self.path}.{self.token}.tmp"
                        with open(tmp, "wb") as f:
                            f.write(data)
                            f.flush()
                            os.fsync(f.fileno())
                        os.replace(tmp, self.path)
                    else:
                        self._call(lambda: self.fs.pipe_file(self.path, data), f"refreshing {self.path}")
                self._last_ok = self.clock()
            except Exception as exc:  # noqa: BLE001 - keep the run going; check() stops it once stale
                log.warning("output %s: could not refresh the lock (%s: %s); retrying in %g s", self.uri,
                            type(exc).__name__, exc, self.heartbeat_s)

    def _lose(self, seen: Optional[_Seen]) -> None:
        now = self.clock()
        self._lost = (f"the lock is now held by {seen.describe(now)}" if seen is not None
                      else "the lock object was removed")
        log.error("output %s: run %s lost its lock: %s; it writes nothing more", self.uri, self.run_id, self._lost)

    def check(self) -> None:
        """Raise unless this run may write to the folder now.

        Raises:
            OutputLockedError: the lock was lost to another run (seen by a refresh), or no refresh has succeeded for
                ``stale_s`` (another run may have taken the folder over), or the lock was never taken.
        """
        if not self.held:
            raise OutputLockedError(f"output {self.uri}: run {self.run_id} does not hold the lock {self.path}")
        if self._lost:
            raise OutputLockedError(f"output {self.uri}: run {self.run_id} lost its lock ({self._lost}); it stops "
                                    "without writing more")
        silent = self.clock() - self._last_ok
        if silent > self.stale_s:
            raise OutputLockedError(
                f"output {self.uri}: run {self.run_id} could not refresh its lock for {silent:.0f} s "
                f"(output.lock_stale_s = {self.stale_s:g}): another run may have taken the folder over; it stops "
                "without writing more")

    def start_heartbeat(self) -> None:
        """Refresh the lock every ``heartbeat_s`` from a daemon thread until :meth:`release`."""
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours (a lock taken over is left to its new
        holder). Never raises: a lock that cannot be deleted is logged, and goes stale after ``stale_s``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.heartbeat_s))
            self._thread = None
        with self._mutex:
            if not self.held:
                return
            self.held = False
            if self._lost:
                return
            try:
                seen = self._read()
                if seen is not None and seen.holder is not None and seen.holder.token == self.token:
                    self._delete()
                    log.info("output %s: lock released by run %s", self.uri, self.run_id)
                else:
                    log.warning("output %s: at release, the lock is no longer run %s's; left as it is",
                                self.uri, self.run_id)
            except Exception as exc:  # noqa: BLE001 - the run's result matters more than the lock
                log.error("output %s: could not delete the lock %s (%s: %s); it goes stale after %g s or can be "
                          "broken with --break-lock", self.uri, self.path, type(exc).__name__, exc, self.stale_s)
