"""Write transcript rows as a Parquet dataset that ``pandas.read_parquet(DIR)`` reads, and keep it exactly one row
per input across reruns.

Layout of the output folder::

    DIR/part-<run_id>-<seq>-<writer>.parquet
                                      the current rows, in TRANSCRIPT_SCHEMA, each written atomically so a reader
                                      never sees half a file: on object stores (s3://...) by one PUT of the final
                                      key, elsewhere under DIR/_tmp/ and then renamed. <writer> is 8 random hex
                                      digits per PartWriter, so two writers never pick one name, not even two runs
                                      given the same --run-id (parts named part-<run_id>-<seq>.parquet by earlier
                                      versions are read the same way)
    DIR/_lock.json                    the lock of the run writing the folder (see pipelines.io.lock)
    DIR/_runs/<run_id>.json           each run's summary (config, counts, timings); written "running" at the start
    DIR/_errors.parquet               the current error rows of the last complete run's manifest (the errors table)
    DIR/_replaced/<run_id>/...        rows a run took out of the current set: whole parts moved aside by
                                      --overwrite, and rows superseded by a rerun (an error row retried, a row of
                                      another config or of changed audio); kept so nothing is lost, never read
    DIR/_tmp/                         parts being written (not on object stores); what a killed run left here is
                                      deleted by the next run, once it holds the lock

Names starting with ``_`` are skipped by pyarrow's and pandas' dataset readers. A part is only ever replaced
whole (one PUT of the same key on object stores; written under ``_tmp/``, then renamed over the old one
elsewhere), so every state a reader or a killed run can see is a set of complete parts. Moving a part aside is a
rename locally and a copy, then a delete, on object stores: a run killed in between leaves the part current (and
a copy aside), never lost, never doubled in the current set. Every storage operation goes through the job's
:class:`~pipelines.io.retry.RetryPolicy` (transient errors retried, then :class:`StorageError`). Works on any
fsspec filesystem (local, s3://...); see :mod:`pipelines.io.writing`.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
import time
import uuid
from typing import Callable, Iterable, Mapping, Optional, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipelines.core.errors import StorageError
from pipelines.core.schema import TRANSCRIPT_SCHEMA
from pipelines.io.periodic import Periodic
from pipelines.io.retry import RetryPolicy
from pipelines.io.writing import is_object_store, move_file, remove_file, write_atomic
from pipelines.redact import scrub

RUNS_DIR = "_runs"
TMP_DIR = "_tmp"
REPLACED_DIR = "_replaced"
ERRORS_FILE = "_errors.parquet"
#: A part's name: ``part-<run_id>-<seq>-<writer>.parquet``, or ``part-<run_id>-<seq>.parquet`` (earlier versions).
PART_RE = re.compile(r"^part-(?P<run_id>.+?)-(?P<seq>\d{5,})(?:-(?P<writer>[0-9a-f]{8}))?\.parquet$")

log = logging.getLogger("raywhisper")

T = TypeVar("T")


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`TRANSCRIPT_SCHEMA`: columns in order, columns an older schema version lacks added as
    nulls, extra columns dropped.

    Raises:
        pyarrow.ArrowInvalid: a column cannot be cast to its type.
    """
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in TRANSCRIPT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=TRANSCRIPT_SCHEMA)


