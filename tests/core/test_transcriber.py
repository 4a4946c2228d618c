"""The transcriber on real speech: continuation after an early stop, prompts, silence, language detection."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import DecodingConfig, ModelConfig
from pipelines.core.audio import decode_audio
from pipelines.core.errors import ModelLoadError
from pipelines.core.transcriber import Chunk, Transcriber, batch_sizes
from tests.conftest import JFK


def _text(result):
    return "".join(s.text for s in result.segments).strip()


def test_decode_continues_after_an_unfinished_segment(transcriber, corpus):
    """tiny.en stops LJ002-0018 at <|5.04|><|5.04|>; like WhisperModel.transcribe, decoding resumes there."""
    audio = decode_audio(corpus / "ljspeech" / "LJ002-0018.wav")
    (res,) = transcriber.transcribe_chunks([Chunk("lj", 0, 0.0, audio.samples)])
    text = _text(res).lower()
    assert text.startswith("the inadequacy of the jail") and "juries of the city of london" in text
    starts = [s.start for s in res.segments]
    assert starts == sorted(starts) and res.segments[-1].end <= audio.duration_s + 0.01


def test_silence_is_flagged_by_no_speech_prob(transcriber):
    """Whisper's own no-speech test (no_speech_prob > 0.6 and avg_logprob < -1) lets tiny.en's classic "You" on
    pure silence through; the job's VAD stage keeps silence from the model, and the segment carries the signal."""
    (res,) = transcriber.transcribe_chunks([Chunk("s", 0, 0.0, np.zeros(16000 * 5, np.float32))])
    assert all(s.no_speech_prob > 0.6 for s in res.segments)


def test_per_call_decoding_and_prompt(transcriber):
    audio = decode_audio(JFK).samples
    greedy = DecodingConfig(beam_size=1, temperatures=(0.0,), word_timestamps=False)
    (res,) = transcriber.transcribe_chunks([Chunk("j", 0, 0.0, audio, prompt="Kennedy, inaugural address.")], greedy)
    assert "fellow americans" in _text(res).lower()
    assert all(s.words == () for s in res.segments) and all(s.temperature == 0.0 for s in res.segments)


def test_batch_results_in_input_order(transcriber, corpus):
    clips = [corpus / "ljspeech" / "LJ001-0001.wav", JFK, corpus / "librispeech" / "2412-153948-0000.flac"]
    chunks = [Chunk(str(i), 0, 0.0, decode_audio(p).samples) for i, p in enumerate(clips)]
    before = transcriber.calls
    results = transcriber.transcribe_chunks(chunks)
    assert [r.key for r in results] == ["0", "1", "2"]
    # three files in one round: one batch per worker (configs/local.yaml: 2 workers), not one call per file
    assert transcriber.calls - before == min(transcriber.workers, 3) < len(chunks) + transcriber.last_stats["resumed"]
    assert "printing" in _text(results[0]).lower() and "americans" in _text(results[1]).lower()


def test_multilingual_base_detects_english():
    tr = Transcriber(ModelConfig(name="bundled-base", cpu_threads=2), DecodingConfig(beam_size=1, word_timestamps=False))
    assert tr.multilingual
    (res,) = tr.transcribe_chunks([Chunk("j", 0, 0.0, decode_audio(JFK).samples)])
    assert res.language == "en" and res.language_probability > 0.8
    assert "country" in _text(res).lower()


def test_unknown_model_is_a_named_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load model"):
        Transcriber(ModelConfig(name=str(tmp_path / "no-model-here")), DecodingConfig())


def test_require_cuda_fails_without_a_gpu():
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        Transcriber(ModelConfig(device="cuda", require_cuda=True), DecodingConfig())


def test_batch_sizes_split_evenly_over_workers():
    assert batch_sizes(10, 8, 2) == [5, 5]  # one batch of 10 > 8 -> 2, one per worker
    assert batch_sizes(3, 8, 2) == [2, 1]
    assert batch_sizes(17, 8, 1) == [6, 6, 5]
    assert batch_sizes(17, 8, 2) == [5, 4, 4, 4]  # 3 batches rounded up to a multiple of 2 workers
    assert batch_sizes(1, 8, 4) == [1] and batch_sizes(0, 8, 2) == []
    for n in range(1, 40):
        for workers in (1, 2, 3):
            sizes = batch_sizes(n, 8, workers)
            assert sum(sizes) == n and max(sizes) <= 8 and max(sizes) - min(sizes) <= 1


