"""The two map stages without Ray: bad inputs become error rows, silence an empty row, speech an ok row."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.schema import SCHEMA_VERSION, TRANSCRIPT_SCHEMA
from pipelines.stages import DecodeChunkStage, TranscribeStage
from tests.conftest import JFK, JFK_PHRASE
from tests.helpers import write_audio


def _row(rid, path, reference=None):
    return {"id": rid, "audio_filepath": str(path), "uri": str(path), "language": None, "prompt": None,
            "reference": reference, "line": 1}


@pytest.fixture(scope="module")
def stage(job_config, transcriber):
    return TranscribeStage(job_config, "test-run", transcriber=transcriber)


def test_decode_stage_error_rows(tmp_path, job_config):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("hello, not audio\n" * 50)
    rows = [_row("empty", tmp_path / "empty.wav"), _row("text", tmp_path / "text.wav"),
            _row("missing", tmp_path / "missing.flac"), _row("jfk", JFK)]
    table = DecodeChunkStage(job_config)(rows)
    out = {r["id"]: r for r in table.to_pylist()}
    assert out["empty"]["error_type"] == "AudioDecodeError" and "empty" in out["empty"]["error_message"]
    assert "not a readable audio" in out["text"]["error_message"]
    assert "no such file" in out["missing"]["error_message"]
    jfk = out["jfk"]
    assert jfk["error_type"] is None and len(jfk["chunk_samples"]) == 1 and jfk["duration_s"] == pytest.approx(11, abs=0.1)
    assert len(jfk["sha256"]) == 64 and jfk["source_sample_rate"] == 44100 and jfk["source_channels"] == 2


def test_transcribe_stage_rows(tmp_path, job_config, stage):
    silence = write_audio(tmp_path / "silence.flac", np.zeros(16000 * 8, np.float32), 16000, "flac", "s16")
    rows = [_row("jfk", JFK, "And so my fellow Americans"), _row("silence", silence),
            _row("missing", tmp_path / "missing.wav")]
    table = stage(DecodeChunkStage(job_config)(rows))
    assert table.schema.equals(TRANSCRIPT_SCHEMA, check_metadata=False)
    out = {r["id"]: r for r in table.to_pylist()}
    jfk = out["jfk"]
    assert jfk["status"] == "ok" and JFK_PHRASE in jfk["text"].lower().replace(",", "")
    assert jfk["reference"] == "And so my fellow Americans" and jfk["schema_version"] == SCHEMA_VERSION
    assert jfk["model"] == "bundled-tiny.en" and jfk["compute_type"] == "int8" and jfk["run_id"] == "test-run"
    assert jfk["language"] == "en" and jfk["transcribe_s"] > 0 and jfk["decode_s"] > 0
    words = [w for s in jfk["segments"] for w in s["words"]]
    assert words and all(0 <= w["start"] <= w["end"] <= 11.1 for w in words)
    assert out["silence"]["status"] == "empty" and out["silence"]["text"] in (None, "")
    assert out["silence"]["segments"] == []
    assert out["missing"]["status"] == "error" and "no such file" in out["missing"]["error_message"]


def test_a_file_that_breaks_the_model_is_isolated(job_config, stage, monkeypatch):
    """If the pooled batch fails, each file is retried alone and only the culprit becomes an error row."""
    rows = DecodeChunkStage(job_config)([_row("jfk", JFK), _row("jfk2", JFK)])
    real = stage.engine.transcriber.transcribe_chunks

    def flaky(chunks, decoding=None):
        if any(c.key == "jfk2" for c in chunks):
            raise RuntimeError("simulated CUDA error")
        return real(chunks, decoding)

    monkeypatch.setattr(stage.engine.transcriber, "transcribe_chunks", flaky)
    out = {r["id"]: r for r in stage(rows).to_pylist()}
    assert out["jfk"]["status"] == "ok"
    assert out["jfk2"]["status"] == "error" and "simulated CUDA error" in out["jfk2"]["error_message"]
    assert out["jfk2"]["attempts"] == job_config.transcribe.max_retries_per_file + 1


def test_vad_speech_travels_to_the_transcribe_stage(job_config, stage):
    """The decode stage ships each chunk's VAD speech in the Ray row, so the transcribe stage's dropped-speech guard
    and quality columns work in the job (without it both would be silently off)."""
    chunked = DecodeChunkStage(job_config)([_row("jfk", JFK)])
    runs = chunked.to_pylist()[0]["chunk_speech"]
    assert runs and all(0 <= a < b for chunk in runs for a, b in chunk)
    row = stage(chunked).to_pylist()[0]
    assert row["status"] == "ok" and 5 < row["speech_s"] <= row["duration_s"]
    assert row["covered_speech_s"] == pytest.approx(row["speech_s"], rel=0.1)
    assert row["uncovered_spans"] == [] and row["schema_version"] == SCHEMA_VERSION
