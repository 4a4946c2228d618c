"""The endpoint and the batch job are one path (issue 14, docs/architecture.md invariant 1), without Ray.

The same clip goes through the endpoint's request path (the real FastAPI app of :func:`serve_app.app.create_app`,
with a stand-in for the Serve handle that runs the model deployment's own batch code, :class:`ModelServer`, in
process) and through the job's two stages (``DecodeChunkStage`` then ``TranscribeStage``, called as Ray Data calls
them). Spies on :func:`pipelines.core.engine.prepare` and :meth:`Engine.transcribe_isolated` show both paths make
the same two engine calls with the same settings and the same prepared audio, and the outputs agree: the
``verbose_json`` segments are the Parquet row's ``segments``, field for field, values within tolerance. Inputs the
job's guards refuse are refused by the endpoint too: 400 there, an error row of the same error type in the job.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import sys

import numpy as np
import pyarrow as pa
import pytest
import yaml

from pipelines.core import engine as engine_module
from pipelines.core.engine import Engine
from pipelines.core.export import verbose_json
from pipelines.core.schema import SEGMENT_TYPE, WORD_TYPE
from tests.compare import assert_spans_close, assert_texts_agree, assert_times_close
from tests.conftest import JFK, JFK_PHRASE, ROOT

RUN_ID = "engine-paths"


# ------------------------------------------------------------------------------------------------- the two paths
@pytest.fixture(scope="module")
def serve_cfg():
    """The endpoint's config: configs/serve.yaml's app args."""
    from serve_app.app import ServeAppArgs, serve_config_from_args

    args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    return serve_config_from_args(ServeAppArgs.model_validate(args))


class _Call:
    """What ``handle.method.remote(...)`` returns: awaitable once, and ``cancel()``-able."""

    def __init__(self, coro):
        self.task = asyncio.ensure_future(coro)

    def __await__(self):
        return self.task.__await__()

    def cancel(self) -> None:
        self.task.cancel()


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args) -> _Call:
        return _Call(self.fn(*args))


class InProcessModel:
    """The model deployment's handle, without Ray: ``transcribe(job)`` runs the deployment's own code
    (:meth:`ModelServer.admit`, then :meth:`ModelServer.run_batch` on a batch of one)."""

    def __init__(self, server):
        async def transcribe(job):
            done = server.admit(job)
            if done is not None:
                return done
            (result,) = server.run_batch([job])
            if isinstance(result, BaseException):
                raise result
            return result

        async def ready():
            return server.ready()

        self.transcribe, self.ready = _Method(transcribe), _Method(ready)


@pytest.fixture(scope="module")
def endpoint(serve_cfg, transcriber):
    """A test client of the endpoint's app; its model deployment shares the session's tiny.en transcriber."""
    from fastapi.testclient import TestClient

    from serve_app.app import create_app
    from serve_app.deployment import ModelServer

    server = ModelServer(serve_cfg, Engine(serve_cfg.model, serve_cfg.decoding, transcriber=transcriber))
    with TestClient(create_app(serve_cfg, InProcessModel(server))) as client:
        yield client


def post(client, name: str, data: bytes, **fields):
    return client.post("/v1/audio/transcriptions", data={"model": "whisper-1", **fields}, files={"file": (name, data)})


def run_job(cfg, files: dict[str, bytes], folder) -> dict[str, dict]:
    """The job's stages on ``{id: bytes}`` written under ``folder``: output rows by id."""
    from pipelines.stages import DecodeChunkStage, TranscribeStage

    rows = []
    for line, (rid, data) in enumerate(files.items(), start=1):
        path = folder / rid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append({"id": rid, "audio_filepath": rid, "uri": str(path), "language": None, "prompt": None,
                     "reference": None, "line": line})
    chunked = DecodeChunkStage(cfg)(pa.Table.from_pylist(rows))
    return {row["id"]: row for row in TranscribeStage(cfg, RUN_ID)(chunked).to_pylist()}


