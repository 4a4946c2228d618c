"""Export a job's transcripts as subtitle or text files, one file per transcript.

    python -m pipelines.export --input OUT_DIR --format srt|vtt|txt|json --output EXPORT_DIR

- ``srt`` (SubRip, built with the ``srt`` library) and ``vtt`` (WebVTT, built with ``webvtt-py``): one cue per
  segment, cue times = segment ``start``/``end`` rounded to the millisecond. Segments with blank text are left
  out; a segment whose rounded end is not after its start ends 1 ms after it (players drop zero-length cues).
  Cue text is the segment text with runs of whitespace made single spaces (a blank line would end a cue); in
  VTT, ``&``, ``<`` and ``>`` are written as ``&amp;``, ``&lt;`` and ``&gt;`` as the format requires.
- ``txt``: one segment's text per line (the row's ``text`` when it has no segments).
- ``json``: the row in the shape of OpenAI's ``verbose_json`` (``language``, ``duration``, ``text``, ``segments``
  with their ``words``) plus ``id``, ``audio_filepath``, ``status`` and ``language_probability``.

Rows: ``error`` rows are skipped with a message on stderr (they have no transcript); ``empty`` rows (no speech
found) get a file with no cues (an empty ``.srt``/``.txt``, a ``WEBVTT`` header only, JSON with no segments), so
every file that was transcribed has its export and "no speech" is told apart from "failed".

File names come from the row ``id`` (see :func:`safe_filename`): ``/`` and ``\\`` become ``__``
(``an4/fjlp/cen7.flac`` -> ``an4__fjlp__cen7.flac.srt``); every other character outside ``A-Z a-z 0-9 . _ -``
becomes ``_``, a leading ``.`` becomes ``_`` and names are cut at 150 characters, and where any of these changed
the name, ``-`` and the first 8 hex digits of the id's SHA-1 are appended (``a b?.wav`` -> ``a_b_.wav-9640a404``).
A name that would still collide (ignoring case, for case-insensitive file systems) with another id's in the same
export gets that suffix too, so two different ids never share a file.

The pure functions (:func:`to_srt`, :func:`to_vtt`, :func:`to_text`, :func:`to_json`) take segments as
:class:`~pipelines.core.schema.Segment` objects or as the dicts of a Parquet row, and import nothing but the
subtitle libraries; they are meant to merge with ``pipelines/core/export.py`` (the Serve endpoint's formats).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import posixpath
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from pipelines.core.export import cues, to_srt, to_vtt  # noqa: F401 - the one SRT/VTT writer, re-exported


log = logging.getLogger(__name__)

FORMATS = ("srt", "vtt", "txt", "json")
#: the columns an export reads
COLUMNS = ["id", "audio_filepath", "status", "error_type", "error_message", "language", "language_probability",
           "duration_s", "text", "segments"]
MAX_NAME_CHARS = 150

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SPACES = re.compile(r"\s+")


# ---------------------------------------------------------------------------------------------------- pure formats


def to_text(segments: Sequence[Any], text: Optional[str] = None) -> str:
    """Plain text: one non-blank segment per line; ``text`` when there are no segments; ``""`` when neither has
    any words. Ends with a newline unless empty."""
    lines = [c.text for c in cues(segments)]
    if not lines and text and text.strip():
        lines = [_SPACES.sub(" ", text).strip()]
    return "\n".join(lines) + "\n" if lines else ""


def _plain(value: Any) -> Any:
    """Parquet values (numpy arrays, numpy scalars, NaN) -> JSON-ready Python values."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(row: Mapping[str, Any]) -> str:
    """One transcript row as ``verbose_json``-like JSON (see the module doc), UTF-8 text, indented."""
    segments = [_plain(s if isinstance(s, Mapping) else s.to_dict()) for s in (row.get("segments") or [])]
    doc = {
        "id": row.get("id"),
        "audio_filepath": row.get("audio_filepath"),
        "status": row.get("status"),
        "language": row.get("language"),
        "language_probability": _plain(row.get("language_probability")),
        "duration": _plain(row.get("duration_s")),
        "text": row.get("text") or "",
        "segments": segments,
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def render(row: Mapping[str, Any], fmt: str) -> str:
    """The export of one row in ``fmt`` (one of :data:`FORMATS`).

    Raises:
        ValueError: unknown format.
    """
    segments = row.get("segments")
    segments = [] if segments is None else list(segments)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_text(segments, row.get("text"))
    if fmt == "json":
        return to_json(row)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------------- file names


def _id_hash(row_id: str) -> str:
    return hashlib.sha1(row_id.encode("utf-8")).hexdigest()[:8]


def safe_filename(row_id: str) -> str:
    """A file name (no extension) made from a row id; see the module doc.

    ``/`` and ``\\`` become ``__`` (``an4/fjlp/cen7.flac`` -> ``an4__fjlp__cen7.flac``). Where more was lost
    (another character replaced, a leading dot, a cut), ``-`` and 8 hex digits of the id's SHA-1 are appended, so
    such names stay apart without knowing the other ids: ``"a b?.wav"`` -> ``"a_b_.wav-9640a404"``.
    """
    name = re.sub(r"[/\\]", "__", row_id)
    cleaned = _UNSAFE.sub("_", name)
    cleaned = "_" + cleaned[1:] if cleaned.startswith(".") else cleaned
    cleaned = cleaned[:MAX_NAME_CHARS] or "_"
    return name if cleaned == name else f"{cleaned}-{_id_hash(row_id)}"


@dataclass
class NameAllocator:
    """Hands out one file name per id, never the same name (ignoring case) to two different ids."""

    _by_id: dict[str, str] = field(default_factory=dict)
    _taken: dict[str, str] = field(default_factory=dict)  # casefolded name -> id

    def name_for(self, row_id: str) -> str:
        """The file name (no extension) for ``row_id``; the same id always gets the same name."""
        if row_id in self._by_id:
            return self._by_id[row_id]
        name = safe_filename(row_id)
        if self._taken.get(name.casefold(), row_id) != row_id:
            name = f"{name}-{_id_hash(row_id)}"
        n = 2
        base = name
        while self._taken.get(name.casefold(), row_id) != row_id:  # a hash prefix collision: practically never
            name, n = f"{base}-{n}", n + 1
        self._by_id[row_id] = name
        self._taken[name.casefold()] = row_id
        return name


# ---------------------------------------------------------------------------------------------------- the command


@dataclass
class ExportSummary:
    """What an export did: ``written`` file paths, how many of them were ``empty`` rows, the ids of the
    ``skipped`` error rows, and ``duplicates`` (ids met more than once; the last such row's file stands)."""

    written: list[str] = field(default_factory=list)
    empty: int = 0
    skipped: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def export(input_path: str, fmt: str, output: str, storage_options: Optional[dict] = None,
           batch_size: int = 256) -> ExportSummary:
    """Write one ``<name>.<fmt>`` file per transcript of the output folder ``input_path`` into ``output``.

    Reads the Parquet dataset in batches of ``batch_size`` rows (memory stays flat on big corpora). ``output`` is a
    local folder or fsspec URL, created if missing; files already there are overwritten.

    Raises:
        ValueError: unknown format.
        FileNotFoundError: ``input_path`` holds no Parquet parts.
    """
    from fsspec.core import url_to_fs

    from pipelines.analysis import open_dataset

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    dataset = open_dataset(input_path, storage_options)
    columns = [c for c in COLUMNS if c in dataset.schema.names]
    fs, root = url_to_fs(output, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    names = NameAllocator()
    summary = ExportSummary()
    seen: set[str] = set()
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size):
        for row in batch.to_pylist():
            row_id = row["id"]
            if row.get("status") == "error":
                summary.skipped.append(row_id)
                print(f"skipped {row_id}: error row ({row.get('error_type')}: {row.get('error_message')})",
                      file=sys.stderr)
                continue
            if row_id in seen:
                summary.duplicates.append(row_id)
                log.warning("id %s appears more than once in %s; overwriting its export", row_id, input_path)
            seen.add(row_id)
            path = posixpath.join(root, f"{names.name_for(row_id)}.{fmt}")
            with fs.open(path, "w", encoding="utf-8") as f:
                f.write(render(row, fmt))
            summary.written.append(path)
            summary.empty += row.get("status") == "empty"
    return summary


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.export",
        description="Write one subtitle/text file per transcript of a job's output folder "
                    "(error rows are skipped; empty rows give a file with no cues).",
    )
    parser.add_argument("--input", required=True, help="the job's --output folder (local path or fsspec URL)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="srt, vtt, txt or json")
    parser.add_argument("--output", required=True, help="folder for the exported files (created if missing)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code: 0 done (error rows skipped are not a failure), 2 no input."""
    args = parse_args(argv)
    try:
        summary = export(args.input, args.format, args.output)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(summary.written)} .{args.format} files to {args.output} "
          f"({summary.empty} with no speech); skipped {len(summary.skipped)} error rows")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