def parquet_bytes(table: pa.Table, compression: str = "zstd") -> bytes:
    """``table`` as the bytes of a Parquet file (built in memory: nothing is written if this fails)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression=compression)
    return buffer.getvalue().to_pybytes()


class OutputFolder:
    """The output folder of a job (see the module doc for its layout).

    Args:
        output_uri: local path or fsspec URL of the folder.
        storage_options: fsspec options (``Storage.options_for(output_uri)``).
        retry: retries of every read, write, listing and move on transient errors (default: ``RetryPolicy()``).
    """

    def __init__(self, output_uri: str, storage_options: Optional[dict] = None,
                 retry: Optional[RetryPolicy] = None):
        self.uri = output_uri
        self.fs, root = url_to_fs(output_uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.object_store = is_object_store(self.fs)

    def path(self, *names: str) -> str:
        """A path under the folder."""
        return posixpath.join(self.root, *names)

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` with the retries; a failure that outlasts them is a :class:`StorageError`."""
        try:
            return self.retry.call(fn, what)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
            reason = "access denied" if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}"
            raise StorageError(f"output {self.uri}: {what} failed ({reason})") from exc

    def prepare(self) -> None:
        """Create the folder (not on object stores: the prefix needs no creating, and a makedirs there could create
        a bucket) and delete what a killed run left in ``_tmp/``. Call it only while holding the folder's lock
        (:class:`pipelines.io.lock.OutputLock`): another live run's ``_tmp/`` would go too."""
        tmp = self.path(TMP_DIR)

        def attempt() -> None:
            if not self.object_store:
                self.fs.makedirs(self.root, exist_ok=True)
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)
        self._call(attempt, f"clearing {tmp}")

    def parts(self) -> list[str]:
        """The current part files, sorted by name."""
        def attempt() -> list[str]:
            try:
                return self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
        names = (posixpath.basename(p.rstrip("/")) for p in self._call(attempt, f"listing {self.root}"))
        return sorted(self.path(n) for n in names if PART_RE.match(n))

    def read_part(self, part: str, columns: Optional[list[str]] = None) -> pa.Table:
        """One part (only ``columns`` of it, those it has, when given).

        Raises:
            StorageError: the part cannot be fetched (after the retries).
            pyarrow.ArrowException, OSError: its bytes are not a Parquet file (a damaged part).
        """
        data = self._call(lambda: self.fs.cat_file(part), f"reading {part}")
        pf = pq.ParquetFile(pa.BufferReader(data))
        names = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        return pf.read(columns=names)

    def write_atomic(self, path: str, table: pa.Table, compression: str = "zstd") -> str:
        """Write ``table`` to ``path`` whole or not at all, replacing ``path`` (one PUT on object stores, a file in
        ``_tmp/`` and a rename elsewhere; see :func:`pipelines.io.writing.write_atomic`).

        Raises:
            StorageError: still failing after the retries.
        """
        write_atomic(self.fs, path, parquet_bytes(table, compression), self.retry, self.path(TMP_DIR))
        return path

    def move_aside(self, parts: Iterable[str], run_id: str) -> list[str]:
        """Move whole parts to ``_replaced/<run_id>/`` (a rename each; a copy then a delete on object stores);
        returns their new paths."""
        moved = []
        for part in parts:
            dest = self.path(REPLACED_DIR, run_id, posixpath.basename(part))
            move_file(self.fs, part, dest, self.retry)
            moved.append(dest)
        return moved

    def take_out(self, rows: dict[str, Iterable[int]], run_id: str, compression: str = "zstd",
                 expect: Optional[Mapping[str, Mapping[int, str]]] = None) -> int:
        """Take rows out of the current set: for each part, the rows at the given positions go to
        ``_replaced/<run_id>/<part>`` and the part is replaced by the rest (deleted when nothing is left).

        The removed rows are written first, so a run killed half-way leaves them in both places at worst (the
        part is unchanged and the next run takes them out again), never lost and never doubled in the current set.

        Args:
            expect: the id expected at each position (part -> position -> id), from the index the positions come
                from: a part that no longer holds them is left whole and the call fails.

        Returns:
            The number of rows taken out.

        Raises:
            StorageError: a part does not hold the expected ids at the positions (it changed since it was indexed:
                another writer); parts before it in name order were already handled.
        """
        taken = 0
        for part, positions in sorted(rows.items()):
            drop = set(positions)
            if not drop:
                continue
            table = self.read_part(part)
            if expect is not None and part in expect:
                ids = table.column("id").to_pylist()
                for position, want in sorted(expect[part].items()):
                    found = ids[position] if position < len(ids) else None
                    if found != want:
                        raise StorageError(
                            f"output {self.uri}: {part} changed since this run indexed it (row {position} is "
                            f"{found!r}, expected {want!r}): another run writing the folder? Nothing was taken "
                            "out of it; rerun once the other run is done")
            mask = pa.array([i in drop for i in range(table.num_rows)])
            removed, kept = table.filter(mask), table.filter(pc.invert(mask))
            aside = f"{posixpath.basename(part)[:-len('.parquet')]}.{uuid.uuid4().hex[:8]}.parquet"
            self.write_atomic(self.path(REPLACED_DIR, run_id, aside), removed, compression)
            if kept.num_rows:
                self.write_atomic(part, kept, compression)
            else:
                remove_file(self.fs, part, self.retry)
            taken += removed.num_rows
        return taken


