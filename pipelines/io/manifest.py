"""Read and validate a manifest before any work: JSONL, CSV, Parquet, a folder, or a glob; local path or any
fsspec URL (``s3://``...).

Each row names its audio with ``audio_filepath`` (NeMo's name) or ``path``, and may carry ``id``, ``language``,
``prompt`` and a reference transcript as ``text`` (NeMo) or ``reference``. Relative audio paths resolve against
the manifest's folder. Any problem stops the job with a :class:`ManifestError` that names the file and line
(1-based; for CSV the header is line 1, for Parquet the row number).
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

import fsspec
from fsspec.core import url_to_fs

from pipelines.core.errors import ManifestError

AUDIO_EXTENSIONS = frozenset(
    ".wav .flac .mp3 .ogg .oga .opus .m4a .aac .mp4 .m4v .mov .mkv .mka .webm .wma .aif .aiff .amr .3gp".split()
)
PATH_KEYS = ("audio_filepath", "path")
REFERENCE_KEYS = ("text", "reference")


@dataclass(frozen=True)
class ManifestRow:
    """One input: ``audio_filepath`` verbatim from the manifest, ``uri`` resolved (absolute path or URL),
    ``line`` where it was read (1-based).

    ``error``: why the row cannot be read, found while reading the manifest (a path that is not valid UTF-8);
    the job then writes it as an error row without reading it. Every string field is valid UTF-8 (such a path is
    shown escaped by :func:`printable`).
    """

    id: str
    audio_filepath: str
    uri: str
    language: Optional[str] = None
    prompt: Optional[str] = None
    reference: Optional[str] = None
    line: int = 0
    error: Optional[str] = None
    num_speakers: Optional[int] = None
    min_speakers: Optional[int] = None
    max_speakers: Optional[int] = None

    @property
    def speaker_counts(self) -> Optional[tuple]:
        """``(num_speakers, min_speakers, max_speakers)`` when any is given, else None."""
        counts = (self.num_speakers, self.min_speakers, self.max_speakers)
        return counts if any(v is not None for v in counts) else None

    def to_dict(self) -> dict:
        """Plain dict (for building a Ray dataset)."""
        return asdict(self)


def is_utf8(text: str) -> bool:
    r"""Whether ``text`` can be written as UTF-8 (Parquet, Arrow, JSON): False for the lone surrogates Python uses
    for the bytes of a file name that are not UTF-8 (``os.fsdecode``), or that a JSON ``"\udcff"`` escape gives."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    r"""``text`` as valid UTF-8: unchanged if it is; else the bytes of a file name that are not UTF-8 shown
    backslash-escaped: the name ``b"bad\xff.wav"``, which Python lists as ``"bad\udcff.wav"``, becomes
    ``r"bad\xff.wav"`` (a backslash, then ``xff``); a lone surrogate of another origin becomes ``r"\udxxx"``."""
    if is_utf8(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from os.fsdecode
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(rows: list[ManifestRow], where: str) -> list[ManifestRow]:
    """Rows whose path is not valid UTF-8 get it escaped and an ``error`` (they become error rows, the others go
    on); any other field that is not valid UTF-8 is a bad manifest row.

    Raises:
        ManifestError: an ``id``, ``language``, ``prompt`` or ``reference`` that is not valid UTF-8.
    """
    out = []
    for row in rows:
        for field in ("id", "language", "prompt", "reference"):
            value = getattr(row, field)
            if value is not None and not is_utf8(value):
                raise ManifestError(f"{where}, line {row.line}: the {field} is not valid UTF-8: {printable(value)!r}")
        if is_utf8(row.audio_filepath) and is_utf8(row.uri):
            out.append(row)
            continue
        shown = printable(row.audio_filepath)
        out.append(replace(row, audio_filepath=shown, uri=printable(row.uri),
                           error=f"{shown}: the file name is not valid UTF-8 (shown here with its bytes escaped); "
                                 "rename the file to transcribe it"))
    return out


def _is_url(uri: str) -> bool:
    return "://" in uri


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if _is_url(uri) else "file"


def resolve_uri(base_dir: str, path: str) -> str:
    """Resolve ``path`` from a manifest against the manifest's folder ``base_dir`` (a local path or URL).

    Absolute paths and URLs are returned unchanged; ``file://`` URLs become plain local paths. Against a URL
    (``s3://bucket/manifests/``), ``..`` may climb up to the bucket but not out of it.

    Raises:
        ValueError: a relative path that climbs out of the URL's bucket (or host).
    """
    if path.startswith("file://"):
        return path[len("file://"):]
    if _is_url(path) or os.path.isabs(path):
        return path
    if _is_url(base_dir):
        proto, rest = base_dir.split("://", 1)
        bucket = rest.split("/", 1)[0]
        joined = posixpath.normpath(posixpath.join(rest, path))
        if joined.split("/", 1)[0] != bucket or joined == bucket:
            raise ValueError(f"the relative path {path!r} climbs out of {proto}://{bucket}/")
        return f"{proto}://{joined}"
    return os.path.normpath(os.path.join(base_dir, path))


def _parent(uri: str) -> str:
    if _is_url(uri):
        proto, rest = uri.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(uri))


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


#: Optional per-row diarization hints (see :class:`~pipelines.core.diarization.SpeakerCount`).
SPEAKER_COUNT_KEYS = ("num_speakers", "min_speakers", "max_speakers")


def _str_or_none(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from CSV/Parquet
        return None
    text = str(value)
    return text if text.strip() else None


def _row(record: Any, where: str, line: int, base_dir: str) -> ManifestRow:
    if not isinstance(record, dict):
        raise ManifestError(f"{where}, line {line}: expected an object with 'audio_filepath', got {type(record).__name__}")
    path = next((_str_or_none(record.get(k)) for k in PATH_KEYS if _str_or_none(record.get(k))), None)
    if path is None:
        raise ManifestError(f"{where}, line {line}: the row has no 'audio_filepath' (or 'path'): {json.dumps(record)[:200]}")
    reference = next((_str_or_none(record.get(k)) for k in REFERENCE_KEYS if record.get(k) is not None), None)
    try:
        uri = resolve_uri(base_dir, path)
    except ValueError as exc:
        raise ManifestError(f"{where}, line {line}: {exc}") from exc
    return ManifestRow(
        id=_str_or_none(record.get("id")) or "",
        audio_filepath=path,
        uri=uri,
        language=_str_or_none(record.get("language")),
        prompt=_str_or_none(record.get("prompt")),
        reference=reference,
        line=line,
        **_speaker_counts(record, where, line),
    )


def _speaker_counts(record: dict, where: str, line: int) -> dict:
    """The row's optional ``num_speakers`` / ``min_speakers`` / ``max_speakers`` (diarization hints), validated as
    :class:`~pipelines.core.diarization.SpeakerCount` (integers 1-32; ``num_speakers`` or min/max, min <= max).

    Raises:
        ManifestError: a count that is not such an integer, or inconsistent counts (the message names the line).
    """
    from pydantic import ValidationError

    from pipelines.core.diarization import SpeakerCount

    given = {k: record.get(k) for k in SPEAKER_COUNT_KEYS if record.get(k) is not None}
    if not given:
        return {}
    bad = [k for k, v in given.items() if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ManifestError(f"{where}, line {line}: {bad[0]} must be an integer, got {given[bad[0]]!r}")
    try:
        SpeakerCount(**given)
    except ValidationError as exc:
        reason = "; ".join(e["msg"] for e in exc.errors())
        raise ManifestError(f"{where}, line {line}: bad speaker counts {given}: {reason}") from exc
    return given


def _records(uri: str, storage_options: dict) -> list[tuple[int, Any]]:
    suffix = os.path.splitext(uri.split("?")[0])[1].lower()
    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {uri}: no such file") from exc
    except PermissionError as exc:
        raise ManifestError(f"manifest {uri}: access denied ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - OSError, and botocore/aiohttp errors that are not OSErrors
        raise ManifestError(f"manifest {uri}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            raise ManifestError(f"manifest {uri}: not a readable Parquet file ({exc})") from exc
        return list(enumerate(table.to_pylist(), start=1))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {uri}: not UTF-8 text ({exc})") from exc
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not set(PATH_KEYS) & set(reader.fieldnames):
            raise ManifestError(f"manifest {uri}, line 1: the CSV header needs an 'audio_filepath' (or 'path') column")
        return [(i + 2, rec) for i, rec in enumerate(reader)]
    records = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append((number, json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {uri}, line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    return records


def _list_audio(uri: str, storage_options: dict) -> list[str]:
    fs, path = url_to_fs(uri, **storage_options)
    proto = _protocol(uri)
    try:
        if any(ch in path for ch in "*?["):
            found = fs.glob(path)
        else:
            found = fs.find(path)
    except Exception as exc:  # noqa: BLE001 - OSError, and botocore/aiohttp errors that are not OSErrors
        raise ManifestError(f"input {uri}: cannot be listed ({type(exc).__name__}: {exc})") from exc
    files = sorted(p for p in found if os.path.splitext(p)[1].lower() in AUDIO_EXTENSIONS)
    if proto != "file":
        files = [f"{proto}://{p}" for p in files]
    return files


def _assign_ids(rows: list[ManifestRow], where: str) -> list[ManifestRow]:
    """Rows with their final, unique ids: the ``id`` column where given, else ``audio_filepath``, else (the path
    is listed twice, or is another row's explicit id) ``audio_filepath#line``.

    Raises:
        ManifestError: two rows end up with one id: an explicit id used twice, or a generated id equal to another
            row's id (``{"id": "a.wav#3"}`` beside ``a.wav`` listed on lines 2 and 3); the message names both
            lines, and whether each id was given or generated.
    """
    explicit: dict[str, int] = {}
    for row in rows:
        if row.id:
            if row.id in explicit:
                raise ManifestError(f"{where}, line {row.line}: id {row.id!r} is already used on line "
                                    f"{explicit[row.id]}; ids must be unique")
            explicit[row.id] = row.line
    seen: dict[str, tuple[int, bool]] = {rid: (line, True) for rid, line in explicit.items()}
    out = []
    for row in rows:
        rid = row.id
        if not rid:
            rid = row.audio_filepath
            if rid in seen:
                rid = f"{row.audio_filepath}#{row.line}"
            if rid in seen:
                line, given = seen[rid]
                raise ManifestError(
                    f"{where}, line {row.line}: the id generated for this row ({rid!r}: its path and line, as the "
                    f"path is listed more than once or is another row's id) is already the id of line {line} "
                    f"({'given' if given else 'generated'} there); give these rows explicit, unique ids")
            seen[rid] = (row.line, False)
        out.append(replace(row, id=rid))
    return out


def read_manifest(uri: str, storage_options: Optional[dict] = None) -> list[ManifestRow]:
    """Read and validate the input named by ``uri``.

    Args:
        uri: a ``.jsonl``/``.json``/``.csv``/``.parquet`` manifest, a folder (listed recursively for audio files),
            or a glob (``data/*.flac``); local path, ``file://`` or any fsspec URL.
        storage_options: fsspec options for the manifest's filesystem (``Storage.options_for(uri)``); the
            audio paths it lists are read later with the options of their own protocol.

    Returns:
        Rows in manifest order with unique ids (the ``id`` column, else ``audio_filepath``, made unique by
        ``#line`` when a path is listed twice or is another row's id). A path that is not valid UTF-8 (a listed
        file's name) is shown escaped and its row carries an ``error`` instead of failing the manifest.

    Raises:
        ManifestError: unreadable manifest, bad JSON/CSV/Parquet, a row without a path, duplicate ids (given or
            generated: the message names both lines), an empty input, an id/language/prompt/reference that is not
            valid UTF-8; the message names the file and line.
    """
    storage_options = storage_options or {}
    uri = _local(uri)
    try:
        fs, path = url_to_fs(uri, **storage_options)
        is_glob = any(ch in path for ch in "*?[")
        is_dir = not is_glob and fs.isdir(path)
    except Exception as exc:  # noqa: BLE001 - no fsspec package for the protocol, storage unreachable...
        raise ManifestError(f"input {uri}: cannot be reached ({type(exc).__name__}: {exc})") from exc
    if is_glob or is_dir:
        files = _list_audio(uri, storage_options)
        if not files:
            raise ManifestError(f"input {uri}: no audio files found (extensions: {' '.join(sorted(AUDIO_EXTENSIONS))})")
        base = uri if not is_glob else _parent(uri.split("*")[0] + "x")
        rows = []
        for line, f in enumerate(files, start=1):
            rel = os.path.relpath(f, base) if not _is_url(f) else f
            rows.append(ManifestRow(id="", audio_filepath=rel if not _is_url(f) else f, uri=f, line=line))
        return _assign_ids(_check_text(rows, f"input {uri}"), f"input {uri}")
    base_dir = _parent(uri)
    records = _records(uri, storage_options)
    rows = [_row(rec, f"manifest {uri}", line, base_dir) for line, rec in records]
    if not rows:
        raise ManifestError(f"manifest {uri}: has no rows")
    return _assign_ids(_check_text(rows, f"manifest {uri}"), f"manifest {uri}")
