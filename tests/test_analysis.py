"""pipelines.analysis on a real job output (five dev-corpus clips, a silent file and a missing one)."""

from __future__ import annotations

import math
import shutil

import fsspec
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from pipelines import analysis as an
from pipelines.core.wer import word_error_rate
from tests.conftest import JFK_PHRASE
from tests.transcripts_output import CLIPS, MISSING_ID, SILENT_ID, build_output


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory, job_config, transcriber):
    return build_output(tmp_path_factory.getbasetemp() / "transcripts", job_config, transcriber)


@pytest.fixture(scope="module")
def table(output_dir):
    return an.load_table(str(output_dir))


@pytest.fixture(scope="module")
def files(table):
    return an.files_frame(table)


@pytest.fixture(scope="module")
def segments(table):
    return an.segments_frame(table)


def by_id(frame: pd.DataFrame, row_id: str) -> pd.Series:
    return frame.set_index("id").loc[row_id]


def test_load_reads_every_part_and_skips_bookkeeping(output_dir, table, tmp_path):
    assert len(list(output_dir.glob("part-*.parquet"))) == 2  # rows_per_file=4: the rows span two parts
    copy = tmp_path / "out"
    shutil.copytree(output_dir, copy)
    for folder in ("_runs", ".hidden"):  # not part of the dataset
        (copy / folder).mkdir(exist_ok=True)
        (copy / folder / "x.parquet").write_bytes(b"not parquet")
    assert an.load_table(str(copy)).num_rows == table.num_rows == len(CLIPS) + 2
    assert sorted(table.column("id").to_pylist()) == sorted([*CLIPS, SILENT_ID, MISSING_ID])
    one_part = sorted(output_dir.glob("part-*.parquet"))[0]
    assert an.load_table(str(one_part), columns=["id"]).column_names == ["id"]


