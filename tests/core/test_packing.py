"""Packing short chunks into shared windows: the plan, the window audio, and splitting words back."""

from __future__ import annotations

import numpy as np

from pipelines.core.audio import decode_audio
from pipelines.core.packing import build_window, plan_windows, split_window
from pipelines.core.schema import Segment, Word
from pipelines.core.transcriber import Chunk


def test_plan_fits_windows_and_uses_every_chunk_once():
    durations = [2.5, 3.0, 12.0, 9.0, 28.0, 31.0, 1.0, 4.0]
    plan = plan_windows(durations, 30.0, 1.0)
    assert sorted(i for w in plan for i in w) == list(range(len(durations)))
    for w in plan:
        if len(w) > 1:
            assert sum(durations[i] for i in w) + (len(w) - 1) * 1.0 <= 30.0
    assert [5] in plan  # longer than a window: alone
    assert len(plan) <= 4


def test_window_audio_layout():
    pieces = [np.ones(16000, np.float32), 2 * np.ones(8000, np.float32)]
    w = build_window([0, 1], pieces, 0.5)
    assert w.starts_s == (0.0, 1.5) and w.durations_s == (1.0, 0.5)
    assert w.samples.shape[0] == 16000 + 8000 + 8000
    assert w.samples[16000:24000].max() == 0 and w.samples[-1] == 2


def test_split_assigns_words_by_overlap_and_shifts_time():
    w = build_window([0, 1], [np.zeros(3 * 16000, np.float32), np.zeros(2 * 16000, np.float32)], 1.0)
    words = (Word(" one", 0.2, 0.8, 0.9), Word(" two", 2.0, 3.4, 0.9),  # stretched into the gap: still chunk 0
             Word(" three", 3.8, 4.5, 0.9), Word(" four", 4.6, 5.9, 0.9))
    seg = Segment(0, 0.0, 6.0, " one two three four", -0.1, 1.0, 0.01, 0.0, words)
    first, second = split_window([seg], w)
    assert [s.text for s in first] == [" one two"] and [s.text for s in second] == [" three four"]
    assert second[0].start == 0.0 and second[0].words[0].start == 0.0 and second[0].words[-1].end == 1.9
    assert first[0].words[-1].end == 3.0  # clipped to the chunk


def test_packed_real_clips_come_back_whole(transcriber, corpus):
    """Five an4 utterances share one window; each gets its own words, none is empty."""
    paths = sorted((corpus / "an4" / "fjlp").glob("*.flac"))[:5]
    chunks = [Chunk(p.name, 0, 0.0, decode_audio(p).samples, pack_group="fjlp") for p in paths]
    before = transcriber.chunks_seen
    results = transcriber.transcribe_chunks(chunks)
    assert transcriber.chunks_seen - before < len(chunks)  # fewer encoder windows than files
    for chunk, res in zip(chunks, results):
        assert res.key == chunk.key and res.segments, chunk.key
        for s in res.segments:
            assert 0 <= s.start <= s.end <= chunk.duration_s + 1e-6
            assert all(0 <= wd.start <= wd.end <= chunk.duration_s + 1e-6 for wd in s.words)
