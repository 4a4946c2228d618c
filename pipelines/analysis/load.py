"""Reading a job's output folder (local or any fsspec URL) as Parquet part files, a lazy dataset or one Arrow
table. Files under folders whose name starts with ``_`` or ``.`` (``_runs/``, ``_tmp/``) are not part of it."""

from __future__ import annotations

import posixpath
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.dataset as pads
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


def part_files(path: str, storage_options: Optional[dict] = None) -> tuple[object, list[str]]:
    """The Parquet part files of an output folder: ``(fsspec filesystem, sorted paths)``.

    ``path`` is a folder (local, ``file://``, ``s3://`` or any fsspec URL) or a single ``.parquet`` file. Files
    under a folder whose name starts with ``_`` or ``.`` (``_runs/``, ``_tmp/``) are not part of the dataset.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no ``.parquet`` file.
    """
    fs, root = url_to_fs(str(path), **(storage_options or {}))
    root = root.rstrip("/") or "/"
    if not fs.exists(root):
        raise FileNotFoundError(f"{path}: no such output folder")
    if fs.isfile(root):
        return fs, [root]
    found = []
    for name in fs.find(root):
        rel = posixpath.relpath(name, root)
        if name.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in rel.split("/")):
            found.append(name)
    if not found:
        raise FileNotFoundError(f"{path}: no .parquet part files (is it the --output folder of a job?)")
    return fs, sorted(found)


def open_dataset(path: str, storage_options: Optional[dict] = None) -> pads.Dataset:
    """The output folder as a lazy :class:`pyarrow.dataset.Dataset` (stream it with ``to_batches``).

    Raises:
        FileNotFoundError: see :func:`part_files`.
    """
    fs, files = part_files(path, storage_options)
    return pads.dataset(files, format="parquet", filesystem=None if isinstance(fs, LocalFileSystem) else fs)


def load_table(path: str, columns: Optional[Sequence[str]] = None,
               storage_options: Optional[dict] = None) -> pa.Table:
    """Read a whole output folder (local or fsspec URL) into one Arrow table in ``TRANSCRIPT_SCHEMA``.

    Args:
        path: the job's ``--output`` folder, or one part file.
        columns: read only these columns (all by default).
        storage_options: fsspec options (e.g. ``{"anon": True}`` or ``{"client_kwargs": {"endpoint_url": ...}}``).

    Raises:
        FileNotFoundError: see :func:`part_files`.
    """
    return open_dataset(path, storage_options).to_table(columns=list(columns) if columns else None)
