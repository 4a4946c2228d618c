"""The transcriber on real speech: continuation after an early stop, prompts, silence, language detection."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import DecodingConfig, ModelConfig
from pipelines.core.audio import decode_audio
from pipelines.core.errors import ModelLoadError
from pipelines.core.transcriber import Chunk, Transcriber
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
    assert transcriber.calls - before == 1  # one batched model call for three files
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
