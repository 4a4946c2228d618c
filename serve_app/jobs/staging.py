"""What the endpoint writes for a job before submitting it, under ``<jobs.staging_prefix>/<job id>/``
(docs/jobs.md):

- ``manifest.jsonl``: the rows the request named, as checked (:mod:`serve_app.jobs.policy`): each row's id as
  read, and its audio location with symlinks resolved. The job reads this copy, never the client's file, so what
  the job reads is what was checked (a manifest changed after the check changes nothing).
- ``audio/<file name>``: a multipart upload, copied from the request in pieces of :data:`PIECE_BYTES` under the
  size limit the upload middleware enforced (``jobs.max_upload_bytes``).

Writes go through fsspec (local disk or an object store); the manifest atomically
(:func:`pipelines.io.writing.write_atomic`).
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import BinaryIO, Sequence

from fsspec.core import url_to_fs

from pipelines.io.manifest import ManifestRow
from pipelines.io.storage import Storage
from pipelines.io.writing import write_atomic
from serve_app.schemas import APIError

MANIFEST_NAME = "manifest.jsonl"
#: Bytes copied at a time from an upload to the staging prefix.
PIECE_BYTES = 8 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def job_folder(staging_prefix: str, job_id: str) -> str:
    """``<staging_prefix>/<job id>`` as a location fsspec reads (``file://`` prefixes become local paths)."""
    base = staging_prefix[len("file://"):] if staging_prefix.startswith("file://") else staging_prefix
    return base.rstrip("/") + "/" + job_id


def manifest_line(row: ManifestRow) -> dict:
    """One staged manifest row: id, audio location, and the optional fields the row has."""
    line = {"id": row.id, "audio_filepath": row.uri}
    for key in ("language", "prompt", "reference", "num_speakers", "min_speakers", "max_speakers"):
        value = getattr(row, key)
        if value is not None:
            line[key] = value
    return line


def _storage_failed(what: str, exc: BaseException) -> APIError:
    return APIError(503, f"the staging storage cannot be written ({what}); retry later", code="storage_unavailable",
                    headers={"Retry-After": "5"})


def stage_manifest(rows: Sequence[ManifestRow], staging_prefix: str, job_id: str, storage: Storage) -> str:
    """Write ``rows`` as ``<staging>/<job id>/manifest.jsonl``; returns its location.

    Raises:
        APIError: 503 ``storage_unavailable`` when it cannot be written.
    """
    folder = job_folder(staging_prefix, job_id)
    location = folder + "/" + MANIFEST_NAME
    data = "".join(json.dumps(manifest_line(r), ensure_ascii=False) + "\n" for r in rows).encode()
    try:
        fs, path = url_to_fs(location, **storage.options_for(location))
        write_atomic(fs, path, data, storage.retry)
    except Exception as exc:  # noqa: BLE001 - StorageError, a missing fsspec package
        raise _storage_failed("manifest", exc) from exc
    return location


def safe_name(filename: str) -> str:
    """A file name safe to use in a path: its base name with characters outside ``[A-Za-z0-9._-]`` replaced by
    ``_``, never empty nor starting with a dot or an underscore (the job's readers skip those)."""
    name = _UNSAFE.sub("_", posixpath.basename(filename.replace("\\", "/")))[:150].lstrip("._")
    return name or "upload"


def stage_upload(file: BinaryIO, filename: str, staging_prefix: str, job_id: str, storage: Storage,
                 max_bytes: int) -> str:
    """Copy an uploaded file to ``<staging>/<job id>/audio/<safe name>``; returns its location.

    Raises:
        APIError: 413 ``file_too_large`` above ``max_bytes`` (what was copied is removed); 400 ``empty_file``;
            503 ``storage_unavailable``.
    """
    location = f"{job_folder(staging_prefix, job_id)}/audio/{safe_name(filename)}"
    copied = 0
    try:
        fs, path = url_to_fs(location, **storage.options_for(location))
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as out:
            while piece := file.read(PIECE_BYTES):
                copied += len(piece)
                if copied > max_bytes:
                    break
                out.write(piece)
    except Exception as exc:  # noqa: BLE001 - OSError, botocore errors
        raise _storage_failed("upload", exc) from exc
    if copied > max_bytes or copied == 0:
        try:
            fs.rm_file(path)
        except Exception:  # noqa: BLE001 - best effort: the staging folder is the operator's to clean
            pass
        if copied == 0:
            raise APIError(400, "the uploaded file is empty (0 bytes)", code="empty_file", param="file")
        raise APIError(413, f"the upload is larger than {max_bytes / 1e6:.1f} MB (jobs.max_upload_bytes)",
                       code="file_too_large", param="file")
    return location
