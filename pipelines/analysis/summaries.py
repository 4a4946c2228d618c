"""Corpus summaries of a :func:`~pipelines.analysis.frames.files_frame`: status, errors, audio and words,
languages, and per-stage timings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.core.schema import STATUS_EMPTY, STATUS_ERROR, STATUS_OK

#: The per-file timing columns of the schema (wall seconds spent on the file in each stage).
STAGE_COLUMNS = {"decode": "decode_s", "vad": "vad_s", "transcribe": "transcribe_s"}


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


def coverage_summary(files: pd.DataFrame) -> pd.DataFrame:
    """The engine's quality columns per transcribed file (schema 1.2; older rows have them null and are left out):
    ``speech_s`` (VAD speech, s), ``covered_speech_s`` (of it, within 0.5 s of a word), ``uncovered_share``
    (``1 - covered / speech``), ``n_uncovered`` (stretches still without words after the dropped-speech guard:
    should be 0), ``redecoded_spans``, ``max_compression_ratio`` (> 2.4: repeated text, openai/whisper's
    threshold) and ``words_outside_speech`` (words placed in silence), sorted worst first.

    Returns:
        one row per file with ``speech_s`` known, indexed by ``id``; empty when no row has it.
    """
    columns = ["speech_s", "covered_speech_s", "uncovered_spans", "redecoded_spans", "max_compression_ratio",
               "words_outside_speech"]
    if "speech_s" not in files or files["speech_s"].isna().all():
        return pd.DataFrame(columns=["uncovered_share", "n_uncovered"] + columns)
    out = files.loc[files["speech_s"].notna(), ["id"] + [c for c in columns if c in files]].set_index("id")
    out["n_uncovered"] = [len(s) if s is not None else 0 for s in out.get("uncovered_spans", [None] * len(out))]
    speech = out["speech_s"].where(out["speech_s"] > 0)
    out["uncovered_share"] = (1 - out["covered_speech_s"] / speech).clip(lower=0).fillna(0.0)
    return out.drop(columns=["uncovered_spans"], errors="ignore").sort_values(
        ["n_uncovered", "uncovered_share"], ascending=False)
