"""The Serve endpoint on loopback: a local Ray, Serve HTTP on a free 127.0.0.1 port, the real ``openai`` client.

Two applications run side by side: ``raywhisper`` (from ``configs/serve.yaml``, with an API key and a 2 MB upload
limit) and ``tight`` (one request at a time, one queued) to check that overload gets 503 + Retry-After at once.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import srt
import webvtt
import yaml

from pipelines.config import load_config
from pipelines.core.audio import decode_audio
from pipelines.core.chunking import chunk_audio, slice_chunk
from pipelines.core.errors import ConfigError
from pipelines.core.schema import SEGMENT_TYPE, WORD_TYPE
from pipelines.core.stitch import stitch_file
from pipelines.core.transcriber import Chunk
from tests.compare import assert_segments_in_chunks, assert_spans_close, assert_texts_agree
from tests.conftest import CORPUS, JFK, JFK_PHRASE, ROOT
from tests.helpers import wait_until_ready

API_KEY = "test-key-123"
MAX_UPLOAD = 2_000_000
LONG_CLIP = CORPUS / "gentle" / "harvard-sentences-list30.mp3"  # 53.65 s: two VAD chunks at least
SHORT_CLIP = CORPUS / "ljspeech" / "LJ001-0002.flac"  # 1.9 s


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def serve_yaml_args() -> dict:
    """The application args of configs/serve.yaml."""
    return yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]


def silent_wav(seconds: float = 2.0) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(int(seconds * 16000), np.int16).tobytes())
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- without Ray
def test_serve_yaml_shares_the_jobs_model_settings():
    from serve_app.app import ServeAppArgs, serve_config_from_args

    cfg = serve_config_from_args(ServeAppArgs.model_validate(serve_yaml_args()))
    job = load_config(ROOT / "configs" / "local.yaml")
    assert (cfg.model, cfg.decoding, cfg.chunking) == (job.model, job.decoding, job.chunking)


def test_build_app_refuses_a_bad_config():
    from serve_app.app import build_app

    with pytest.raises(ConfigError, match="deployment.max_batch_size"):
        build_app({"overrides": ["deployment.max_batch_size=0"]})
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        build_app({"deployment": {"max_batch_size": 32, "max_ongoing_requests": 8}})
    with pytest.raises(Exception, match="nonsense"):
        build_app({"nonsense": {}})


def test_importing_the_app_starts_nothing():
    code = "import ray, serve_app.app, serve_app.loadtest; assert not ray.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ with Serve
@pytest.fixture(scope="module")
def endpoint(ray_local, corpus):
    """Base URL of the two apps on loopback; Serve is shut down after the module."""
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    main = dict(serve_yaml_args(), overrides=[
        "deployment.num_cpus=0.5", "http.num_cpus=0", f"http.api_key={API_KEY}",
        f"http.max_upload_bytes={MAX_UPLOAD}", "deployment.batch_wait_timeout_s=0.2",
    ])
    tight = dict(serve_yaml_args(), overrides=[
        "deployment.num_cpus=0.25", "http.num_cpus=0", "deployment.max_batch_size=1",
        "deployment.max_ongoing_requests=1", "deployment.max_queued_requests=1", "deployment.retry_after_s=2",
    ])
    serve.run(build_app(main), name="raywhisper", route_prefix="/", blocking=False)
    serve.run(build_app(tight), name="tight", route_prefix="/tight")
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base)
    yield base
    serve.shutdown()


def stats(app_name: str = "raywhisper") -> dict:
    from ray import serve

    return serve.get_deployment_handle("TranscriberDeployment", app_name=app_name).stats.remote().result()


def client(base: str, api_key: str = API_KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=120)


def post(base: str, data: dict | None = None, file=None, key: str | None = API_KEY, path: str = "") -> requests.Response:
    """POST /v1/audio/transcriptions like curl -F; ``file`` is (name, bytes) or None."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    files = {"file": file} if file is not None else None
    return requests.post(f"{base}{path}/v1/audio/transcriptions", headers=headers, data=data or {}, files=files,
                         timeout=120)