class PartWriter:
    """Buffer rows and write them as Parquet part files of ``rows_per_file`` rows, each atomically; rows in hand
    are also written (a smaller part) once the oldest has waited ``flush_interval_s``, so a killed driver loses at
    most that much finished work.

    The interval is checked on every :meth:`write` and by :meth:`flush_due`, which :meth:`start_timer` calls from
    a background thread while no rows arrive (the job's result loop blocks until the next batch, which can take
    longer than the interval). All methods are thread-safe.

    Args:
        output_uri: the dataset folder (created if missing; on object stores the bucket must exist).
        run_id: names the parts of this run (numbering goes on after parts this run id already has).
        rows_per_file: rows per part.
        compression: Parquet codec.
        storage_options: fsspec options.
        retry: retries of a part write on transient storage errors (default: RetryPolicy()).
        flush_interval_s: longest a row waits in memory (s); None: only full parts (and :meth:`close`).
        before_write: called before each part write, e.g. the output lock's ``check`` (raises to refuse: the rows
            stay in hand).
        clock: monotonic seconds (tests inject one).
    """

    def __init__(self, output_uri: str, run_id: str, rows_per_file: int = 256, compression: str = "zstd",
                 storage_options: Optional[dict] = None, retry: Optional[RetryPolicy] = None,
                 flush_interval_s: Optional[float] = 60.0, before_write: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = OutputFolder(output_uri, storage_options, retry)
        if not self.folder.object_store:  # on S3, makedirs of a missing bucket would create the bucket
            self.folder.fs.makedirs(self.folder.root, exist_ok=True)
        self.run_id = run_id
        self.writer_id = uuid.uuid4().hex[:8]
        self.rows_per_file = rows_per_file
        self.compression = compression
        self.flush_interval_s = flush_interval_s
        self.before_write = before_write
        self.clock = clock
        self._pending: list[tuple[pa.Table, float]] = []  # (rows, when they arrived)
        self._pending_rows = 0
        self._lock = threading.RLock()
        self._timer: Optional[Periodic] = None
        seqs = [int(m["seq"]) for m in (PART_RE.match(posixpath.basename(p)) for p in self.folder.parts())
                if m and m["run_id"] == run_id]
        self._seq = max(seqs, default=-1) + 1
        self.parts: list[str] = []

    @property
    def fs(self):
        return self.folder.fs

    @property
    def root(self) -> str:
        return self.folder.root

    def write(self, table: pa.Table) -> list[str]:
        """Add rows (a table in TRANSCRIPT_SCHEMA); returns the part paths written by this call: full parts, and
        the rest in hand if its oldest row has waited ``flush_interval_s``."""
        with self._lock:
            if table.num_rows:
                self._pending.append((conform(table), self.clock()))
                self._pending_rows += table.num_rows
            written = []
            while self._pending_rows >= self.rows_per_file:
                written.append(self._flush(self.rows_per_file))
            if self._due():
                written.append(self._flush(self._pending_rows))
            return written

    def flush_due(self) -> list[str]:
        """Write the rows in hand as a part if the oldest has waited ``flush_interval_s``; returns the part
        written, if any."""
        with self._lock:
            return [self._flush(self._pending_rows)] if self._due() else []

    def start_timer(self, period_s: Optional[float] = None) -> None:
        """Call :meth:`flush_due` every ``period_s`` (default: a quarter of ``flush_interval_s``, between 0.1 and
        5 s) from a daemon thread until :meth:`close`. A failed write is logged and tried again on the next tick
        (and by the next :meth:`write`, which raises if it fails too)."""
        if self.flush_interval_s is None or self._timer is not None:
            return
        period = period_s or min(5.0, max(0.1, self.flush_interval_s / 4))

        def tick() -> None:
            try:
                for part in self.flush_due():
                    log.info("wrote %s (rows in hand for %g s: output.flush_interval_s)", part, self.flush_interval_s)
            except Exception as exc:  # noqa: BLE001 - the rows stay in hand; the job's own writes raise
                log.warning("could not write the rows in hand on time (%s: %s); retrying", type(exc).__name__, exc)
        self._timer = Periodic(tick, period, "part-flush-timer")
        self._timer.start()

    def close(self) -> list[str]:
        """Stop the timer and write what is left; returns the part paths written."""
        if self._timer is not None:
            self._timer.stop(timeout_s=60)
            self._timer = None
        with self._lock:
            return [self._flush(self._pending_rows)] if self._pending_rows else []

    def _due(self) -> bool:
        return (self.flush_interval_s is not None and self._pending_rows > 0
                and self.clock() - self._pending[0][1] >= self.flush_interval_s)

    def _flush(self, n: int) -> str:
        if self.before_write is not None:
            self.before_write()
        table = pa.concat_tables([t for t, _ in self._pending])
        head, rest = table.slice(0, n), table.slice(n)
        name = f"part-{self.run_id}-{self._seq:05d}-{self.writer_id}.parquet"
        final = self.folder.write_atomic(self.folder.path(name), head, self.compression)
        # only once the part is written: a write that failed (StorageError) leaves the rows pending
        if rest.num_rows:
            seen, since = 0, self._pending[-1][1]
            for t, arrived in self._pending:  # the rest's oldest row arrived with the table holding row n
                seen += t.num_rows
                if seen > n:
                    since = arrived
                    break
            self._pending = [(rest, since)]
        else:
            self._pending = []
        self._pending_rows = rest.num_rows
        self._seq += 1
        self.parts.append(final)
        return final


def write_summary(output_uri: str, run_id: str, summary: dict, storage_options: Optional[dict] = None,
                  retry: Optional[RetryPolicy] = None) -> str:
    """Write ``summary`` as ``_runs/<run_id>.json`` under the output folder (atomically, replacing an earlier
    summary of the run); returns its path. The summary goes through :func:`pipelines.redact.scrub` first: no
    credential in the config it carries, no userinfo in a URL, reaches the file."""
    fs, root = url_to_fs(output_uri, **(storage_options or {}))
    path = posixpath.join(root.rstrip("/"), RUNS_DIR, f"{run_id}.json")
    data = json.dumps(scrub(summary), indent=2, default=str).encode()
    write_atomic(fs, path, data, retry, posixpath.join(root.rstrip("/"), TMP_DIR))
    return path


def read_summary(output_uri: str, run_id: str, storage_options: Optional[dict] = None) -> Optional[dict]:
    """The summary :func:`write_summary` wrote for ``run_id`` under the output folder, or None when there is none
    (yet) or it is not JSON.

    Raises:
        OSError and the storage's own errors: the folder cannot be read (not "no summary").
    """
    fs, root = url_to_fs(output_uri, **(storage_options or {}))
    try:
        return json.loads(fs.cat_file(posixpath.join(root.rstrip("/"), RUNS_DIR, f"{run_id}.json")))
    except (FileNotFoundError, ValueError):
        return None
