"""The dropped-speech guard and the quality measures (issue 15): coverage arithmetic, the VAD speech a chunk
carries, the guard decoding a stretch Whisper skipped, and the quality columns of a row (schema 1.2)."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

import pipelines.core.transcriber as transcriber_module
from pipelines.core.audio import decode_audio
from pipelines.core.chunking import chunk_audio, detect_speech
from pipelines.core.coverage import Coverage, chunk_coverage, file_quality, gaps, merge
from pipelines.core.engine import Engine, FileSpec, Outcome, prepare
from pipelines.core.rows import Provenance, Source, TranscriptRow, rows_to_table
from pipelines.core.schema import SCHEMA_VERSION, TRANSCRIPT_SCHEMA, Segment, Word
from pipelines.core.transcriber import Chunk, text_before
from pipelines.core.wer import normalize

LJ = "ljspeech/LJ001-0001.wav"  # 9.7 s: "Printing, in the only sense with which we are at present concerned, ..."


def _seg(start, end, words):
    ws = tuple(Word(" " + w, a, b, 0.9) for w, a, b in words)
    return Segment(0, start, end, "".join(w.word for w in ws), -0.2, 1.3, 0.01, 0.0, ws)


# ------------------------------------------------------------------------------------------------ the arithmetic
def test_merge_and_gaps():
    assert merge([(3.0, 4.0), (0.0, 1.0), (0.5, 2.0), (5.0, 5.0), (7.0, 6.0)]) == [(0.0, 2.0), (3.0, 4.0), (5.0, 5.0)]
    speech = [(0.0, 10.0), (12.0, 20.0)]
    words = [(0.2, 0.6), (0.6, 5.0), (14.0, 15.0)]
    found = gaps(speech, words, 20.0)
    # between 5.0 and 14.0: speech 5.5-10 and 12-13.5 (0.5 s of pad beside each word); after 15.0: 15.5-20 (no pad
    # at the chunk's edge); before the first word, 0-0.2 lies within its pad
    assert [(g.start, g.end) for g in found] == [(5.0, 14.0), (15.0, 20.0)]
    assert found[0].speech == ((5.5, 10.0), (12.0, 13.5)) and found[0].speech_s == pytest.approx(6.0)
    assert found[0].span == (5.5, 13.5) and found[1].speech_s == pytest.approx(4.5)
    assert gaps(speech, [], 20.0)[0].speech_s == pytest.approx(18.0)


def test_chunk_coverage_counts_uncovered_stretches_and_words_outside_speech():
    segs = [_seg(0.0, 5.0, [("one", 0.2, 1.0), ("two", 1.0, 5.0), ("near", 10.3, 10.3)]),
            _seg(14.0, 16.0, [("far", 11.0, 11.5)])]
    cov = chunk_coverage([(0.0, 10.0)], segs, 16.0, 2.0)
    assert cov.speech_s == 10.0 and cov.uncovered == ((5.5, 9.8),)  # 4.3 s of speech without words
    assert cov.covered_speech_s == pytest.approx(5.7)
    assert cov.words_outside_speech == 1  # "far" lies in silence, 1 s from the speech; "near" is within 0.5 s
    assert chunk_coverage([(0.0, 10.0)], segs, 16.0, 5.0).uncovered == ()  # under the threshold: not listed


def test_file_quality_in_file_time():
    covs = [(0.0, Coverage(10.0, 9.0, (), 0), 0), (30.0, Coverage(8.0, 5.0, ((1.0, 4.0),), 2), 1)]
    segs = [_seg(0.0, 5.0, [("a", 0.0, 1.0)]), replace(_seg(30.0, 31.0, [("b", 30.0, 31.0)]), compression_ratio=2.6)]
    q = file_quality(covs, segs)
    assert (q.speech_s, q.covered_speech_s, q.uncovered_spans) == (18.0, 14.0, ((31.0, 34.0),))
    assert q.redecoded_spans == 1 and q.words_outside_speech == 2 and q.max_compression_ratio == 2.6
    unknown = file_quality([(0.0, None, 0)], segs)  # no VAD: the speech measures are unknown
    assert unknown.speech_s is None and unknown.words_outside_speech is None and unknown.max_compression_ratio == 2.6
    empty = file_quality([], [])
    assert empty.speech_s == 0.0 and empty.uncovered_spans == () and empty.max_compression_ratio is None


def test_text_before_takes_whole_words_up_to_the_time():
    segs = [_seg(0.0, 9.0, [("ask", 0.0, 0.4), ("not", 0.4, 0.8), ("what", 5.0, 5.4)])]
    assert text_before(segs, 0.8) == " ask not"


# ------------------------------------------------------------------------------------------- speech per chunk
def test_chunks_carry_their_vad_speech_in_chunk_time(corpus, job_config):
    row = "ljspeech/LJ001-0013_to_0032_concat.flac"  # 2.5 min: several chunks
    audio = decode_audio(corpus / row).samples
    spans = chunk_audio(audio, job_config.chunking)
    assert len(spans) > 3
    total = sum((b.end - b.start) / 16000 for b in detect_speech(audio, job_config.chunking))
    for span in spans:
        runs = span.speech
        assert runs and all(0.0 <= a < b <= span.duration_s + 1e-3 for a, b in runs)
        assert list(runs) == sorted(runs)
    assert sum(b - a for s in spans for a, b in s.speech) == pytest.approx(total, abs=0.05)
    prepared = prepare(corpus / row, FileSpec("c", row), job_config.chunking)
    assert prepared.chunk_speech == tuple(s.speech for s in spans) and prepared.speech_s == pytest.approx(total, 0.01)
    assert all(c.speech == s.speech for c, s in zip(prepared.chunks(), spans))
    no_vad = job_config.chunking.model_copy(update={"vad_filter": False})
    assert prepare(corpus / row, FileSpec("c", row), no_vad).chunk_speech is None


# ------------------------------------------------------------------------------------------------- the guard
def _drop_tail_once(monkeypatch, after_s):
    """Make the first decode of each chunk stop having words after ``after_s`` and claim it finished, as Whisper
    does when it closes a window early (a timestamp, then end-of-text) with speech left."""
    settle = transcriber_module.settle
    first = set()

    def early_end(p, segs, start, dur, seek_s, follow, window, position, opts, collected, stats):
        if p.origin not in first and p.start_s == 0.0:
            first.add(p.origin)
            kept = []
            for seg in segs:
                words = tuple(w for w in seg.words if w.end <= after_s)
                if words:
                    kept.append(Segment(seg.id, seg.start, words[-1].end, "".join(w.word for w in words),
                                        seg.avg_logprob, seg.compression_ratio, seg.no_speech_prob, seg.temperature,
                                        words))
            segs, seek_s, follow = kept, None, None
        return settle(p, segs, start, dur, seek_s, follow, window, position, opts, collected, stats)

    monkeypatch.setattr(transcriber_module, "settle", early_end)


def test_guard_decodes_a_skipped_stretch_again(transcriber, corpus, job_config, monkeypatch):
    """A decode that ends 5 s before the clip does (speech left) is caught by the VAD comparison: the rest is
    decoded again alone, conditioned on the text before it, and the words come back; the chunk reports it."""
    prepared = prepare(corpus / LJ, FileSpec("lj", LJ), job_config.chunking)
    (chunk,) = prepared.chunks()
    _drop_tail_once(monkeypatch, 4.0)
    (res,) = transcriber.transcribe_chunks([chunk])
    text = normalize(" ".join(s.text for s in res.segments))
    assert "arts and crafts" in text and text.startswith("printing")
    assert res.redecoded == 1 and transcriber.last_stats["redecoded"] == 1
    assert res.coverage.uncovered == () and res.coverage.covered_speech_s > 0.9 * res.coverage.speech_s
    starts = [w.start for s in res.segments for w in s.words]
    assert starts == sorted(starts)  # the re-decoded words follow the kept ones


def test_without_the_guard_the_loss_is_reported(transcriber, corpus, job_config, monkeypatch):
    prepared = prepare(corpus / LJ, FileSpec("lj", LJ), job_config.chunking)
    off = job_config.decoding.model_copy(update={"redecode_uncovered": False})
    _drop_tail_once(monkeypatch, 4.0)
    (out,) = Engine(job_config.model, off, transcriber).transcribe_isolated([prepared], off)
    q = out.transcript.quality
    assert "arts and crafts" not in normalize(out.transcript.text) and q.redecoded_spans == 0
    (start, end), = q.uncovered_spans
    assert 3.0 < start < 4.6 and end > 9.0 and q.covered_speech_s < q.speech_s - 4.0


def test_guard_needs_known_speech(transcriber, corpus, job_config, monkeypatch):
    """Chunks built without VAD speech (None) are not guarded and have no coverage."""
    audio = decode_audio(corpus / LJ).samples
    _drop_tail_once(monkeypatch, 4.0)
    (res,) = transcriber.transcribe_chunks([Chunk("lj", 0, 0.0, audio)])
    assert res.coverage is None and res.redecoded == 0 and transcriber.last_stats["redecoded"] == 0


# -------------------------------------------------------------------------------------------- the row columns
def test_row_carries_the_quality_columns(transcriber, corpus, job_config):
    prepared = prepare(corpus / LJ, FileSpec("lj", LJ), job_config.chunking)
    (out,) = Engine(job_config.model, job_config.decoding, transcriber).transcribe_isolated([prepared])
    prov = Provenance("tiny", "int8", "f" * 16, "run")
    row = TranscriptRow.transcribed(Source("lj", LJ), prepared, out, prov)
    assert row.speech_s == pytest.approx(prepared.speech_s) and 0.9 * row.speech_s < row.covered_speech_s
    assert row.uncovered_spans == () and row.redecoded_spans == 0 and row.words_outside_speech == 0
    assert 0.5 < row.max_compression_ratio < 2.4 and row.schema_version == SCHEMA_VERSION
    failed = TranscriptRow.transcribed(Source("x", "x.wav"), prepared, Outcome("x"), prov)
    lossy = file_quality([(0.0, Coverage(9.0, 4.0, ((4.5, 9.5),), 0), 1)], out.transcript.segments)
    lost = TranscriptRow.transcribed(Source("l", "l.wav"), prepared,
                                     Outcome("l", replace(out.transcript, quality=lossy)), prov)
    table = rows_to_table([row, failed, lost])
    assert table.schema.equals(TRANSCRIPT_SCHEMA, check_metadata=False)
    got = table.to_pylist()
    assert got[0]["uncovered_spans"] == [] and got[1]["uncovered_spans"] is None and got[1]["speech_s"] is None
    assert got[2]["uncovered_spans"] == [{"start": 4.5, "end": 9.5}] and got[2]["redecoded_spans"] == 1
    copy = TranscriptRow.copy_of(got[2], Source("l2", "l2.wav"), "run2")
    assert copy.uncovered_spans == ({"start": 4.5, "end": 9.5},) and copy.to_dict()["speech_s"] == 9.0


def test_old_parts_without_quality_columns_still_read():
    from pipelines.io.output import conform

    new = {"speech_s", "covered_speech_s", "uncovered_spans", "redecoded_spans", "max_compression_ratio",
           "words_outside_speech"}
    old_schema = pa.schema([f for f in TRANSCRIPT_SCHEMA if f.name not in new])
    old = pa.Table.from_pylist([{"id": "a", "status": "ok", "text": "hi", "schema_version": "1.1"}], old_schema)
    table = conform(old)
    assert table.schema.equals(TRANSCRIPT_SCHEMA, check_metadata=False)
    row = table.to_pylist()[0]
    assert row["text"] == "hi" and all(row[name] is None for name in new)
