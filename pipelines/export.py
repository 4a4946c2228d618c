"""Export a job's transcripts as subtitle, text or JSON files, one file per transcript.

    python -m pipelines.export --input OUT_DIR --format srt|vtt|text|verbose_json --output EXPORT_DIR

The formats are :mod:`pipelines.core.export`'s, the same renderers and meanings as the Serve endpoint's
``response_format`` (docs/analysis.md):

- ``srt`` (SubRip, built with the ``srt`` library) and ``vtt`` (WebVTT, built with ``webvtt-py``): one cue per
  segment, cue times = segment ``start``/``end`` rounded to the millisecond. Segments with blank text are left
  out; a segment whose rounded end is not after its start ends 1 ms after it (players drop zero-length cues).
  Cue text is the segment text with runs of whitespace made single spaces (a blank line would end a cue); in
  VTT, ``&``, ``<`` and ``>`` are written as ``&amp;``, ``&lt;`` and ``&gt;`` as the format requires.
- ``text`` (files ``.txt``; ``txt`` is accepted as another name for it): the row's ``text``, one paragraph.
- ``verbose_json`` (files ``.json``; ``json`` is accepted as another name for it, as before): the row in the shape
  of OpenAI's ``verbose_json`` (``language``, ``duration``, ``text``, ``segments`` with their ``words``) plus
  ``id``, ``audio_filepath``, ``status``, ``language_probability``, ``schema_version`` and ``usage``.

Rows: ``error`` rows are skipped with a message on stderr (they have no transcript); ``empty`` rows (no speech
found) get a file with no cues (an empty ``.srt``/``.txt``, a ``WEBVTT`` header only, JSON with no segments), so
every file that was transcribed has its export and "no speech" is told apart from "failed".

File names come from the row ``id`` (see :func:`safe_filename`): ``/`` and ``\\`` become ``__``
(``an4/fjlp/cen7.flac`` -> ``an4__fjlp__cen7.flac.srt``); every other character outside ``A-Z a-z 0-9 . _ -``
becomes ``_``, a leading ``.`` becomes ``_`` and names are cut at 150 characters, and where any of these changed
the name, ``-`` and the first 8 hex digits of the id's SHA-1 are appended (``a b?.wav`` -> ``a_b_.wav-9640a404``).
A name that would still collide (ignoring case, for case-insensitive file systems) with another id's in the same
export gets that suffix too, so two different ids never share a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import posixpath
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from pipelines.core.export import export_text, to_srt, to_text, to_vtt, verbose_json  # noqa: F401 - re-exported


log = logging.getLogger(__name__)

#: The formats the CLI writes, each with its file extension (the meanings are pipelines.core.export's).
EXTENSIONS = {"srt": "srt", "vtt": "vtt", "text": "txt", "verbose_json": "json"}
#: Other names accepted for a format, kept from before the formats were one module's: ``txt`` and ``json``.
ALIASES = {"txt": "text", "json": "verbose_json"}
FORMATS = tuple(EXTENSIONS)
#: the columns an export reads
COLUMNS = ["id", "audio_filepath", "status", "error_type", "error_message", "language", "language_probability",
           "duration_s", "text", "segments", "schema_version"]
MAX_NAME_CHARS = 150

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def format_name(fmt: str) -> str:
    """The format ``fmt`` names (an alias resolved: ``txt`` -> ``text``, ``json`` -> ``verbose_json``).

    Raises:
        ValueError: unknown format.
    """
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join([*FORMATS, *ALIASES])}")
    return fmt


def render(row: Mapping[str, Any], fmt: str) -> str:
    """The export of one row in ``fmt`` (one of :data:`FORMATS` or an alias), rendered by
    :mod:`pipelines.core.export`.

    Raises:
        ValueError: unknown format.
    """
    fmt = format_name(fmt)
    if fmt == "verbose_json":
        return json.dumps(verbose_json(row), ensure_ascii=False, indent=2) + "\n"
    return export_text(row, fmt)


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

    fmt = format_name(fmt)
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
            path = posixpath.join(root, f"{names.name_for(row_id)}.{EXTENSIONS[fmt]}")
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
    parser.add_argument("--format", required=True, choices=[*FORMATS, *ALIASES],
                        help="srt, vtt, text (.txt) or verbose_json (.json); txt and json are other names for the "
                             "last two")
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
    print(f"wrote {len(summary.written)} .{EXTENSIONS[format_name(args.format)]} files to {args.output} "
          f"({summary.empty} with no speech); skipped {len(summary.skipped)} error rows")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
