"""The output as pandas tables: **files** (one row per transcript), **segments** (one row per segment) and
**words** (one row per timed word); see :mod:`pipelines.analysis` for their columns. Words are counted as
whitespace-separated tokens of the text, so the counts do not depend on whether word timestamps were on."""

from __future__ import annotations

import posixpath
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

SEGMENT_FIELDS = ("start", "end", "text", "avg_logprob", "compression_ratio", "no_speech_prob", "temperature")
WORD_FIELDS = ("word", "start", "end", "probability")


def count_words(texts: pd.Series) -> pd.Series:
    """Whitespace-separated tokens per text (0 for null or blank), as int64."""
    return texts.fillna("").astype(str).str.split().str.len().fillna(0).astype("int64")


def folder_of(path: Optional[str], depth: Optional[int] = None) -> str:
    """The folder part of an ``audio_filepath`` (``"an4/fjlp/x.flac"`` -> ``"an4/fjlp"``; ``"."`` for a bare
    file name). With ``depth``, only the first ``depth`` components (``depth=1`` -> ``"an4"``)."""
    if not path:
        return "."
    folder = posixpath.dirname(str(path).replace("\\", "/")) or "."
    if depth is not None and folder != ".":
        scheme, sep, rest = folder.partition("://")
        prefix, body = (scheme + sep, rest) if sep else ("", folder)
        lead = "/" if body.startswith("/") else ""
        folder = prefix + lead + "/".join(body.strip("/").split("/")[:depth])
    return folder


def files_frame(table: pa.Table, folder_depth: Optional[int] = None) -> pd.DataFrame:
    """One row per transcript: every column of ``table`` except ``segments``, plus

    - ``n_segments`` (int), ``n_words`` (int, tokens of ``text``),
    - ``words_per_min``: ``n_words / (duration_s / 60)`` (NaN when the duration is unknown or 0),
    - ``folder``: :func:`folder_of` ``audio_filepath`` (with ``folder_depth``).
    """
    frame = table.drop_columns([c for c in ("segments",) if c in table.column_names]).to_pandas()
    if "segments" in table.column_names:
        frame["n_segments"] = pc.fill_null(pc.list_value_length(table.column("segments")), 0).to_numpy()
    frame["n_words"] = count_words(frame["text"]) if "text" in frame else 0
    minutes = frame["duration_s"] / 60 if "duration_s" in frame else np.nan
    frame["words_per_min"] = (frame["n_words"] / minutes).where(minutes > 0)
    frame["folder"] = [folder_of(p, folder_depth) for p in frame.get("audio_filepath", frame.get("id"))]
    return frame


def _flat(list_column: pa.ChunkedArray | pa.Array) -> tuple[pa.StructArray, np.ndarray]:
    """Flatten a list<struct> column: (the struct values, the parent row index of each, shape (n_values,))."""
    array = list_column.combine_chunks() if isinstance(list_column, pa.ChunkedArray) else list_column
    parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
    return pc.list_flatten(array), parents


def segments_frame(table: pa.Table) -> pd.DataFrame:
    """One row per segment of every transcript.

    Columns: ``file_id``, ``segment`` (the segment's id in its file, 0..n-1), ``start``, ``end`` (seconds of file
    time), ``text``, ``avg_logprob``, ``compression_ratio``, ``no_speech_prob``, ``temperature``, ``duration_s``
    (``end - start``), ``n_words`` (tokens of ``text``), ``n_timed_words`` (entries in ``words``) and
    ``words_per_s`` (``n_words / duration_s``, NaN for a zero-length segment).
    Error and empty rows have no segments and so no rows here.
    """
    flat, parents = _flat(table.column("segments"))
    columns = {"file_id": table.column("id").take(pa.array(parents, pa.int64())).to_numpy(zero_copy_only=False),
               "segment": flat.field("id").to_numpy(zero_copy_only=False)}
    for name in SEGMENT_FIELDS:
        columns[name] = flat.field(name).to_numpy(zero_copy_only=False)
    frame = pd.DataFrame(columns)
    frame["text"] = frame["text"].fillna("").astype(str)
    frame["duration_s"] = frame["end"] - frame["start"]
    frame["n_words"] = count_words(frame["text"])
    frame["n_timed_words"] = pc.fill_null(pc.list_value_length(flat.field("words")), 0).to_numpy()
    frame["words_per_s"] = (frame["n_words"] / frame["duration_s"]).where(frame["duration_s"] > 0)
    return frame


def words_frame(table: pa.Table) -> pd.DataFrame:
    """One row per timed word (empty when the job ran without ``decoding.word_timestamps``).

    Columns: ``file_id``, ``segment``, ``word_index`` (position in its segment), ``word`` (with Whisper's leading
    space), ``start``, ``end`` (seconds of file time), ``probability`` (0..1), ``duration_s``.
    """
    segs, seg_parents = _flat(table.column("segments"))
    words, word_parents = _flat(segs.field("words"))
    file_ids = table.column("id").take(pa.array(seg_parents, pa.int64())).to_numpy(zero_copy_only=False)
    seg_ids = segs.field("id").to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({
        "file_id": file_ids[word_parents] if len(word_parents) else np.array([], dtype=object),
        "segment": seg_ids[word_parents] if len(word_parents) else np.array([], dtype=np.int32),
    })
    # position of each word within its segment: running count since the segment's first word
    starts = np.r_[0, np.flatnonzero(np.diff(word_parents)) + 1] if len(word_parents) else np.array([], int)
    position = np.arange(len(word_parents))
    frame["word_index"] = position - np.repeat(starts, np.diff(np.r_[starts, len(word_parents)]))
    for name in WORD_FIELDS:
        frame[name] = words.field(name).to_numpy(zero_copy_only=False)
    frame["duration_s"] = frame["end"] - frame["start"]
    return frame
