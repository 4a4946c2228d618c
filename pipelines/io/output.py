"""Write transcript rows as a Parquet dataset that ``pandas.read_parquet(DIR)`` reads, and keep it exactly one row
per input across reruns.

Layout of the output folder::

    DIR/part-<run_id>-<seq>.parquet   the current rows, in TRANSCRIPT_SCHEMA; each part is written under _tmp/ and
                                      then renamed, so a reader never sees half a file
    DIR/_runs/<run_id>.json           each run's summary (config, counts, timings); written "running" at the start
    DIR/_errors.parquet               the current error rows of the last complete run's manifest (the errors table)
    DIR/_replaced/<run_id>/...        rows a run took out of the current set: whole parts moved aside by
                                      --overwrite, and rows superseded by a rerun (an error row retried, a row of
                                      another config or of changed audio); kept so nothing is lost, never read
    DIR/_tmp/                         parts being written; what a killed run left here is deleted by the next run

Names starting with ``_`` are skipped by pyarrow's and pandas' dataset readers. A part is only ever replaced
whole (written under ``_tmp/``, then renamed over the old one), so every state a reader or a killed run can
see is a set of complete parts. Works on any fsspec filesystem (local, s3://...).
"""

from __future__ import annotations

import json
import posixpath
import re
import uuid
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipelines.core.schema import TRANSCRIPT_SCHEMA

RUNS_DIR = "_runs"
TMP_DIR = "_tmp"
REPLACED_DIR = "_replaced"
ERRORS_FILE = "_errors.parquet"
PART_RE = re.compile(r"^part-(?P<run_id>.+)-(?P<seq>\d{5,})\.parquet$")


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`TRANSCRIPT_SCHEMA`: columns in order, columns an older schema version lacks added as
    nulls, extra columns dropped.

    Raises:
        pyarrow.ArrowInvalid: a column cannot be cast to its type.
    """
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(table.num_rows, f.type) for f in TRANSCRIPT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=TRANSCRIPT_SCHEMA)


class OutputFolder:
    """The output folder of a job (see the module doc for its layout).

    Args:
        output_uri: local path or fsspec URL of the folder.
        storage_options: fsspec options.
    """

    def __init__(self, output_uri: str, storage_options: Optional[dict] = None):
        self.uri = output_uri
        self.fs, root = url_to_fs(output_uri, **(storage_options or {}))
        self.root = root.rstrip("/")

    def path(self, *names: str) -> str:
        """A path under the folder."""
        return posixpath.join(self.root, *names)

    def prepare(self) -> None:
        """Create the folder and delete what a killed run left in ``_tmp/`` (one run at a time per folder)."""
        self.fs.makedirs(self.root, exist_ok=True)
        tmp = self.path(TMP_DIR)
        if self.fs.exists(tmp):
            self.fs.rm(tmp, recursive=True)

    def parts(self) -> list[str]:
        """The current part files, sorted by name."""
        if not self.fs.exists(self.root):
            return []
        names = (posixpath.basename(p) for p in self.fs.ls(self.root, detail=False))
        return sorted(self.path(n) for n in names if PART_RE.match(n))

    def read_part(self, part: str, columns: Optional[list[str]] = None) -> pa.Table:
        """One part (only ``columns`` of it, those it has, when given)."""
        with self.fs.open(part, "rb") as f:
            pf = pq.ParquetFile(f)
            names = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
            return pf.read(columns=names)

    def write_atomic(self, path: str, table: pa.Table, compression: str = "zstd") -> str:
        """Write ``table`` to ``path`` through a temporary file in ``_tmp/`` and a rename (replacing ``path``)."""
        tmp_dir = self.path(TMP_DIR)
        self.fs.makedirs(tmp_dir, exist_ok=True)
        tmp = posixpath.join(tmp_dir, f"{posixpath.basename(path)}.{uuid.uuid4().hex}")
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(table, f, compression=compression)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.mv(tmp, path)
        return path

    def move_aside(self, parts: Iterable[str], run_id: str) -> list[str]:
        """Move whole parts to ``_replaced/<run_id>/`` (one rename each); returns their new paths."""
        moved = []
        for part in parts:
            dest = self.path(REPLACED_DIR, run_id, posixpath.basename(part))
            self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
            self.fs.mv(part, dest)
            moved.append(dest)
        return moved

    def take_out(self, rows: dict[str, Iterable[int]], run_id: str, compression: str = "zstd") -> int:
        """Take rows out of the current set: for each part, the rows at the given positions go to
        ``_replaced/<run_id>/<part>`` and the part is replaced by the rest (deleted when nothing is left).

        The removed rows are written first, so a run killed half-way leaves them in both places at worst (the
        part is unchanged and the next run takes them out again), never lost and never doubled in the current set.

        Returns:
            The number of rows taken out.
        """
        taken = 0
        for part, positions in sorted(rows.items()):
            drop = set(positions)
            if not drop:
                continue
            table = self.read_part(part)
            mask = pa.array([i in drop for i in range(table.num_rows)])
            removed, kept = table.filter(mask), table.filter(pc.invert(mask))
            aside = f"{posixpath.basename(part)[:-len('.parquet')]}.{uuid.uuid4().hex[:8]}.parquet"
            self.write_atomic(self.path(REPLACED_DIR, run_id, aside), removed, compression)
            if kept.num_rows:
                self.write_atomic(part, kept, compression)
            else:
                self.fs.rm(part)
            taken += removed.num_rows
        return taken


class PartWriter:
    """Buffer rows and write them as Parquet part files of ``rows_per_file`` rows, each atomically.

    Args:
        output_uri: the dataset folder (created if missing).
        run_id: names the parts of this run (numbering goes on after parts this run id already has).
        rows_per_file: rows per part.
        compression: Parquet codec.
        storage_options: fsspec options.
    """

    def __init__(self, output_uri: str, run_id: str, rows_per_file: int = 256, compression: str = "zstd",
                 storage_options: Optional[dict] = None):
        self.folder = OutputFolder(output_uri, storage_options)
        self.folder.fs.makedirs(self.folder.root, exist_ok=True)
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.compression = compression
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        seqs = [int(m["seq"]) for m in (PART_RE.match(posixpath.basename(p)) for p in self.folder.parts())
                if m and m["run_id"] == run_id]
        self._seq = max(seqs, default=-1) + 1
        self.parts: list[str] = []

    def write(self, table: pa.Table) -> list[str]:
        """Add rows (a table in TRANSCRIPT_SCHEMA); returns the part paths written by this call."""
        if table.num_rows:
            self._pending.append(conform(table))
            self._pending_rows += table.num_rows
        written = []
        while self._pending_rows >= self.rows_per_file:
            written.append(self._flush(self.rows_per_file))
        return written

    def close(self) -> list[str]:
        """Write what is left; returns the part paths written."""
        return [self._flush(self._pending_rows)] if self._pending_rows else []

    def _flush(self, n: int) -> str:
        table = pa.concat_tables(self._pending)
        head, rest = table.slice(0, n), table.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        name = f"part-{self.run_id}-{self._seq:05d}.parquet"
        self._seq += 1
        final = self.folder.write_atomic(self.folder.path(name), head, self.compression)
        self.parts.append(final)
        return final


def write_summary(output_uri: str, run_id: str, summary: dict, storage_options: Optional[dict] = None) -> str:
    """Write ``summary`` as ``_runs/<run_id>.json`` under the output folder; returns its path."""
    fs, root = url_to_fs(output_uri, **(storage_options or {}))
    path = posixpath.join(root.rstrip("/"), RUNS_DIR, f"{run_id}.json")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    return path