# ------------------------------------------------------------------------------------------------------- spies
def spy(monkeypatch, owner, name: str, calls: list) -> None:
    """Record every call of ``owner.name`` (args, kwargs, result) in ``calls``: patched on ``owner`` and in every
    loaded module of the project that imported it by name, so no caller escapes the spy however it imports."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(owner, name, recording)
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith(("pipelines", "serve_app")) and module is not owner \
                and getattr(module, name, None) is original:
            monkeypatch.setattr(module, name, recording)


@pytest.fixture()
def engine_calls(monkeypatch):
    """The calls of ``engine.prepare`` and ``Engine.transcribe_isolated`` made during a test."""
    import pipelines.stages  # noqa: F401 - loaded before the spies go in, so their imports are patched too
    import serve_app.app  # noqa: F401

    calls = {"prepare": [], "transcribe_isolated": []}
    spy(monkeypatch, engine_module, "prepare", calls["prepare"])
    spy(monkeypatch, Engine, "transcribe_isolated", calls["transcribe_isolated"])
    return calls


def prepared_of(call):
    """(FileSpec, ChunkingConfig, InputLimits, PreparedFile) of a recorded ``prepare`` call."""
    args, kwargs, result = call
    bound = dict(zip(("source", "spec", "chunking", "limits"), args)) | kwargs
    return bound["spec"], bound["chunking"], bound["limits"], result


# ------------------------------------------------------------------------------------------------------- tests
def test_the_endpoint_and_the_job_make_the_same_engine_calls(endpoint, serve_cfg, job_config, engine_calls,
                                                              tmp_path):
    data = JFK.read_bytes()
    r = post(endpoint, "jfk.flac", data, response_format="verbose_json")
    assert r.status_code == 200, r.text
    assert len(engine_calls["prepare"]) == 1 and len(engine_calls["transcribe_isolated"]) == 1
    run_job(job_config, {"jfk/jfk.flac": data}, tmp_path)
    assert len(engine_calls["prepare"]) == 2, "the job's decode stage did not go through engine.prepare"
    assert len(engine_calls["transcribe_isolated"]) == 2, "the job did not go through Engine.transcribe_isolated"

    (served_spec, served_ck, served_limits, served), (job_spec, job_ck, job_limits, job) = \
        map(prepared_of, engine_calls["prepare"])
    assert served_spec.name == "jfk.flac" and job_spec.name == "jfk/jfk.flac"
    assert served_ck == job_ck == job_config.chunking  # the same VAD and chunk settings
    assert served_limits.stream == job_limits.stream  # the same sample-rate and channel guards
    assert served.chunk_offsets_s == job.chunk_offsets_s and served.num_chunks >= 1  # the same chunks...
    assert all(np.array_equal(a, b) for a, b in zip(served.chunk_samples, job.chunk_samples))  # ...sample for sample
    for (args, kwargs, outcomes), prepared in zip(engine_calls["transcribe_isolated"], (served, job)):
        files = args[1] if len(args) > 1 else kwargs["files"]
        assert [f.spec.key for f in files] == [prepared.spec.key]
        assert outcomes[0].transcript is not None and outcomes[0].failure is None


def test_the_endpoint_gives_the_jobs_row_fields(endpoint, job_config, tmp_path):
    data = JFK.read_bytes()
    body = post(endpoint, "jfk.flac", data, response_format="verbose_json",
                **{"timestamp_granularities[]": ["segment", "word"]}).json()
    row = run_job(job_config, {"jfk/jfk.flac": data}, tmp_path)["jfk/jfk.flac"]
    assert row["status"] == "ok" and JFK_PHRASE in body["text"].lower().replace(",", "")

    segment_fields, word_fields = [f.name for f in SEGMENT_TYPE], [f.name for f in WORD_TYPE]
    assert body["segments"] and [list(s) for s in body["segments"]] == [segment_fields] * len(body["segments"])
    assert [list(s) for s in row["segments"]] == [segment_fields] * len(row["segments"])
    assert all(list(w) == word_fields for s in [*body["segments"], *row["segments"]] for w in s["words"])
    # the values: what two paths promise alike (tests/compare.py), not byte equality
    assert_texts_agree({"jfk": (row["text"], body["text"])})
    assert_spans_close(row["segments"], body["segments"], "endpoint vs job")
    if len(row["segments"]) == len(body["segments"]):
        for i, (a, b) in enumerate(zip(row["segments"], body["segments"])):
            assert a["id"] == b["id"] and a["temperature"] == b["temperature"]
            assert_times_close(a["start"], b["start"], f"segment {i} start")
            assert_times_close(a["end"], b["end"], f"segment {i} end")
            assert abs(a["avg_logprob"] - b["avg_logprob"]) < 0.2, (a, b)
    assert body["duration"] == pytest.approx(row["duration_s"], abs=1e-3) and body["language"] == row["language"]
    # the row rendered by the export module has the endpoint's verbose_json fields
    assert set(body) - {"task", "words"} == set(verbose_json(row)) - {"id", "audio_filepath", "status"}


def crafted_wav(rate_hz: int, seconds: float, channels: int = 1) -> bytes:
    """A PCM s16le WAV whose header declares ``rate_hz`` and ``channels`` (all samples 0)."""
    n = int(rate_hz * seconds) * channels * 2
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate_hz, rate_hz * channels * 2, channels * 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", n) + bytes(n)


def flac_declaring(hours: float) -> bytes:
    """The JFK clip (11 s) with its FLAC STREAMINFO declaring ``hours`` of audio: long by its header only."""
    data = bytearray(JFK.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO first
    word = int.from_bytes(data[18:26], "big")  # sample rate (20 bits), channels, bits per sample, total samples (36)
    rate = word >> 44
    total = int(hours * 3600 * rate)
    data[18:26] = ((word & ~((1 << 36) - 1)) | total).to_bytes(8, "big")
    return bytes(data)


REFUSED = [
    # (id, bytes, the endpoint's 400 code, the job's error type, the setting both messages name)
    ("one-hertz.wav", crafted_wav(1, 3600), "audio_out_of_limits", "AudioLimitError", "guards.min_sample_rate_hz"),
    ("65-channels.wav", crafted_wav(16000, 0.1, channels=65), "audio_out_of_limits", "AudioLimitError",
     "guards.max_channels"),
    ("ten-hours.flac", flac_declaring(10), "audio_too_long", "AudioTooLongError", "max_audio_duration_s"),
    ("list.ffconcat", b"ffconcat version 1.0\nfile 'speech.wav'\n", "invalid_audio", "AudioDecodeError",
     "not a supported audio format"),
]


def test_the_endpoint_refuses_what_the_jobs_guards_refuse(endpoint, job_config, tmp_path):
    rows = run_job(job_config, {rid: data for rid, data, *_ in REFUSED}, tmp_path)
    for rid, data, code, error_type, named in REFUSED:
        r = post(endpoint, rid, data)
        assert r.status_code == 400, (rid, r.text)
        error = r.json()["error"]
        assert (error["code"], error["param"]) == (code, "file") and named in error["message"], (rid, error)
        row = rows[rid]
        assert (row["status"], row["error_type"]) == ("error", error_type), (rid, row)
        assert named in row["error_message"], (rid, row["error_message"])
    # the duration limits differ by design: each side names its own setting
    assert "guards.max_audio_duration_s" in post(endpoint, "ten-hours.flac", flac_declaring(10)).text
    assert "chunking.max_audio_duration_s" in rows["ten-hours.flac"]["error_message"]
