"""The progress object of a run, ``DIR/_progress.json`` (docs/jobs.md): what a run has done so far, written by
the job's driver every ``output.progress_interval_s`` seconds and at its end, and read by the endpoint's
``GET /v1/jobs/{id}`` (so a client can follow a job whoever asks, even after the Serve replicas restart).

It holds JSON (:class:`Progress`): ``run_id``; ``phase`` (``starting`` -> ``transcribing`` -> ``done`` |
``failed`` | ``stopped``); ``files_total`` (manifest rows), ``files_done`` (manifest rows with a row in the folder:
``files_kept`` found done at the start plus the rows this run wrote), ``rows`` (``ok``/``empty``/``error`` of
those), ``audio_s_done`` (seconds of audio this run transcribed), ``audio_s_total`` (null: the manifest does not
give durations; the endpoint's ETA goes by files), ``started_at`` / ``updated_at`` / ``transcribing_since``
(seconds since the epoch, UTC) and their ISO 8601 forms.

- **Atomic**: written with :func:`pipelines.io.writing.write_atomic` (one PUT on object stores; a temporary file
  under ``DIR/_tmp/`` renamed over it elsewhere), so a reader never sees half an object.
- **Monotonic**: :class:`ProgressWriter` keeps, for every count, the largest value it has written in this run, so
  a reader never sees a count go down, whatever order the updates reach it in.

Names starting with ``_`` are skipped by the Parquet dataset readers. Plain data and fsspec only: no Ray.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

from fsspec.core import url_to_fs

from pipelines.io.periodic import Periodic
from pipelines.io.retry import RetryPolicy
from pipelines.io.writing import write_atomic

log = logging.getLogger("raywhisper")

PROGRESS_FILE = "_progress.json"
#: Phases a run goes through; the last three are final.
PHASES = ("starting", "transcribing", "done", "failed", "stopped")
FINAL_PHASES = frozenset({"done", "failed", "stopped"})
#: The counts that never go down within a run.
COUNTS = ("files_total", "files_done", "files_kept", "audio_s_done")
ROW_STATUSES = ("ok", "empty", "error")


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Progress:
    """One state of a run's progress (see the module doc). Times are seconds since the epoch."""

    run_id: str
    phase: str = "starting"
    files_total: int = 0
    files_done: int = 0
    files_kept: int = 0
    rows: dict = field(default_factory=lambda: dict.fromkeys(ROW_STATUSES, 0))
    audio_s_done: float = 0.0
    audio_s_total: Optional[float] = None
    started_at: float = 0.0
    updated_at: float = 0.0
    transcribing_since: Optional[float] = None

    def to_json(self) -> bytes:
        """The object's bytes (JSON, with ISO 8601 copies of the times)."""
        data = asdict(self) | {"object": "raywhisper.progress", "started_at_iso": _iso(self.started_at),
                               "updated_at_iso": _iso(self.updated_at)}
        return json.dumps(data, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Progress":
        """Parse a progress object.

        Raises:
            ValueError: not a progress object (not JSON, fields missing or of the wrong type).
        """
        try:
            d = json.loads(data.decode("utf-8"))
            rows = {k: int(d.get("rows", {}).get(k, 0)) for k in ROW_STATUSES}
            total = d.get("audio_s_total")
            since = d.get("transcribing_since")
            return cls(run_id=str(d["run_id"]), phase=str(d["phase"]), files_total=int(d["files_total"]),
                       files_done=int(d["files_done"]), files_kept=int(d.get("files_kept", 0)), rows=rows,
                       audio_s_done=float(d["audio_s_done"]), audio_s_total=None if total is None else float(total),
                       started_at=float(d["started_at"]), updated_at=float(d["updated_at"]),
                       transcribing_since=None if since is None else float(since))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a progress object ({type(exc).__name__}: {exc})") from exc

    def merged(self, newer: "Progress") -> "Progress":
        """``newer`` with every count at least this one's (the monotonic merge); the phase never goes back
        (``transcribing`` stays, a final phase is kept)."""
        counts = {name: max(getattr(self, name), getattr(newer, name)) for name in COUNTS}
        rows = {k: max(self.rows.get(k, 0), newer.rows.get(k, 0)) for k in ROW_STATUSES}
        if self.phase in FINAL_PHASES or newer.phase in FINAL_PHASES:
            phase = self.phase if self.phase in FINAL_PHASES else newer.phase
        else:
            phase = max(self.phase, newer.phase, key=PHASES.index)
        return replace(newer, rows=rows, phase=phase, updated_at=max(self.updated_at, newer.updated_at),
                       transcribing_since=self.transcribing_since or newer.transcribing_since, **counts)


def progress_path(output_uri: str, storage_options: Optional[dict] = None) -> tuple[object, str]:
    """(fsspec filesystem, path) of the progress object of the folder ``output_uri``."""
    fs, root = url_to_fs(output_uri, **(storage_options or {}))
    return fs, posixpath.join(root.rstrip("/"), PROGRESS_FILE)


def read_progress(output_uri: str, storage_options: Optional[dict] = None) -> Optional[Progress]:
    """The folder's progress object, or None when it has none or it cannot be parsed.

    Raises:
        OSError and the storage's own errors: the folder cannot be read (not "no object").
    """
    fs, path = progress_path(output_uri, storage_options)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        return Progress.from_json(data)
    except ValueError:
        log.warning("%s is not a progress object; ignored", path)
        return None


class ProgressWriter:
    """Writes a run's :class:`Progress` to ``DIR/_progress.json``: :meth:`update` takes a new state (merged so that
    no count goes down), a daemon thread writes the latest state every ``interval_s`` seconds (its ``updated_at``
    moving on even while no count does: a heartbeat; :class:`~pipelines.io.periodic.Periodic`), and :meth:`finish`
    writes the final one. A write that fails is logged and tried again at the next tick: progress is advisory, it
    never stops the run.

    Args:
        output_uri: the output folder.
        run_id: the run.
        storage_options: fsspec options of the folder.
        retry: retries of each write.
        interval_s: seconds between writes (``output.progress_interval_s``).
        clock: wall clock, seconds since the epoch (tests inject one).
    """

    def __init__(self, output_uri: str, run_id: str, storage_options: Optional[dict] = None,
                 retry: Optional[RetryPolicy] = None, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.time):
        self.fs, self.path = progress_path(output_uri, storage_options)
        self.tmp_dir = posixpath.join(posixpath.dirname(self.path), "_tmp")
        self.retry = retry or RetryPolicy(attempts=2, max_elapsed_s=interval_s)
        self.interval_s, self.clock = interval_s, clock
        now = clock()
        self.state = Progress(run_id, started_at=now, updated_at=now)
        self._written: Optional[Progress] = None
        self._mutex = threading.Lock()
        self._ticker = Periodic(self._tick, interval_s, "progress-writer")
        self.started = False

    def update(self, **fields) -> Progress:
        """Merge the given :class:`Progress` fields into the state (counts never go down); returns the state."""
        with self._mutex:
            now = self.clock()
            newer = replace(self.state, updated_at=now, **fields)
            if newer.phase == "transcribing" and self.state.transcribing_since is None:
                newer = replace(newer, transcribing_since=now)
            self.state = self.state.merged(newer)
            return self.state

    def write(self) -> bool:
        """Write the state now if it changed since the last write; returns whether it was written."""
        with self._mutex:
            state = self.state
        if state == self._written:
            return False
        try:
            write_atomic(self.fs, self.path, state.to_json(), self.retry, self.tmp_dir)
        except Exception as exc:  # noqa: BLE001 - progress is advisory: log, retry at the next tick
            log.warning("could not write the progress object %s (%s: %s)", self.path, type(exc).__name__, exc)
            return False
        self._written = state
        return True

    def start(self) -> None:
        """Write now, then every ``interval_s`` from a daemon thread until :meth:`finish`."""
        self.started = True
        self.write()
        self._ticker.start()

    def _tick(self) -> None:
        self.update()  # updated_at moves on while the counts do not: the run is alive
        self.write()

    def finish(self, phase: str, **fields) -> Progress:
        """Stop the thread and write the final state with ``phase`` (one of :data:`FINAL_PHASES`); nothing is
        written by a writer never started (a run that stopped before its folder was prepared)."""
        if phase not in FINAL_PHASES:
            raise ValueError(f"phase {phase!r} is not final; expected one of {sorted(FINAL_PHASES)}")
        self._ticker.stop(timeout_s=max(5.0, self.interval_s))
        state = self.update(phase=phase, **fields)
        if self.started:
            self.write()
        return state
