"""Stitching: chunk results from several files, interleaved in one batch, back to per-file transcripts."""

from __future__ import annotations

import random

from pipelines.core.schema import Segment, Word
from pipelines.core.stitch import stitch, stitch_file
from pipelines.core.transcriber import Chunk, ChunkResult


def _seg(start, end, text):
    words = tuple(Word(w, start + i * 0.3, start + i * 0.3 + 0.25, 0.9) for i, w in enumerate(text.split()))
    return Segment(0, start, end, " " + text, -0.2, 1.1, 0.01, 0.0, words)


def test_interleaved_chunks_are_grouped_ordered_and_offset():
    results = [
        ChunkResult("a", 0, 0.0, 30.0, "en", 1.0, (_seg(0.0, 4.0, "alpha one"), _seg(5.0, 29.0, "alpha two"))),
        ChunkResult("b", 0, 2.0, 10.0, "en", 1.0, (_seg(0.5, 3.0, "bravo"),)),
        ChunkResult("a", 1, 31.5, 20.0, "en", 1.0, (_seg(1.0, 6.0, "alpha three"),)),
        ChunkResult("a", 2, 60.0, 5.0, "en", 1.0, (_seg(0.0, 9.0, "alpha four"),)),  # runs past the end
    ]
    random.Random(0).shuffle(results)
    out = stitch(results, {"a": 62.0, "b": 12.0, "c": 3.0})
    a = out["a"]
    assert a.text == "alpha one alpha two alpha three alpha four"
    assert [s.id for s in a.segments] == [0, 1, 2, 3]
    assert [s.start for s in a.segments] == [0.0, 5.0, 32.5, 60.0]
    assert a.segments[2].end == 37.5 and a.segments[2].words[0].start == 32.5
    assert a.segments[3].end == 62.0  # clipped to the file
    starts = [s.start for s in a.segments]
    assert starts == sorted(starts)
    assert out["b"].segments[0].start == 2.5 and out["b"].text == "bravo"
    assert out["c"].status == "empty" and out["c"].segments == ()


def test_stitched_real_chunks_match_file_time(transcriber, corpus):
    """Chunks from two real files in one batch: each file's segments come back in its own time."""
    from pipelines.core.audio import decode_audio

    jfk = decode_audio(corpus / "jfk" / "jfk.flac").samples
    lj = decode_audio(next((corpus / "ljspeech").glob("LJ001-0001.wav"))).samples
    # cut JFK in two chunks at 5 s; put the LJ clip between them in the batch
    chunks = [Chunk("jfk", 1, 5.0, jfk[5 * 16000:]), Chunk("lj", 0, 0.0, lj), Chunk("jfk", 0, 0.0, jfk[:5 * 16000])]
    results = transcriber.transcribe_chunks(chunks)
    out = stitch(results, {"jfk": len(jfk) / 16000, "lj": len(lj) / 16000})
    jfk_t = out["jfk"]
    assert "my fellow americans" in jfk_t.text.lower()
    assert jfk_t.segments[0].start < 5.0 and jfk_t.segments[-1].start >= 5.0
    ends = [w.end for s in jfk_t.segments for w in s.words]
    assert ends == sorted(ends) and ends[-1] <= len(jfk) / 16000
    assert "printing" in out["lj"].text.lower()


def test_stitch_file_without_chunks_keeps_given_language():
    t = stitch_file([], 4.0, language="fr", language_probability=0.9)
    assert t.status == "empty" and t.language == "fr" and t.duration_s == 4.0