def test_workers_decode_batches_at_once_on_real_speech(job_config, corpus):
    """Two CTranslate2 workers: a round's batches run on two threads at once, and the transcripts are right."""
    import threading

    from pipelines.core.wer import word_error_rate
    from tests.conftest import corpus_rows

    rows = [r for r in corpus_rows() if r["path"].startswith("ljspeech/LJ001-00")][:6]
    chunks = [Chunk(r["path"], 0, 0.0, decode_audio(corpus / r["path"]).samples) for r in rows]
    tr = Transcriber(job_config.model.model_copy(update={"num_workers": 2, "cpu_threads": 1}),
                     job_config.decoding.model_copy(update={"pack_short_chunks": False}))
    seen: set[str] = set()
    running, overlap = [0], [0]
    lock = threading.Lock()
    decode = tr._decode_pieces

    def spy(*args, **kwargs):
        with lock:
            seen.add(threading.current_thread().name)
            running[0] += 1
            overlap[0] = max(overlap[0], running[0])
        try:
            return decode(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    tr._decode_pieces = spy
    results = tr.transcribe_chunks(chunks)
    assert len(seen) == 2 and overlap[0] == 2  # two batches in flight together
    assert [r.key for r in results] == [r["path"] for r in rows]
    wer = word_error_rate([r["reference"] for r in rows], [_text(r) for r in results])
    assert wer < 0.10, wer


def test_rests_of_unfinished_long_chunks_are_packed_together(transcriber, job_config, corpus):
    """tiny.en stops many ~24 s VAD chunks of the LJ Speech concatenations a few seconds before their end (it opens
    a segment and ends); the rests are packed into shared windows instead of one window each, and none is lost."""
    from pipelines.core.chunking import chunk_audio, slice_chunk
    from pipelines.core.wer import normalize, word_error_rate
    from tests.conftest import corpus_rows

    rows = [r for r in corpus_rows() if r["path"].endswith("_concat.flac")]
    assert len(rows) == 2
    chunks = []
    for row in rows:
        audio = decode_audio(corpus / row["path"]).samples
        chunks += [Chunk(row["path"], i, s.offset_s, slice_chunk(audio, s, 16000), pack_group="ljspeech")
                   for i, s in enumerate(chunk_audio(audio, job_config.chunking))]
    assert sum(c.duration_s > transcriber.decoding.pack_max_chunk_s for c in chunks) >= 6  # decoded alone first
    results = transcriber.transcribe_chunks(chunks)
    stats = transcriber.last_stats
    assert stats["resumed"] >= 4
    assert stats["rest_windows"] < stats["resumed"]  # rests share windows (alone, each would take one)
    for row in rows:
        text = " ".join(_text(r) for r in results if r.key == row["path"])
        assert normalize(text).split()[-3:] == normalize(row["reference"]).split()[-3:]  # the end is there
        assert word_error_rate([row["reference"]], [text]) < 0.10


def test_split_sentences_cuts_at_sentence_ends_pauses_and_length():
    from pipelines.core.rounds import MAX_SEGMENT_S, split_sentences
    from pipelines.core.schema import Segment, Word

    # 30 words a second apart (0.2 s pauses), a full stop after the 4th, a 1.5 s pause before the 9th
    words = tuple(Word(f" w{i}{'.' if i == 3 else ''}", i + (0.7 if i >= 8 else 0.0),
                       i + (0.7 if i >= 8 else 0.0) + 0.8, 0.9) for i in range(30))
    seg = Segment(0, 0.0, 30.0, "".join(w.word for w in words), -0.2, 1.5, 0.01, 0.0, words)
    pieces = split_sentences(seg)
    assert [p.text for p in pieces][:2] == [" w0 w1 w2 w3.", " w4 w5 w6 w7"]
    assert pieces[2].words[0].word == " w8"
    assert "".join(p.text for p in pieces) == seg.text and sum(len(p.words) for p in pieces) == 30
    for p in pieces:
        assert (p.start, p.end) == (p.words[0].start, p.words[-1].end) and p.end - p.start <= MAX_SEGMENT_S
        assert (p.avg_logprob, p.temperature) == (seg.avg_logprob, seg.temperature)
    bare = Segment(0, 0.0, 5.0, " no words", -0.2, 1.5, 0.01, 0.0)
    assert split_sentences(bare) == [bare]


def test_without_timestamps_takes_segment_times_from_words(transcriber, job_config, corpus):
    """Decoding without timestamp tokens (one decode per window, never resumed) on a 54 s recording of Harvard
    sentences: segments are sentences timed by their words, and the WER is no worse than with timestamps."""
    from pipelines.core.engine import Engine, FileSpec, prepare
    from pipelines.core.wer import word_error_rate
    from tests.conftest import corpus_rows

    row = next(r for r in corpus_rows() if r["path"].startswith("gentle/"))
    file = prepare(corpus / row["path"], FileSpec("h", row["path"]), job_config.chunking)
    engine = Engine(job_config.model, job_config.decoding, transcriber)
    (timed,), _ = engine.transcribe([file])
    (plain,), _ = engine.transcribe([file], job_config.decoding.model_copy(update={"without_timestamps": True}))
    assert transcriber.last_stats["resumed"] == 0
    assert len(plain.segments) >= 8 > file.num_chunks  # ten sentences, cut from a few windows
    for seg in plain.segments:
        assert seg.words and (seg.start, seg.end) == (seg.words[0].start, seg.words[-1].end)
    wer = {name: word_error_rate([row["reference"]], [t.text]) for name, t in (("timed", timed), ("plain", plain))}
    assert wer["plain"] <= wer["timed"] + 0.02, wer
