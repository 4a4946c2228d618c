"""Issue 13, findings 4-6 and the RayService manifest: the endpoint's input guards and deadline, the ``url``
allow-list against compound fsspec URLs and unbounded reads, and 5xx bodies that name an error id instead of
internals.

Most tests run the real FastAPI app (:func:`serve_app.app.create_app`) under uvicorn on a free 127.0.0.1 port with a
stand-in for the model deployment's handle, so no Ray starts; the ``ray`` tests at the end run the guard and the
deadline through the real Serve stack as well.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import socket
import struct
import threading
import time

import av
import numpy as np
import pytest
import requests
import yaml

from pipelines.config import (
    GuardsConfig,
    ServeConfig,
    ServeGuardsConfig,
    StreamGuardsConfig,
    ServeURLInputConfig,
    load_config,
    load_serve_config,
)
from pipelines.core.audio import decode_audio
from pipelines.core.stitch import stitch_file
from pipelines.io.storage import resolve_storage
from serve_app.schemas import APIError
from tests.conftest import CORPUS, JFK, ROOT
from tests.helpers import wait_until_ready

MARKER = "pid=1234 ip=10.1.2.3"  # what a Ray task error's text carries (process id, node IP)
LONG_CLIP = CORPUS / "gentle" / "harvard-sentences-list30.mp3"  # 53.65 s


def crafted_wav(rate_hz: int, seconds: float, channels: int = 1) -> bytes:
    """A PCM s16le WAV whose header declares ``rate_hz`` and ``channels`` (all samples 0)."""
    n = int(rate_hz * seconds) * channels * 2
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate_hz, rate_hz * channels * 2, channels * 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", n) + bytes(n)


ONE_HERTZ_WAV = crafted_wav(1, 3600)  # 7,244 bytes that would decode to an hour: 57.6 M samples, 230 MB float32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ a stand-in for the model handle
class FakeCall:
    """What ``handle.method.remote(...)`` returns: awaitable once, and ``cancel()``-able (Serve's
    DeploymentResponse)."""

    def __init__(self, coro):
        self.task = asyncio.ensure_future(coro)
        self.cancelled = False

    def __await__(self):
        return self.task.__await__()

    def cancel(self) -> None:
        self.cancelled = True
        self.task.cancel()


class FakeMethod:
    def __init__(self, fn):
        self.fn = fn
        self.calls: list[FakeCall] = []

    def remote(self, *args) -> FakeCall:
        call = FakeCall(self.fn(*args))
        self.calls.append(call)
        return call


class FakeModel:
    """The model deployment's handle: ``transcribe(job)`` and ``ready()`` run the given coroutines."""

    def __init__(self, transcribe=None, ready=None):
        async def empty_transcript(job):
            return stitch_file([], job.duration_s, "en", 1.0)

        async def is_ready():
            return {"status": "ready"}

        self.transcribe = FakeMethod(transcribe or empty_transcript)
        self.ready = FakeMethod(ready or is_ready)


class LocalApp:
    """``create_app(cfg, model)`` served by uvicorn on a free loopback port in a thread (no Ray)."""

    def __init__(self, cfg: ServeConfig, model: FakeModel):
        import uvicorn

        from serve_app.app import create_app

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(cfg, model), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LocalApp":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def post(self, data: dict | None = None, file=None, timeout: float = 60) -> requests.Response:
        return requests.post(f"{self.base}/v1/audio/transcriptions", data={"model": "whisper-1", **(data or {})},
                             files={"file": file} if file is not None else None, timeout=timeout)


def serve_cfg(*overrides: str) -> ServeConfig:
    return load_serve_config(None, list(overrides))


