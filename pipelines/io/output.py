"""Write transcript rows as a Parquet dataset that ``pandas.read_parquet(DIR)`` reads.

Layout of the output folder::

    DIR/part-<run_id>-<seq>.parquet   rows in TRANSCRIPT_SCHEMA, each written atomically so a reader never sees
                                      half a file: on object stores (s3://...) by one PUT of the final key, elsewhere
                                      under a temporary name in DIR/_tmp/ and then renamed
    DIR/_runs/<run_id>.json           the run's summary (config, counts, timings); '_' keeps it out of the dataset

Works on any fsspec filesystem (local, s3://...); see :func:`pipelines.io.storage.write_atomic`.
"""

from __future__ import annotations

import json
import posixpath
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from pipelines.core.schema import TRANSCRIPT_SCHEMA
from pipelines.io.storage import RetryPolicy, is_object_store, write_atomic

RUNS_DIR = "_runs"
TMP_DIR = "_tmp"


class PartWriter:
    """Buffer rows and write them as Parquet part files of ``rows_per_file`` rows, each atomically.

    Args:
        output_uri: the dataset folder (created if missing).
        run_id: names the parts of this run.
        rows_per_file: rows per part.
        compression: Parquet codec.
        storage_options: fsspec options.
        retry: retries of a part write on transient storage errors (default: RetryPolicy()).
    """

    def __init__(self, output_uri: str, run_id: str, rows_per_file: int = 256, compression: str = "zstd",
                 storage_options: Optional[dict] = None, retry: Optional[RetryPolicy] = None):
        self.fs, self.root = url_to_fs(output_uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.run_id = run_id
        self.rows_per_file = rows_per_file
        self.compression = compression
        self.retry = retry or RetryPolicy()
        if not is_object_store(self.fs):  # on S3, makedirs of a missing bucket would create the bucket
            self.fs.makedirs(self.root, exist_ok=True)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._seq = 0
        self.parts: list[str] = []

    def write(self, table: pa.Table) -> list[str]:
        """Add rows (a table in TRANSCRIPT_SCHEMA); returns the part paths written by this call."""
        if table.num_rows:
            self._pending.append(table.select(TRANSCRIPT_SCHEMA.names).cast(TRANSCRIPT_SCHEMA))
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
        final = posixpath.join(self.root, name)
        buffer = pa.BufferOutputStream()  # the whole file in memory first: nothing is written if this fails
        pq.write_table(head, buffer, compression=self.compression)
        write_atomic(self.fs, final, buffer.getvalue().to_pybytes(), self.retry, posixpath.join(self.root, TMP_DIR))
        self.parts.append(final)
        return final


def write_summary(output_uri: str, run_id: str, summary: dict, storage_options: Optional[dict] = None,
                  retry: Optional[RetryPolicy] = None) -> str:
    """Write ``summary`` as ``_runs/<run_id>.json`` under the output folder (atomically); returns its path."""
    fs, root = url_to_fs(output_uri, **(storage_options or {}))
    path = posixpath.join(root.rstrip("/"), RUNS_DIR, f"{run_id}.json")
    data = json.dumps(summary, indent=2, default=str).encode()
    write_atomic(fs, path, data, retry, posixpath.join(root.rstrip("/"), TMP_DIR))
    return path