def test_load_through_fsspec_url(output_dir):
    """A URL goes through fsspec (as s3:// does); memory:// stands in for a bucket."""
    mem = fsspec.filesystem("memory")
    for part in output_dir.glob("part-*.parquet"):
        mem.pipe(f"/bucket/out/{part.name}", part.read_bytes())
    try:
        loaded = an.load_table("memory://bucket/out")
        assert loaded.num_rows == len(CLIPS) + 2
    finally:
        mem.rm("/bucket", recursive=True)


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such output folder"):
        an.load_table(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no .parquet part files"):
        an.load_table(str(tmp_path))


def test_files_frame(files):
    assert "segments" not in files
    jfk = by_id(files, "jfk/jfk.flac")
    assert jfk["status"] == "ok" and JFK_PHRASE in jfk["text"].lower()
    assert jfk["n_words"] == len(jfk["text"].split()) and jfk["n_segments"] >= 1
    assert jfk["words_per_min"] == pytest.approx(jfk["n_words"] / (jfk["duration_s"] / 60))
    assert jfk["folder"] == "jfk"
    assert by_id(files, "an4/fjlp/cen7-fjlp-b.flac")["folder"] == "an4/fjlp"
    assert by_id(files, SILENT_ID)[["status", "n_words", "n_segments"]].tolist() == ["empty", 0, 0]
    assert math.isnan(by_id(files, MISSING_ID)["words_per_min"])  # no duration


def test_folder_of():
    assert an.folder_of("an4/fjlp/x.flac") == "an4/fjlp"
    assert an.folder_of("an4/fjlp/x.flac", depth=1) == "an4"
    assert an.folder_of("x.flac") == "."
    assert an.folder_of(None) == "."
    assert an.folder_of("s3://bucket/a/b/c.wav", depth=2) == "s3://bucket/a"
    assert an.folder_of("/data/a/b.wav", depth=1) == "/data"


def test_segments_frame(table, files, segments):
    assert len(segments) == files["n_segments"].sum()
    assert set(segments["file_id"]) == set(files.loc[files["status"] == "ok", "id"])
    durations = files.set_index("id")["duration_s"]
    assert (segments["start"] >= 0).all() and (segments["end"] >= segments["start"]).all()
    assert (segments["end"] <= segments["file_id"].map(durations) + 1e-6).all()
    for _, group in segments.groupby("file_id"):
        assert group["segment"].tolist() == list(range(len(group)))
    jfk = segments[segments["file_id"] == "jfk/jfk.flac"]
    assert JFK_PHRASE in " ".join(jfk["text"]).lower()
    assert (segments["words_per_s"] > 0.2).all() and (segments["words_per_s"] < 6).all()  # real speech
    # each segment's values are those of the nested list in the table
    first = table.filter(pc.equal(table.column("id"), "jfk/jfk.flac")).column("segments")[0][0].as_py()
    row = jfk.iloc[0]
    assert (row["start"], row["end"], row["text"], row["avg_logprob"]) == \
        (first["start"], first["end"], first["text"], first["avg_logprob"])


def test_words_frame(table, segments):
    words = an.words_frame(table)
    assert len(words) == segments["n_timed_words"].sum() > 20
    for (file_id, seg), group in words.groupby(["file_id", "segment"]):
        assert group["word_index"].tolist() == list(range(len(group)))
        span = segments[(segments["file_id"] == file_id) & (segments["segment"] == seg)].iloc[0]
        assert group["start"].min() >= span["start"] - 1e-6 and group["end"].max() <= span["end"] + 1e-6
    jfk = words[words["file_id"] == "jfk/jfk.flac"]
    assert "country" in " ".join(jfk["word"]).lower()
    assert words["probability"].between(0, 1).all()


def test_status_and_errors(files):
    status = an.status_breakdown(files)
    assert status["files"].to_dict() == {"ok": len(CLIPS), "empty": 1, "error": 1}
    assert status["share"].sum() == pytest.approx(1.0)
    assert status.loc["empty", "audio_h"] == pytest.approx(2 / 3600, rel=1e-3)
    errors = an.error_rows(files)
    assert errors["id"].tolist() == [MISSING_ID]
    assert errors.loc[0, "error_type"] == "AudioDecodeError" and "nothing-here.flac" in errors.loc[0, "error_message"]
    breakdown = an.error_breakdown(files)
    assert breakdown.loc["AudioDecodeError", "files"] == 1
    assert an.error_breakdown(files[files["status"] != "error"]).empty


def test_audio_summary_and_languages(files):
    summary = an.audio_summary(files)
    assert summary["files"] == len(files) and (summary["ok"], summary["empty"], summary["error"]) == (5, 1, 1)
    assert summary["audio_h"] == pytest.approx(files["duration_s"].sum() / 3600)
    assert summary["words"] == files["n_words"].sum() > 40
    assert 60 < summary["words_per_min"] < 240  # read speech
    langs = an.language_stats(files)
    # the silent file too: an English-only model's language is known without decoding anything
    assert langs.loc["en", "files"] == len(CLIPS) + 1 and langs.loc["en", "share"] == 1.0
    assert an.language_stats(files[files["status"] == "error"]).empty


def test_timing_summary(files):
    timing = an.timing_summary(files)
    assert timing.index.tolist() == ["decode", "vad", "transcribe"]
    assert timing.loc["decode", "files"] == len(files)  # the error row has a decode time too
    assert timing.loc["transcribe", "total_s"] == pytest.approx(files["transcribe_s"].sum())
    assert timing["share"].sum() == pytest.approx(1.0)
    assert timing.loc["transcribe", "total_s"] > timing.loc["decode", "total_s"]
    assert 0 < timing.loc["transcribe", "s_per_audio_s"] < 10


def test_wer_per_file_and_folder(files):
    per_file = an.wer_per_file(files)
    assert set(per_file["id"]) == set(CLIPS)  # the error row (with a reference) and the silent one are left out
    jfk = per_file.set_index("id").loc["jfk/jfk.flac"]
    assert jfk["wer"] < 0.1 and jfk["ref_words"] == 22
    per_folder = an.wer_per_folder(files)
    assert per_folder.index.tolist() == ["an4/fjlp", "jfk", "ljspeech", "(all)"]
    lj = files[files["folder"] == "ljspeech"]
    assert per_folder.loc["ljspeech", "wer"] == pytest.approx(word_error_rate(lj["reference"], lj["text"]))
    assert per_folder.loc["(all)", "files"] == len(CLIPS)
    assert an.wer_per_folder(files, folder_depth=1).index.tolist() == ["an4", "jfk", "ljspeech", "(all)"]
    no_refs = files.assign(reference=None)
    assert an.wer_per_file(no_refs).empty and an.wer_per_folder(no_refs).empty


def test_empty_transcript_scores_as_deletions(files):
    silent = files[files["id"] == SILENT_ID].assign(reference="three words here")
    assert an.wer_per_file(silent)["wer"].tolist() == [1.0]


def _segment(file_id, seg, text, start, end, avg_logprob=-0.3, compression_ratio=1.2, no_speech_prob=0.05):
    return {"file_id": file_id, "segment": seg, "start": start, "end": end, "text": text, "avg_logprob": avg_logprob,
            "compression_ratio": compression_ratio, "no_speech_prob": no_speech_prob, "temperature": 0.0}


def synthetic_segments() -> pd.DataFrame:
    rows = [
        _segment("a", 0, " a normal sentence of read speech", 0.0, 2.5),                    # clean
        _segment("a", 1, " la la la la la la la la la la la la", 2.5, 6.0, compression_ratio=3.1),
        _segment("a", 2, " Thank you.", 6.0, 8.0, avg_logprob=-1.4, no_speech_prob=0.9),
        _segment("b", 0, " one two three four five six seven eight nine ten", 0.0, 1.0),      # 10 words/s
        _segment("b", 1, " Thank you.", 1.0, 25.0),                                           # 2 words in 24 s
        _segment("c", 0, " the cat sat on the mat, the cat sat on the mat, the cat sat on it", 0.0, 6.0),
        _segment("d", 0, " please hold the line", 0.0, 2.0),
        _segment("d", 1, " Please hold the line.", 2.0, 4.0),                                 # repeats segment 0
        _segment("d", 2, " Yes.", 4.0, 4.5),
        _segment("e", 0, " Yes.", 0.0, 0.5),                                                  # same text, other file
    ]
    frame = pd.DataFrame(rows)
    frame["duration_s"] = frame["end"] - frame["start"]
    frame["n_words"] = an.count_words(frame["text"])
    frame["n_timed_words"] = 0
    frame["words_per_s"] = frame["n_words"] / frame["duration_s"]
    return frame


def test_hallucination_rule_each_reason():
    marked = an.mark_hallucinations(synthetic_segments()).set_index(["file_id", "segment"])
    reasons = marked["reasons"].to_dict()
    assert reasons[("a", 0)] == ""
    assert "compression" in reasons[("a", 1)] and "repeated_ngram" in reasons[("a", 1)]
    assert reasons[("a", 2)] == "no_speech"
    assert reasons[("b", 0)] == "too_fast"
    assert reasons[("b", 1)] == "too_slow"
    assert reasons[("c", 0)] == "repeated_ngram"  # "the cat sat" three times
    assert reasons[("d", 0)] == "" and reasons[("d", 1)] == "repeats_previous"
    assert reasons[("d", 2)] == "" and reasons[("e", 0)] == ""
    assert marked["flagged"].sum() == 6
    flagged = an.flag_hallucinations(synthetic_segments())
    assert len(flagged) == 6 and flagged["reasons"].str.len().gt(0).all()


def test_hallucination_rule_thresholds_are_parameters():
    strict = an.HallucinationRule(max_compression_ratio=1.0)
    assert an.mark_hallucinations(synthetic_segments(), strict).set_index(["file_id", "segment"]) \
        .loc[("a", 0), "flag_compression"]
    text = strict.describe()
    assert "compression_ratio > 1.0" in text and "no_speech_prob > 0.6" in text


def test_real_speech_is_not_flagged(segments):
    marked = an.mark_hallucinations(segments)
    assert not marked["flagged"].any(), marked.loc[marked["flagged"], ["file_id", "reasons", "text"]]
    assert an.mark_hallucinations(segments.iloc[0:0])["flagged"].empty


def test_max_ngram_count():
    assert an.max_ngram_count("the cat sat, the cat sat; THE CAT SAT", 3) == 3
    assert an.max_ngram_count("two words", 3) == 0
    assert an.max_ngram_count("", 3) == 0


def test_frames_of_an_output_with_no_segments(files, table):
    """Only the error and silent rows: every frame is empty but well formed."""
    rows = table.filter(np.isin(table.column("id").to_numpy(zero_copy_only=False), [SILENT_ID, MISSING_ID]))
    assert an.segments_frame(rows).empty and an.words_frame(rows).empty
    assert "words_per_s" in an.segments_frame(rows) and "word_index" in an.words_frame(rows)
    sub = an.files_frame(rows)
    assert an.timing_summary(sub).loc["transcribe", "files"] == 1
    assert an.wer_per_folder(sub).empty


def test_coverage_summary(files):
    """The engine's quality columns, per transcribed file: speech found, all of it covered by words here."""
    cov = an.coverage_summary(files)
    assert set(cov.index) == set(CLIPS) | {SILENT_ID}  # the error row has no speech columns
    assert cov.loc[SILENT_ID, "speech_s"] == 0 and cov.loc[SILENT_ID, "uncovered_share"] == 0
    speech = cov.loc[list(CLIPS)]
    assert (speech["n_uncovered"] == 0).all() and (speech["uncovered_share"] < 0.2).all()
    assert (speech["speech_s"] > 0).all() and (speech["covered_speech_s"] <= speech["speech_s"] + 1e-6).all()
    assert an.coverage_summary(files[files["status"] == "error"]).empty