def assert_server_error(r: requests.Response, status: int, code: str) -> str:
    """The body is OpenAI's error with a generic message and an error id; returns the id."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["type"] == "server_error", error
    assert re.fullmatch(r"[0-9a-f]{32}", error["error_id"]), error
    assert error["error_id"] in error["message"]
    assert MARKER not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    return error["error_id"]


# --------------------------------------------------------------------------------------- finding 4: guards
def test_serve_config_has_the_jobs_stream_guards_and_a_shorter_duration_limit():
    serve, job = ServeConfig(), load_config(None)
    assert isinstance(serve.guards, StreamGuardsConfig) and isinstance(job.guards, StreamGuardsConfig)
    shared = set(StreamGuardsConfig.model_fields)
    assert shared == {"min_sample_rate_hz", "max_sample_rate_hz", "max_channels"}
    assert serve.guards.model_dump(include=shared) == job.guards.model_dump(include=shared)
    assert serve.guards.max_audio_duration_s == 1800 < job.chunking.max_audio_duration_s
    assert set(GuardsConfig.model_fields) == shared | {"max_file_bytes", "max_error_rate"}  # the job's, as before
    assert set(ServeGuardsConfig.model_fields) == shared | {"max_audio_duration_s"}
    # configs/serve.yaml and the RayService say the same
    from serve_app.app import ServeAppArgs, serve_config_from_args

    args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    assert serve_config_from_args(ServeAppArgs.model_validate(args)).guards == ServeGuardsConfig()
    with pytest.raises(Exception, match="guards.min_sample_rate_hz"):
        serve_cfg("guards.min_sample_rate_hz=0")


GUARDED = [
    # (name, upload, guard the 400 names)
    ("1 Hz, declaring an hour", ONE_HERTZ_WAV, "guards.min_sample_rate_hz"),
    ("768 kHz", crafted_wav(768000, 0.5), "guards.max_sample_rate_hz"),
    ("65 channels", crafted_wav(16000, 0.1, channels=65), "guards.max_channels"),
]


@pytest.mark.parametrize("name,upload,guard", GUARDED, ids=[g[0] for g in GUARDED])
def test_uploads_outside_the_guards_get_400_naming_the_guard(name, upload, guard):
    model = FakeModel()
    with LocalApp(serve_cfg(), model) as app:
        t0 = time.perf_counter()
        r = app.post(file=("hostile.wav", upload))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "audio_out_of_limits" and error["param"] == "file" and guard in error["message"]
    assert "error_id" not in error  # a 4xx body keeps OpenAI's four fields
    assert model.transcribe.calls == []  # refused before decoding: nothing reached the model
    assert time.perf_counter() - t0 < 10


def test_duration_guard_names_the_endpoints_limit():
    silence = io.BytesIO()
    with av.open(silence, "w", format="wav") as out:  # 3 s of 16 kHz silence
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with LocalApp(serve_cfg("guards.max_audio_duration_s=2"), FakeModel()) as app:
        refused = app.post(file=("three.wav", silence.getvalue()))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "audio_too_long", refused.text
    assert "guards.max_audio_duration_s" in refused.json()["error"]["message"]
    with LocalApp(serve_cfg("guards.max_audio_duration_s=5"), FakeModel()) as app:
        assert app.post(file=("three.wav", silence.getvalue())).status_code == 200


# ------------------------------------------------------------------------------------- finding 4: deadline
def test_a_request_past_its_deadline_gets_504_and_its_model_call_is_cancelled(caplog):
    async def never_done(job):
        await asyncio.sleep(60)

    model = FakeModel(transcribe=never_done)
    with LocalApp(serve_cfg("http.request_timeout_s=1"), model) as app, caplog.at_level(logging.ERROR):
        t0 = time.perf_counter()
        r = app.post(file=("jfk.flac", JFK.read_bytes()))
        elapsed = time.perf_counter() - t0
    error_id = assert_server_error(r, 504, "timeout")
    assert "http.request_timeout_s" in r.json()["error"]["message"]
    assert elapsed < 8, elapsed  # answered at the deadline, not when the model would have finished
    assert len(model.transcribe.calls) == 1 and model.transcribe.calls[0].cancelled
    assert any(error_id in rec.getMessage() for rec in caplog.records)


def test_an_upload_that_does_not_arrive_in_time_gets_408():
    model = FakeModel()
    with LocalApp(serve_cfg("http.request_timeout_s=1"), model) as app:
        boundary = "slowboundary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", app.port), timeout=20) as sock:
            sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n"
                         b"Content-Length: 100000\r\n\r\n" + head + b"\0" * 1000)  # ...and the rest never comes
            t0 = time.perf_counter()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            elapsed = time.perf_counter() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"upload_timeout"' in answer and elapsed < 8
    assert model.transcribe.calls == []


def test_the_proxys_timeout_backs_the_apps_deadline():
    """Serve's own request_timeout_s (a plain-text 408 from the proxy) sits above the app's JSON deadline in both
    shipped Serve configs."""
    from ray.serve.schema import ServeDeploySchema

    from serve_app.app import ServeAppArgs, serve_config_from_args

    rayservice = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())["spec"]["serveConfigV2"]
    for tree in (yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text()), yaml.safe_load(rayservice)):
        schema = ServeDeploySchema.model_validate(tree)
        (app,) = tree["applications"]
        cfg = serve_config_from_args(ServeAppArgs.model_validate(app["args"]))
        assert cfg.http.request_timeout_s < schema.http_options.request_timeout_s
    assert ServeConfig().http.request_timeout_s <= 600


# ------------------------------------------------------------------------------ finding 6: no internals in 5xx
def test_a_500_names_an_error_id_and_the_log_has_the_details(caplog):
    async def broken(job):
        raise RuntimeError(f"the model replica crashed ({MARKER}); Traceback (most recent call last): ...")

    with LocalApp(serve_cfg(), FakeModel(transcribe=broken)) as app, caplog.at_level(logging.ERROR):
        r = app.post(file=("jfk.flac", JFK.read_bytes()))
    error_id = assert_server_error(r, 500, "internal_error")
    logged = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert logged and MARKER in logged[0].getMessage()


def test_a_model_error_keeps_the_replicas_error_id():
    """The model deployment's own 500 (its id is in the replica's log) reaches the client with that id."""
    async def failed(job):
        raise APIError(500, "transcription failed", code="transcription_failed", error_id="ab" * 16)

    with LocalApp(serve_cfg(), FakeModel(transcribe=failed)) as app:
        r = app.post(file=("jfk.flac", JFK.read_bytes()))
    assert assert_server_error(r, 500, "transcription_failed") == "ab" * 16


def test_the_model_deployment_logs_the_failure_under_the_id_it_returns():
    from pipelines.core.engine import Engine
    from serve_app.deployment import ModelServer
    from serve_app.preparation import prepare_job
    from serve_app.schemas import TranscriptionRequest

    class BrokenTranscriber:
        calls = 0
        multilingual = False

        def transcribe_chunks(self, chunks, decoding=None):
            raise RuntimeError(f"CUDA error on the replica ({MARKER})")

    cfg = ServeConfig()
    replica = ModelServer(cfg, Engine(cfg.model, cfg.decoding, transcriber=BrokenTranscriber()))  # no model load
    job = prepare_job(JFK.read_bytes(), "jfk.flac", TranscriptionRequest.from_form({"model": "whisper-1"}), cfg)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ray.serve")
    logger.addHandler(handler)
    try:
        (outcome,) = replica.run_batch([job])
    finally:
        logger.removeHandler(handler)
    assert isinstance(outcome, APIError) and outcome.status_code == 500
    assert MARKER not in str(outcome.body()) and re.fullmatch(r"[0-9a-f]{32}", outcome.error_id)
    assert any(outcome.error_id in r.getMessage() and MARKER in r.getMessage() for r in records)
    assert replica.failures_in_a_row == 1
    # the id survives the trip through Ray (pickled by its args)
    import pickle

    assert pickle.loads(pickle.dumps(outcome)).error_id == outcome.error_id


@pytest.mark.parametrize("failure", ["raises", "hangs"])
def test_health_ready_gives_a_status_without_the_exception_text(failure, caplog):
    async def not_ready():
        if failure == "hangs":
            await asyncio.sleep(60)
        raise RuntimeError(f"ActorDiedError: the actor died unexpectedly ({MARKER})")

    cfg = serve_cfg("http.ready_timeout_s=0.5")
    with LocalApp(cfg, FakeModel(ready=not_ready)) as app, caplog.at_level(logging.ERROR):
        r = requests.get(f"{app.base}/health/ready", timeout=30)
    error_id = assert_server_error(r, 503, "not_ready")
    assert r.headers["retry-after"] == "1" and "ActorDiedError" not in r.text
    if failure == "raises":
        assert any(error_id in rec.getMessage() and MARKER in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize("docs", [True, False])
def test_docs_can_be_turned_off(docs):
    with LocalApp(serve_cfg(f"http.openapi_docs={str(docs).lower()}"), FakeModel()) as app:
        codes = {path: requests.get(f"{app.base}{path}", timeout=10).status_code
                 for path in ("/docs", "/redoc", "/openapi.json")}
        health = requests.get(f"{app.base}/health", timeout=10).status_code
    assert codes == dict.fromkeys(codes, 200 if docs else 404) and health == 200


# ------------------------------------------------------------------------------------ finding 5: url input
@pytest.fixture()
def served_folder(tmp_path):
    """``allowed/`` (the only prefix) holding a clip, a symlink out of it, and a big file; a secret beside it."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "jfk.flac").write_bytes(JFK.read_bytes())
    (tmp_path / "secret.flac").write_bytes(JFK.read_bytes())
    (allowed / "escape.flac").symlink_to(tmp_path / "secret.flac")
    (allowed / "big.flac").write_bytes(b"\0" * 3_000_000)
    (allowed / "odd::name.flac").write_bytes(b"x")  # inside the prefix, but fsspec reads '::' as a chain
    (allowed / "chain.flac").symlink_to(allowed / "odd::name.flac")
    return tmp_path


