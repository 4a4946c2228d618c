"""One writer per output folder: the lock object ``DIR/_lock.json`` (docs/resume.md).

A run takes the lock before it touches the folder (before ``_tmp/`` is cleaned, anything is planned or written),
refreshes it from a background thread every ``output.lock_heartbeat_s`` while it lives, and deletes it at the end,
also when it fails or is interrupted (Ctrl-C). The object holds JSON: ``run_id``, ``host``, ``pid``, ``started_at``
and ``heartbeat_at`` (ISO 8601, UTC), a random ``token`` naming this holder, and the ``boot_id`` and
``pid_namespace`` of its process space (Linux; to tell whether its pid can be checked from here). How it is
created and replaced atomically on each storage (local disk, S3, best effort elsewhere) is
:mod:`pipelines.io.lock_store`.

A lock whose heartbeat is older than ``output.lock_stale_s`` is stale: its run is taken for dead, and the next run
takes the lock over (logged). So is a lock written by a process of this host (same host name, boot id and pid
namespace) that no longer exists: a run killed with SIGKILL can be rerun at once. Otherwise a second run stops with
:class:`~pipelines.core.errors.OutputLockedError` (exit code 2) naming the holder; ``--break-lock`` (``break_lock``)
replaces the lock whatever its age. A run that finds on a refresh that its lock is someone else's, or whose
refreshes have failed for ``lock_stale_s``, stops writing: :meth:`OutputLock.check` raises.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Callable, Optional

from pipelines.core.errors import OutputLockedError
from pipelines.io.lock_store import LOCK_FILE, LockHolder, LockStore, SeenLock  # noqa: F401 - LOCK_FILE: for callers
from pipelines.io.periodic import Periodic
from pipelines.io.retry import RetryPolicy

log = logging.getLogger("raywhisper")


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
        self.run_id = run_id
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.clock = clock
        self.token = uuid.uuid4().hex
        self.store = LockStore(output_uri, storage_options, retry or RetryPolicy(), self.token)
        self.fs, self.path, self.mode = self.store.fs, self.store.path, self.store.mode
        self.held = False
        self._started_at = 0.0
        self._last_ok = 0.0
        self._lost: Optional[str] = None
        self._mutex = threading.Lock()
        self._heartbeat = Periodic(lambda: self.refresh(), heartbeat_s, "output-lock-heartbeat")

    def _holder(self) -> LockHolder:
        return LockHolder.here(self.run_id, self._started_at, self.clock(), self.token)

    # ------------------------------------------------------------------------------------------------ taking it
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
            if self.store.create(self._holder().to_json()):
                self._took()
                return None
            seen = self.store.read()
            if seen is None:
                continue  # released in between: try again
            if seen.holder is not None and seen.holder.token == self.token:  # our create was retried after it landed
                self.store.etag = seen.version
                self._took()
                return None
            now = self.clock()
            why = self._takeover_reason(seen, now, break_lock)
            if self.store.replace(seen, self._holder().to_json()):
                log.warning("output %s: took over the lock of %s: %s", self.uri, seen.describe(now), why)
                self._took()
                return seen.holder
        raise OutputLockedError(f"output {self.uri}: could not take the lock {self.path}: it kept changing "
                                "(other runs are starting on this folder)")

    def _takeover_reason(self, seen: SeenLock, now: float, break_lock: bool) -> str:
        """Why the lock ``seen`` may be taken over (for the log).

        Raises:
            OutputLockedError: it may not: another run holds it, its heartbeat fresh and its process not known gone.
        """
        age = seen.age_s(now)
        if break_lock:
            return "broken by the operator (--break-lock)"
        if age > self.stale_s:
            return f"stale: no heartbeat for {age:.0f} s (output.lock_stale_s = {self.stale_s:g})"
        if seen.holder is not None and seen.holder.process_gone():
            return f"its process {seen.holder.pid} on this host is gone"
        raise OutputLockedError(
            f"output {self.uri} is locked by {seen.describe(now)}: another run is writing this folder "
            f"(lock {self.path}). Wait for it to end. If it is dead, its lock goes stale "
            f"{max(0.0, self.stale_s - age):.0f} s from now (output.lock_stale_s) and the next run takes it "
            "over; or rerun with --break-lock, only when sure it is not running")

    def _took(self) -> None:
        self.held, self._lost = True, None
        self._last_ok = self.clock()
        log.info("output %s: lock taken by run %s (%s)", self.uri, self.run_id, self.path)

    # ------------------------------------------------------------------------------------------------ holding it
    def refresh(self) -> None:
        """One heartbeat: rewrite the lock with the time now, if it is still ours. A lock that is someone else's
        (or gone) marks this run's lock lost (:meth:`check` raises from then on); a storage error is logged and
        the next heartbeat tries again."""
        with self._mutex:
            if not self.held or self._lost:
                return
            try:
                ours, seen = self.store.rewrite(self._holder().to_json())
                if not ours:
                    self._lose(seen)
                    return
                self._last_ok = self.clock()
            except Exception as exc:  # noqa: BLE001 - keep the run going; check() stops it once stale
                log.warning("output %s: could not refresh the lock (%s: %s); retrying in %g s", self.uri,
                            type(exc).__name__, exc, self.heartbeat_s)

    def _lose(self, seen: Optional[SeenLock]) -> None:
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
        self._heartbeat.start()

    # ------------------------------------------------------------------------------------------------ letting go
    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours (a lock taken over is left to its new
        holder). Never raises: a lock that cannot be deleted is logged, and goes stale after ``stale_s``."""
        self._heartbeat.stop(timeout_s=max(5.0, self.heartbeat_s))
        with self._mutex:
            if not self.held:
                return
            self.held = False
            if self._lost:
                return
            try:
                seen = self.store.read()
                if seen is not None and seen.holder is not None and seen.holder.token == self.token:
                    self.store.delete()
                    log.info("output %s: lock released by run %s", self.uri, self.run_id)
                else:
                    log.warning("output %s: at release, the lock is no longer run %s's; left as it is",
                                self.uri, self.run_id)
            except Exception as exc:  # noqa: BLE001 - the run's result matters more than the lock
                log.error("output %s: could not delete the lock %s (%s: %s); it goes stale after %g s or can be "
                          "broken with --break-lock", self.uri, self.path, type(exc).__name__, exc, self.stale_s)
