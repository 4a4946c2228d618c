"""Look at a job's Parquet output: load it, flatten segments and words into tables, score WER, flag segments
that look like hallucinations, and summarise status, audio, languages and per-stage timings.

The notebooks in ``notebooks/`` import these functions and only plot. Three tables (pandas DataFrames):

- **files** (:func:`files_frame`): one row per transcript, the schema's columns less ``segments``, plus
  ``n_segments``, ``n_words``, ``words_per_min`` and ``folder``.
- **segments** (:func:`segments_frame`): one row per segment, keyed by ``file_id`` and ``segment`` (the segment's
  ``id`` within its file), with its ``start``/``end`` (seconds of file time), text and quality fields, plus
  ``duration_s``, ``n_words`` and ``words_per_s``.
- **words** (:func:`words_frame`): one row per timed word, keyed by ``file_id``, ``segment`` and ``word_index``.

Words are counted as whitespace-separated tokens of the text (``"3-3-1-0."`` is one word), so the counts do not
depend on whether word timestamps were on.

Nothing here starts Ray or touches MLflow (see :mod:`pipelines.bench_runs` for the benchmark runs).
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipelines.core.schema import STATUS_EMPTY, STATUS_ERROR, STATUS_OK
from pipelines.core.wer import normalize, word_error_rate

#: The per-file timing columns of the schema (wall seconds spent on the file in each stage).
STAGE_COLUMNS = {"decode": "decode_s", "vad": "vad_s", "transcribe": "transcribe_s"}

SEGMENT_FIELDS = ("start", "end", "text", "avg_logprob", "compression_ratio", "no_speech_prob", "temperature")
WORD_FIELDS = ("word", "start", "end", "probability")


# ---------------------------------------------------------------------------------------------------- loading


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


# ---------------------------------------------------------------------------------------------------- summaries


def status_breakdown(files: pd.DataFrame) -> pd.DataFrame:
    """Files per ``status`` (``ok``, ``empty``, ``error`` first, then any other value).

    Columns: ``files``, ``share`` (0..1 of all files), ``audio_h`` (hours of decoded audio; error rows usually have
    none).
    """
    order = [STATUS_OK, STATUS_EMPTY, STATUS_ERROR]
    status = files["status"].fillna("unknown")
    grouped = files.assign(status=status).groupby("status", sort=False)
    out = pd.DataFrame({"files": grouped.size(), "audio_h": grouped["duration_s"].sum(min_count=1) / 3600})
    out = out.reindex(order + sorted(set(out.index) - set(order)), fill_value=0)
    out["files"] = out["files"].astype("int64")
    out["audio_h"] = out["audio_h"].fillna(0.0)
    out.insert(1, "share", out["files"] / max(len(files), 1))
    out.index.name = "status"
    return out


def error_rows(files: pd.DataFrame) -> pd.DataFrame:
    """The error rows, with what a person needs to act on them: ``id``, ``audio_filepath``, ``error_type``,
    ``error_message``, ``attempts``."""
    cols = [c for c in ("id", "audio_filepath", "error_type", "error_message", "attempts") if c in files]
    return files.loc[files["status"] == STATUS_ERROR, cols].reset_index(drop=True)


def error_breakdown(files: pd.DataFrame) -> pd.DataFrame:
    """Error rows per ``error_type``: ``files`` and one ``example`` message, most frequent first."""
    errors = error_rows(files)
    if errors.empty:
        return pd.DataFrame({"files": pd.Series(dtype="int64"), "example": pd.Series(dtype=object)},
                            index=pd.Index([], name="error_type"))
    grouped = errors.assign(error_type=errors["error_type"].fillna("unknown")).groupby("error_type")
    out = pd.DataFrame({"files": grouped.size(), "example": grouped["error_message"].first()})
    return out.sort_values("files", ascending=False)


def audio_summary(files: pd.DataFrame) -> pd.Series:
    """Corpus totals: ``files``, ``ok``, ``empty``, ``error``, ``audio_h`` (all decoded audio), ``audio_h_ok``,
    ``words`` (tokens in all transcripts), and over ``ok`` files ``words_per_file_mean``,
    ``words_per_file_median`` and ``words_per_min`` (all words / all minutes)."""
    ok = files[files["status"] == STATUS_OK]
    minutes_ok = ok["duration_s"].sum() / 60
    return pd.Series({
        "files": len(files),
        "ok": int((files["status"] == STATUS_OK).sum()),
        "empty": int((files["status"] == STATUS_EMPTY).sum()),
        "error": int((files["status"] == STATUS_ERROR).sum()),
        "audio_h": files["duration_s"].sum() / 3600,
        "audio_h_ok": ok["duration_s"].sum() / 3600,
        "words": int(files["n_words"].sum()),
        "words_per_file_mean": ok["n_words"].mean() if len(ok) else np.nan,
        "words_per_file_median": ok["n_words"].median() if len(ok) else np.nan,
        "words_per_min": ok["n_words"].sum() / minutes_ok if minutes_ok else np.nan,
    }, dtype=object)


def language_stats(files: pd.DataFrame) -> pd.DataFrame:
    """Per ``language`` of the non-error rows that have one (empty rows have none): ``files``, ``audio_h``,
    ``share`` of those files, and the mean and minimum ``language_probability`` (1.0 where the language was
    given rather than detected). Most files first."""
    known = files[(files["status"] != STATUS_ERROR) & files["language"].notna()]
    if known.empty:
        return pd.DataFrame(columns=["files", "audio_h", "share", "probability_mean", "probability_min"],
                            index=pd.Index([], name="language"))
    grouped = known.groupby("language")
    out = pd.DataFrame({
        "files": grouped.size(),
        "audio_h": grouped["duration_s"].sum() / 3600,
        "probability_mean": grouped["language_probability"].mean(),
        "probability_min": grouped["language_probability"].min(),
    })
    out.insert(2, "share", out["files"] / len(known))
    return out.sort_values("files", ascending=False)


def timing_summary(files: pd.DataFrame) -> pd.DataFrame:
    """Wall time per stage (rows ``decode``, ``vad``, ``transcribe``), from the per-file ``*_s`` columns.

    Columns: ``files`` (rows with a time for the stage), ``total_s``, ``mean_s``, ``median_s``, ``p95_s``,
    ``max_s``, ``share`` (of the three stages' total) and ``s_per_audio_s`` (stage seconds per second of audio
    over the rows with both; the stage's real-time factor, lower is faster).

    These are the seconds each file spent in each stage summed over files; with several actors working at once
    they add up to more than the job's wall time (see ``_runs/<run_id>.json`` for that).
    """
    rows = {}
    for stage, column in STAGE_COLUMNS.items():
        times = files[column].dropna() if column in files else pd.Series(dtype=float)
        both = files.loc[times.index, "duration_s"].dropna() if len(times) else pd.Series(dtype=float)
        audio_s = both.sum()
        rows[stage] = {
            "files": len(times),
            "total_s": times.sum(),
            "mean_s": times.mean() if len(times) else np.nan,
            "median_s": times.median() if len(times) else np.nan,
            "p95_s": times.quantile(0.95) if len(times) else np.nan,
            "max_s": times.max() if len(times) else np.nan,
            "s_per_audio_s": times.loc[both.index].sum() / audio_s if audio_s else np.nan,
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    total = out["total_s"].sum()
    out.insert(6, "share", out["total_s"] / total if total else np.nan)
    out.index.name = "stage"
    return out


# ---------------------------------------------------------------------------------------------------- WER


def _scored(files: pd.DataFrame) -> pd.DataFrame:
    """Rows with a non-blank reference and a hypothesis (``ok`` or ``empty``; an empty one scores as deletions)."""
    has_ref = files["reference"].fillna("").astype(str).str.strip().astype(bool) if "reference" in files \
        else pd.Series(False, index=files.index)
    return files[has_ref & files["status"].isin([STATUS_OK, STATUS_EMPTY])]


def wer_per_file(files: pd.DataFrame) -> pd.DataFrame:
    """Word error rate of each file that has a ``reference`` and is not an error row.

    Both sides go through Whisper's English normaliser (:func:`pipelines.core.wer.normalize`). Columns: ``id``,
    ``folder``, ``status``, ``ref_words`` and ``hyp_words`` (normalised word counts), ``wer`` (0..1+, NaN where
    the normalised reference is empty), ``reference``, ``text``. Worst first.
    """
    scored = _scored(files)
    rows = []
    for row in scored.itertuples(index=False):
        ref, hyp = normalize(row.reference), normalize(row.text if isinstance(row.text, str) else "")
        try:
            wer = word_error_rate([row.reference], [row.text if isinstance(row.text, str) else ""])
        except ValueError:  # the reference normalises to nothing
            wer = np.nan
        rows.append({"id": row.id, "folder": row.folder, "status": row.status, "ref_words": len(ref.split()),
                     "hyp_words": len(hyp.split()), "wer": wer, "reference": row.reference, "text": row.text})
    columns = ["id", "folder", "status", "ref_words", "hyp_words", "wer", "reference", "text"]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values("wer", ascending=False, na_position="last").reset_index(drop=True)


def wer_per_folder(files: pd.DataFrame, folder_depth: Optional[int] = None) -> pd.DataFrame:
    """Corpus WER per folder of ``audio_filepath`` (total edits / total reference words of its files, so long
    files weigh more), plus an ``(all)`` row over every scored file.

    Args:
        files: a :func:`files_frame`.
        folder_depth: group by the first ``folder_depth`` components of the folder (``1``: ``an4`` rather than
            ``an4/fjlp``); None keeps the ``folder`` column as it is.

    Columns: ``files``, ``ref_words``, ``wer``. Empty when no file has a reference.
    """
    scored = _scored(files)
    columns = ["files", "ref_words", "wer"]
    if scored.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="folder"))
    folders = scored["folder"] if folder_depth is None else scored["audio_filepath"].map(
        lambda p: folder_of(p, folder_depth))
    rows = {}
    for name, group in list(scored.groupby(folders, sort=True)) + [("(all)", scored)]:
        refs = group["reference"].astype(str).tolist()
        hyps = group["text"].fillna("").astype(str).tolist()
        try:
            wer = word_error_rate(refs, hyps)
        except ValueError:
            wer = np.nan
        rows[name] = {"files": len(group), "ref_words": sum(len(normalize(r).split()) for r in refs), "wer": wer}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    out.index.name = "folder"
    return out


# ---------------------------------------------------------------------------------------------------- hallucinations


@dataclass(frozen=True)
class HallucinationRule:
    """When a segment looks like a hallucination. A segment is flagged when ANY of these holds (each is a column
    ``flag_<name>`` in :func:`mark_hallucinations`):

    - ``compression``: ``compression_ratio > max_compression_ratio`` (2.4, openai/whisper's threshold): the text
      gzips too well, i.e. it repeats itself.
    - ``no_speech``: ``avg_logprob < min_avg_logprob`` (-1.0) AND ``no_speech_prob > max_no_speech_prob`` (0.6):
      Whisper's own "this was silence" test, yet text was kept.
    - ``too_fast``: more than ``max_words_per_s`` (6) words per second over a segment of at least
      ``min_words_for_rate`` (3) words; people speak about 2-4.
    - ``too_slow``: fewer than ``min_words_per_s`` (0.3) words per second over a segment of at least
      ``min_slow_duration_s`` (10 s): a few words stretched over music or silence ("Thank you.").
    - ``repeated_ngram``: some ``ngram``-word sequence (3) occurs more than ``max_ngram_repeats`` (2) times in the
      segment (lower-cased words, punctuation dropped): a decoding loop.
    - ``repeats_previous``: the same text (normalised) as the previous segment of the file, at least
      ``min_words_for_repeat`` (3) words long.
    """

    max_compression_ratio: float = 2.4
    min_avg_logprob: float = -1.0
    max_no_speech_prob: float = 0.6
    max_words_per_s: float = 6.0
    min_words_for_rate: int = 3
    min_words_per_s: float = 0.3
    min_slow_duration_s: float = 10.0
    ngram: int = 3
    max_ngram_repeats: int = 2
    min_words_for_repeat: int = 3

    #: the flag names, in the order they are tested
    FLAGS = ("compression", "no_speech", "too_fast", "too_slow", "repeated_ngram", "repeats_previous")

    def describe(self) -> str:
        """The rule in words, with this instance's thresholds (for notebooks and reports)."""
        return (
            "A segment is flagged as a likely hallucination when any of these holds:\n"
            f"  compression:      compression_ratio > {self.max_compression_ratio} (repetitive text)\n"
            f"  no_speech:        avg_logprob < {self.min_avg_logprob} and no_speech_prob > "
            f"{self.max_no_speech_prob} (Whisper's silence test)\n"
            f"  too_fast:         > {self.max_words_per_s} words/s over >= {self.min_words_for_rate} words\n"
            f"  too_slow:         < {self.min_words_per_s} words/s over a segment >= {self.min_slow_duration_s} s\n"
            f"  repeated_ngram:   a {self.ngram}-word sequence occurs > {self.max_ngram_repeats} times in the "
            "segment\n"
            f"  repeats_previous: same text as the previous segment (>= {self.min_words_for_repeat} words)"
        )


_WORD_RE = re.compile(r"[\w']+")


def max_ngram_count(text: str, n: int) -> int:
    """How often the most frequent ``n``-word sequence occurs in ``text`` (lower-cased ``[\\w']+`` words;
    0 when the text has fewer than ``n`` words)."""
    words = _WORD_RE.findall((text or "").lower())
    grams: Iterable[tuple[str, ...]] = zip(*(words[i:] for i in range(n)))
    counts = Counter(grams)
    return max(counts.values(), default=0)


def mark_hallucinations(segments: pd.DataFrame, rule: HallucinationRule = HallucinationRule()) -> pd.DataFrame:
    """Every segment of a :func:`segments_frame` with the rule's verdicts added: one boolean column
    ``flag_<name>`` per test of ``rule`` (see :class:`HallucinationRule`), ``flagged`` (any of them) and
    ``reasons`` (the names that fired, comma-separated; ``""`` when none)."""
    out = segments.copy()
    wps = out["words_per_s"]
    out["flag_compression"] = out["compression_ratio"] > rule.max_compression_ratio
    out["flag_no_speech"] = (out["avg_logprob"] < rule.min_avg_logprob) & \
        (out["no_speech_prob"] > rule.max_no_speech_prob)
    out["flag_too_fast"] = (out["n_words"] >= rule.min_words_for_rate) & (wps > rule.max_words_per_s)
    out["flag_too_slow"] = (out["duration_s"] >= rule.min_slow_duration_s) & \
        (out["n_words"] / out["duration_s"].where(out["duration_s"] > 0) < rule.min_words_per_s)
    out["flag_repeated_ngram"] = out["text"].map(lambda t: max_ngram_count(t, rule.ngram)) > rule.max_ngram_repeats
    norm = out["text"].map(lambda t: " ".join(_WORD_RE.findall(t.lower())))
    ordered = out.sort_values(["file_id", "segment"])
    previous = norm.loc[ordered.index].groupby(ordered["file_id"]).shift(1)
    out["flag_repeats_previous"] = (norm == previous.reindex(out.index)) & \
        (out["n_words"] >= rule.min_words_for_repeat)
    flag_cols = [f"flag_{name}" for name in rule.FLAGS]
    out[flag_cols] = out[flag_cols].fillna(False).astype(bool)
    out["flagged"] = out[flag_cols].any(axis=1)
    out["reasons"] = [",".join(name for name, hit in zip(rule.FLAGS, hits) if hit)
                      for hits in out[flag_cols].itertuples(index=False)]
    return out


def flag_hallucinations(segments: pd.DataFrame, rule: HallucinationRule = HallucinationRule()) -> pd.DataFrame:
    """Only the segments :func:`mark_hallucinations` flags, with their ``reasons``."""
    marked = mark_hallucinations(segments, rule)
    return marked[marked["flagged"]].reset_index(drop=True)