COMPOUND = [
    # (url with {root} for the served folder, status, code)
    ("file://{root}/allowed/escape.flac::s3://bucket/key.flac", 400, "invalid_value"),  # the bypass
    ("file://{root}/allowed/jfk.flac::file://{root}/secret.flac", 400, "invalid_value"),
    ("simplecache::file://{root}/allowed/jfk.flac", 400, "invalid_value"),
    ("blockcache::file://{root}/allowed/jfk.flac", 400, "invalid_value"),
    ("filecache::file://{root}/allowed/jfk.flac", 400, "invalid_value"),
    ("zip://jfk.flac::file://{root}/allowed/a.zip", 400, "invalid_value"),
    ("tar://jfk.flac::file://{root}/allowed/a.tar", 400, "invalid_value"),
    ("zip://{root}/allowed/a.zip", 403, "url_not_allowed"),
    ("memory://{root}/allowed/jfk.flac", 403, "url_not_allowed"),
    ("reference://{root}/allowed/jfk.flac", 403, "url_not_allowed"),
    ("file://{root}/allowed/chain.flac", 403, "url_not_allowed"),  # a symlink to a '::' path in the prefix
]


@pytest.mark.parametrize("url,status,code", COMPOUND, ids=[f"{i}-{c[0].split(':')[0]}" for i, c in enumerate(COMPOUND)])
def test_compound_fsspec_urls_are_refused(served_folder, url, status, code):
    from serve_app.url_input import read_url, resolve_url

    url = url.format(root=served_folder)
    cfg = ServeURLInputConfig(enabled=True, allowed_prefixes=(f"file://{served_folder}/allowed/",))
    for call in (lambda: resolve_url(url, cfg), lambda: read_url(url, cfg, resolve_storage(), 10_000_000)):
        with pytest.raises(APIError) as info:
            call()
        assert (info.value.status_code, info.value.code, info.value.param) == (status, code, "url"), url


