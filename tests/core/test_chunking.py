"""VAD chunking: chunk offsets and bounds on real long-form speech and synthetic silence."""

from __future__ import annotations

import numpy as np

from pipelines.config import ChunkingConfig
from pipelines.core.audio import decode_audio
from pipelines.core.chunking import ChunkSpan, SpeechSpan, chunk_audio, merge_speech, slice_chunk

CFG = ChunkingConfig(max_chunk_s=30.0)
RATE = 16000


def test_merge_speech_packs_runs_into_30s_chunks():
    speech = [SpeechSpan(int(s * RATE), int(e * RATE)) for s, e in [(1, 10), (12, 25), (26, 29), (31, 40), (70, 75)]]
    chunks = merge_speech(speech, 80 * RATE, CFG)
    assert chunks == [ChunkSpan(1.0, 28.0), ChunkSpan(31.0, 9.0), ChunkSpan(70.0, 5.0)]
    assert all(c.duration_s <= CFG.max_chunk_s for c in chunks)


def test_short_file_with_speech_is_one_whole_chunk():
    assert merge_speech([SpeechSpan(8000, 16000)], 5 * RATE, CFG) == [ChunkSpan(0.0, 5.0)]
    assert merge_speech([], 5 * RATE, CFG) == []


def test_silence_and_noise_free_signal_have_no_speech():
    assert chunk_audio(np.zeros(10 * RATE, np.float32), CFG) == []
    t = np.arange(10 * RATE) / RATE
    assert chunk_audio((0.2 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), CFG) == []


def test_long_form_speech_chunks_in_order_within_bounds(corpus):
    path = next((corpus / "ljspeech").glob("*_concat.flac"))
    audio = decode_audio(path)
    chunks = chunk_audio(audio.samples, CFG)
    assert len(chunks) >= audio.duration_s / CFG.max_chunk_s
    ends = 0.0
    for c in chunks:
        assert c.offset_s >= ends - 1e-6 and 0 < c.duration_s <= CFG.max_chunk_s
        ends = c.offset_s + c.duration_s
    assert ends <= audio.duration_s + 1e-6
    speech_s = sum(c.duration_s for c in chunks)
    assert speech_s > 0.8 * audio.duration_s  # continuous read speech: little is cut away
    piece = slice_chunk(audio.samples, chunks[1], RATE)
    start = int(round(chunks[1].offset_s * RATE))
    assert np.array_equal(piece[:100], audio.samples[start:start + 100])


def test_without_vad_fixed_windows():
    cfg = ChunkingConfig(vad_filter=False, max_chunk_s=30.0)
    chunks = chunk_audio(np.zeros(65 * RATE, np.float32), cfg)
    assert [(c.offset_s, c.duration_s) for c in chunks] == [(0.0, 30.0), (30.0, 30.0), (60.0, 5.0)]
