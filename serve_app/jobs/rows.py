"""A job's transcripts: the rows of its output folder's Parquet parts, read with pyarrow's dataset reader (parts
only: names starting with ``_`` or ``.`` are skipped, as pandas does), a page at a time ordered by ``id``
(``GET /v1/jobs/{id}/transcripts``, docs/jobs.md).

A page reads the ``id`` column of every part, picks the ids after the cursor, then reads only those rows. Rows are
JSON-ready dicts with the columns of :data:`~pipelines.core.schema.TRANSCRIPT_SCHEMA` (times as ISO 8601); one
row renders as SRT, VTT or text through :mod:`pipelines.core.export`, the renderer of the endpoint and of
``python -m pipelines.export``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from fsspec.core import url_to_fs

from pipelines.core.export import export_text, plain
from pipelines.core.schema import TRANSCRIPT_SCHEMA
from pipelines.io.storage import Storage
from serve_app.schemas import APIError


def _dataset(output: str, storage: Storage) -> Optional[ds.Dataset]:
    fs, root = url_to_fs(output, **storage.options_for(output))
    root = root.rstrip("/")
    if not fs.exists(root):
        return None
    return ds.dataset(root, filesystem=fs, format="parquet", schema=TRANSCRIPT_SCHEMA, ignore_prefixes=[".", "_"])


def _jsonable(row: dict) -> dict:
    return {k: v.isoformat() if isinstance(v, (dt.datetime, dt.date)) else plain(v) for k, v in row.items()}


def read_page(output: str, storage: Storage, after: Optional[str], limit: int,
              row_id: Optional[str] = None) -> tuple[list[dict[str, Any]], bool]:
    """The rows of the folder ``output`` with ids after ``after`` (all when None), at most ``limit`` of them in id
    order, and whether more follow; with ``row_id``, only that row (a list of one, or empty when it is not there).

    Raises:
        APIError: 503 ``storage_unavailable`` when the folder cannot be read.
    """
    try:
        dataset = _dataset(output, storage)
        if dataset is None:
            return [], False
        if row_id is not None:
            ids = [row_id]
            more = False
        else:
            where = None if after is None else pc.field("id") > after
            found = dataset.to_table(columns=["id"], filter=where).column("id")
            ordered = sorted(set(found.to_pylist()))
            ids, more = ordered[:limit], len(ordered) > limit
        if not ids:
            return [], False
        table = dataset.to_table(filter=pc.field("id").isin(pa.array(ids, pa.string())))
    except APIError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage errors, a part being replaced under the reader
        raise APIError(503, f"the output {output!r} cannot be read now; retry shortly", code="storage_unavailable",
                       headers={"Retry-After": "2"}) from exc
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    return [_jsonable(r) for r in rows], more


def render_row(row: dict[str, Any], fmt: str) -> str:
    """One output row as ``fmt`` (``srt``, ``vtt`` or ``text``) through :mod:`pipelines.core.export`."""
    return export_text(row, fmt)