def test_chained_url_is_refused_by_the_endpoint(served_folder):
    cfg = serve_cfg("http.url_input.enabled=true",
                    f"http.url_input.allowed_prefixes=['file://{served_folder}/allowed/']")
    with LocalApp(cfg, FakeModel()) as app:
        ok = app.post({"url": f"file://{served_folder}/allowed/jfk.flac"})
        chained = app.post({"url": f"file://{served_folder}/allowed/escape.flac::s3://bucket/key.flac"})
    assert ok.status_code == 200, ok.text
    assert chained.status_code == 400 and chained.json()["error"]["code"] == "invalid_value", chained.text
    assert "chained" in chained.json()["error"]["message"]


def test_url_reads_are_capped_at_max_upload_bytes(served_folder, monkeypatch):
    """A file above the cap is refused by its size before it is read, and no read ever returns more than the cap
    plus one byte, even where the storage reports a wrong size (a stale listing, a file that grew)."""
    from fsspec.implementations.local import LocalFileSystem

    from serve_app.url_input import read_url

    returned: list[int] = []
    real_cat_file = LocalFileSystem.cat_file

    def counting_cat_file(self, path, start=None, end=None, **kwargs):
        data = real_cat_file(self, path, start=start, end=end, **kwargs)
        returned.append(len(data))
        return data

    monkeypatch.setattr(LocalFileSystem, "cat_file", counting_cat_file)
    monkeypatch.setattr(LocalFileSystem, "size", lambda self, path: 1)  # the storage says 1 byte
    cfg = ServeURLInputConfig(enabled=True, allowed_prefixes=(f"file://{served_folder}/allowed/",))
    cap = 2_000_000
    with pytest.raises(APIError) as info:
        read_url(f"file://{served_folder}/allowed/big.flac", cfg, resolve_storage(), cap)
    assert all(n <= cap + 1 for n in returned), returned  # never read past the cap
    assert (info.value.status_code, info.value.code) == (413, "file_too_large")
    assert "http.max_upload_bytes" in info.value.message
    data, name = read_url(f"file://{served_folder}/allowed/jfk.flac", cfg, resolve_storage(), cap)
    assert data == JFK.read_bytes() and name == "jfk.flac"
    with LocalApp(serve_cfg("http.url_input.enabled=true", f"http.max_upload_bytes={cap}",
                            f"http.url_input.allowed_prefixes=['file://{served_folder}/allowed/']"),
                  FakeModel()) as app:
        r = app.post({"url": f"file://{served_folder}/allowed/big.flac"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large", r.text
    assert all(n <= cap + 1 for n in returned), returned


# ------------------------------------------------------------------------------------------ deploy/*.yaml
def test_rayservice_takes_the_api_key_from_a_secret_and_keeps_the_dashboard_in():
    text = (ROOT / "deploy" / "rayservice.yaml").read_text()
    svc = yaml.safe_load(text)
    (app,) = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    http = app["args"]["http"]
    assert http["api_key_env"] == "RAYWHISPER_API_KEY" and "api_key" not in http
    cluster = svc["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    pods = [head["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0].get("env", [])}
        ref = env["RAYWHISPER_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "raywhisper-api-key", "key": "api-key"} and "value" not in env["RAYWHISPER_API_KEY"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "raywhisper-serve"
    # the head Service stays in the cluster, no Ingress, no Ray Client port
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert 10001 not in ports and "serveService" not in svc["spec"]
    # the dashboard listens on the pod (the operator deploys serveConfigV2 through its REST API), so the network
    # policy admits only the operator to its port
    policy = yaml.safe_load((ROOT / "deploy" / "networkpolicy.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "raywhisper-serve"}
    rules = policy["spec"]["ingress"]
    open_ports = {p["port"] for rule in rules if "from" not in rule for p in rule["ports"]}
    assert open_ports == {8000}  # only Serve's port is open to all
    dashboard = [rule for rule in rules if any(p["port"] == 8265 for p in rule.get("ports", []))]
    assert len(dashboard) == 1
    assert dashboard[0]["from"] == [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    peers = [rule for rule in rules if "from" in rule and "ports" not in rule]
    assert peers == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "raywhisper-serve"}}}]}]