@pytest.mark.ray
def test_health_endpoints(endpoint):
    assert requests.get(f"{endpoint}/health", timeout=10).json() == {"status": "ok"}
    assert requests.get(f"{endpoint}/health/live", timeout=10).status_code == 200
    ready = requests.get(f"{endpoint}/health/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["model"] == "bundled-tiny.en" and ready.json()["warmup_s"] > 0
    docs = requests.get(f"{endpoint}/openapi.json", timeout=10).json()
    form = docs["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = form["schema"]  # FastAPI's form model: a reference to its schema
    schema = docs["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema
    assert {"file", "model", "response_format", "timestamp_granularities[]"} <= set(schema["properties"])


@pytest.mark.ray
def test_verbose_json_with_the_openai_client(endpoint):
    with open(JFK, "rb") as f:
        raw = client(endpoint).audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"])
    result = raw.parse()
    assert JFK_PHRASE in words_of(result.text)
    assert result.language == "en" and result.duration == pytest.approx(11.0, abs=0.1)
    body = raw.http_response.json()
    segment_fields = [f.name for f in SEGMENT_TYPE]
    word_fields = [f.name for f in WORD_TYPE]
    assert body["segments"] and all(list(s) == segment_fields for s in body["segments"])  # the Parquet struct
    assert all(list(w) == word_fields for s in body["segments"] for w in s["words"])
    words = result.words
    assert [w.word.strip().lower().strip(",.") for w in words][:4] == ["and", "so", "my", "fellow"]
    assert all(0 <= w.start <= w.end <= 11.0 for w in words)
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts)


@pytest.mark.ray
def test_json_text_srt_vtt_with_the_openai_client(endpoint):
    api = client(endpoint)
    with open(JFK, "rb") as f:
        plain = api.audio.transcriptions.create(model="bundled-tiny.en", file=f)
    assert JFK_PHRASE in words_of(plain.text)
    outputs = {}
    for fmt in ("text", "srt", "vtt"):
        with open(JFK, "rb") as f:
            outputs[fmt] = api.audio.transcriptions.create(model="whisper-1", file=f, response_format=fmt)
        assert isinstance(outputs[fmt], str)
    assert JFK_PHRASE in words_of(outputs["text"])
    subs = list(srt.parse(outputs["srt"]))
    assert subs and JFK_PHRASE in words_of(" ".join(s.content for s in subs))
    assert all(s.start <= s.end for s in subs) and subs[-1].end.total_seconds() <= 11.0
    captions = webvtt.from_string(outputs["vtt"]).captions
    assert len(captions) == len(subs)
    assert JFK_PHRASE in words_of(" ".join(c.text for c in captions))


@pytest.mark.ray
def test_curl_style_request_and_prompt_and_temperature(endpoint):
    r = post(endpoint, {"model": "whisper-1", "response_format": "text", "prompt": "JFK inaugural address.",
                        "temperature": "0.2", "language": "en"}, ("jfk.flac", JFK.read_bytes()))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert "fellow americans" in words_of(r.text)


@pytest.mark.ray
def test_long_upload_is_chunked_like_the_batch_job(endpoint, transcriber, job_config):
    audio = decode_audio(LONG_CLIP)
    spans = chunk_audio(audio.samples, job_config.chunking)
    assert len(spans) >= 2
    chunks = [Chunk("long", i, s.offset_s, slice_chunk(audio.samples, s, 16000)) for i, s in enumerate(spans)]
    expected = stitch_file(transcriber.transcribe_chunks(chunks), audio.duration_s)

    before = stats()
    r = post(endpoint, {"model": "whisper-1", "response_format": "verbose_json"},
             (LONG_CLIP.name, LONG_CLIP.read_bytes()))
    assert r.status_code == 200, r.text
    assert stats()["chunks"] - before["chunks"] == len(spans)  # the same VAD chunks as the job's
    body = r.json()
    # what the two paths promise alike, not byte equality: the words depend on which chunks share a batch and on
    # the CPU's int8 kernels (tests/compare.py)
    assert_texts_agree({LONG_CLIP.name: (expected.text, body["text"])})
    chunk_bounds = [(s.offset_s, s.offset_s + s.duration_s) for s in spans]
    assert_segments_in_chunks(body["segments"], chunk_bounds, "endpoint")  # cut there, put back at the offsets
    assert_spans_close(body["segments"], [{"start": s.start, "end": s.end} for s in expected.segments], "endpoint")
    assert body["segments"][-1]["end"] > 30.0  # file time, past the first chunk


@pytest.mark.ray
def test_silence_answers_an_empty_transcript(endpoint):
    r = post(endpoint, {"model": "whisper-1", "response_format": "verbose_json"}, ("silence.wav", silent_wav()))
    assert r.status_code == 200, r.text
    assert r.json()["text"] == "" and r.json()["segments"] == [] and r.json()["duration"] == 2.0


BAD_REQUESTS = [
    # (name, form fields, file, api key, status, error code)
    ("no file", {"model": "whisper-1"}, None, API_KEY, 400, "missing_required_parameter"),
    ("empty file", {"model": "whisper-1"}, ("a.wav", b""), API_KEY, 400, "empty_file"),
    ("not audio", {"model": "whisper-1"}, ("a.mp3", b"this is not audio at all" * 50), API_KEY, 400, "invalid_audio"),
    ("truncated wav", {"model": "whisper-1"}, ("a.wav", silent_wav()[:1000]), API_KEY, 400, "invalid_audio"),
    ("too large", {"model": "whisper-1"}, ("a.wav", b"\0" * (MAX_UPLOAD + 200_000)), API_KEY, 413,
     "file_too_large"),
    ("bad response_format", {"model": "whisper-1", "response_format": "docx"}, "jfk", API_KEY, 400, "invalid_value"),
    ("bad temperature", {"model": "whisper-1", "temperature": "hot"}, "jfk", API_KEY, 400, "invalid_value"),
    ("temperature out of range", {"model": "whisper-1", "temperature": "3"}, "jfk", API_KEY, 400, "invalid_value"),
    ("bad granularity", {"model": "whisper-1", "response_format": "verbose_json",
                         "timestamp_granularities[]": "letter"}, "jfk", API_KEY, 400, "invalid_value"),
    ("word without verbose_json", {"model": "whisper-1", "timestamp_granularities[]": "word"}, "jfk", API_KEY, 400,
     "invalid_value"),
    ("unknown field", {"model": "whisper-1", "stream": "true"}, "jfk", API_KEY, 400, "unknown_parameter"),
    ("no model", {}, "jfk", API_KEY, 400, "missing_required_parameter"),
    ("unknown model", {"model": "gpt-4o-transcribe"}, "jfk", API_KEY, 400, "model_not_found"),
    ("unknown language", {"model": "whisper-1", "language": "xx"}, "jfk", API_KEY, 400, "invalid_value"),
    ("language the model lacks", {"model": "whisper-1", "language": "fr"}, "jfk", API_KEY, 400,
     "unsupported_language"),
    ("no API key", {"model": "whisper-1"}, "jfk", None, 401, "missing_api_key"),
    ("wrong API key", {"model": "whisper-1"}, "jfk", "not-the-key", 401, "invalid_api_key"),
]


@pytest.mark.ray
@pytest.mark.parametrize("name,data,file,key,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_clear_4xx(endpoint, name, data, file, key, status, code):
    if file == "jfk":
        file = ("jfk.flac", JFK.read_bytes())
    r = post(endpoint, data, file, key)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and len(error["message"]) > 10
    if status == 401:
        assert r.headers.get("www-authenticate") == "Bearer"


@pytest.mark.ray
def test_chunked_upload_over_the_limit_gets_413(endpoint):
    boundary = "raywhisperboundary"

    def body():  # no Content-Length: the limit is enforced while the body streams in
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
               f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(MAX_UPLOAD // 65536 + 8):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.post(f"{endpoint}/v1/audio/transcriptions", data=body(), timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}",
                               "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"


@pytest.mark.ray
def test_openai_client_sees_auth_errors(endpoint):
    import openai

    with open(SHORT_CLIP, "rb") as f, pytest.raises(openai.AuthenticationError):
        client(endpoint, api_key="wrong").audio.transcriptions.create(model="whisper-1", file=f)


@pytest.mark.ray
def test_unknown_route_has_the_error_shape(endpoint):
    r = requests.get(f"{endpoint}/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.mark.ray
def test_concurrent_requests_are_batched(endpoint):
    clip = SHORT_CLIP.read_bytes()
    before = stats()

    def one(_):
        return post(endpoint, {"model": "whisper-1"}, (SHORT_CLIP.name, clip))

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
    assert all("modern" in words_of(r.json()["text"]) for r in responses)
    after = stats()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8, (before, after)
    assert after["model_calls"] - before["model_calls"] < 8, (before, after)
    assert after["max_batch_requests"] >= 2


@pytest.mark.ray
def test_full_queue_answers_503_with_retry_after_at_once(endpoint):
    clip = ("clip.flac", JFK.read_bytes())

    def one(_):
        t0 = time.perf_counter()
        r = post(endpoint, {"model": "whisper-1"}, clip, key=None, path="/tight")
        return r, time.perf_counter() - t0

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    codes = sorted(r.status_code for r, _ in results)
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    slowest_ok = max(t for r, t in results if r.status_code == 200)
    for r, seconds in results:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert r.json()["error"]["code"] == "server_overloaded"
            assert r.json()["error"]["type"] == "server_error"
            assert seconds < slowest_ok  # refused at once, not after waiting its turn