# ------------------------------------------------------------------------------------------ with Serve
def long_flac(repeats: int = 16) -> bytes:
    """LONG_CLIP said ``repeats`` times (16: 14.3 min), as a 16 kHz mono FLAC of ~10 MB."""
    audio = decode_audio(LONG_CLIP)
    pcm = (np.clip(np.tile(audio.samples, repeats), -1, 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=16000, layout="mono")
        for i in range(0, pcm.shape[0], 16000):
            frame = av.AudioFrame.from_ndarray(pcm[None, i:i + 16000], format="s16", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hurried(ray_local, corpus):
    """The Serve app of configs/serve.yaml on loopback with a 1.5 s request deadline."""
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    args = dict(args, overrides=["deployment.num_cpus=0.5", "http.num_cpus=0", "http.request_timeout_s=1.5"])
    serve.run(build_app(args), name="hurried", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(base)
    yield base
    serve.shutdown()


@pytest.mark.ray
def test_serve_refuses_the_one_hertz_wav(hurried):
    r = requests.post(f"{hurried}/v1/audio/transcriptions", data={"model": "whisper-1"},
                      files={"file": ("hostile.wav", ONE_HERTZ_WAV)}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "audio_out_of_limits"
    assert "guards.min_sample_rate_hz" in r.json()["error"]["message"]


@pytest.mark.ray
def test_serve_answers_an_over_long_request_at_its_deadline(hurried):
    """14 min of speech cannot be decoded, chunked and transcribed in 1.5 s: the endpoint answers 504 with an
    error body (or 408 on a machine so loaded that even the ~10 MB upload took longer than that)."""
    r = requests.post(f"{hurried}/v1/audio/transcriptions", data={"model": "whisper-1"},
                      files={"file": ("long.flac", long_flac())}, timeout=120)
    assert r.status_code in (408, 504), r.text
    error = r.json()["error"]
    assert error["code"] == {504: "timeout", 408: "upload_timeout"}[r.status_code]
    assert "http.request_timeout_s" in error["message"]
    if r.status_code == 504:
        assert re.fullmatch(r"[0-9a-f]{32}", error["error_id"])
