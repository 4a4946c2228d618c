"""The transcription form as FastAPI reads it (serve_app.routes, serve_app.schemas.TranscriptionForm), without Ray:
what the hand-written parser it replaced did is still done — fields given twice, a text field for the file, more
fields or files than the API has, both spellings of ``timestamp_granularities`` — and the API key is checked
before the body is read."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from pipelines.config import load_serve_config
from pipelines.core.export import to_text
from serve_app.app import create_app
from tests.conftest import JFK

KEY = "form-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class _Method:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def remote(self, *args):
        self.calls += 1
        return asyncio.ensure_future(self.fn(*args))


class EchoModel:
    """A stand-in model handle: ``transcribe(job)`` gives a fixed transcript of the job's duration."""

    def __init__(self):
        from pipelines.core.schema import Segment, Transcript

        async def transcribe(job):
            seg = Segment(0, 0.0, 1.0, " hello", -0.1, 1.0, 0.0, 0.0)
            return Transcript("hello", "en", 1.0, job.duration_s, (seg,))

        async def ready():
            return {"status": "ready"}

        self.transcribe, self.ready = _Method(transcribe), _Method(ready)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(load_serve_config(None, []), EchoModel(), api_key=KEY)) as c:
        yield c


def post(client, data, files=None):
    return client.post("/v1/audio/transcriptions", headers=AUTH, data=data, files=files)


def jfk():
    return {"file": ("jfk.flac", JFK.read_bytes())}


BAD = [
    # (name, form fields, files, code, param, words in the message)
    ("a field given twice", {"model": ["whisper-1", "whisper-1"]}, jfk(), "invalid_value", "model", "more than once"),
    ("text for the file", {"model": "whisper-1", "file": "jfk.flac"}, None, "invalid_value", "file", "file upload"),
    ("two files", {"model": "whisper-1"}, [("file", ("a.flac", b"x")), ("file", ("b.flac", b"y"))], "invalid_body",
     None, "Too many files"),
    ("too many fields", {f"f{i}": "x" for i in range(40)}, None, "invalid_body", None, "Too many fields"),
    ("an unknown field", {"model": "whisper-1", "stream": "true"}, jfk(), "unknown_parameter", "stream", "stream"),
    ("a blank model", {"model": "  "}, jfk(), "missing_required_parameter", "model", "model"),
]


@pytest.mark.parametrize("name,data,files,code,param,words", BAD, ids=[b[0] for b in BAD])
def test_bad_forms_get_400(client, name, data, files, code, param, words):
    r = post(client, data, files)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param) and words in error["message"], error


def test_granularities_by_either_name(client):
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        r = post(client, {"model": "whisper-1", "response_format": "verbose_json", name: ["word", "segment"]}, jfk())
        assert r.status_code == 200, r.text
        assert "words" in r.json() and r.json()["duration"] == pytest.approx(11.0, abs=0.01)
    r = post(client, {"model": "whisper-1", "response_format": "text"}, jfk())
    assert r.text == to_text({"text": "hello"}) and r.headers["content-type"].startswith("text/plain")


def test_the_api_key_is_checked_before_the_body_is_read():
    app = create_app(load_serve_config(None, []), EchoModel(), api_key=KEY)
    received: list[str] = []

    async def counting(scope, receive, send):
        async def counted():
            message = await receive()
            if scope["type"] == "http":
                received.append(message["type"])
            return message

        await app(scope, counted, send)

    with TestClient(counting) as c:
        r = c.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files=jfk())
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert received == []  # refused on its headers
        assert c.get("/health").status_code == 200 and c.get("/v1/models").status_code == 401
        assert c.post("/v1/audio/transcriptions", headers=AUTH, data={"model": "whisper-1"},
                      files=jfk()).status_code == 200
        assert "http.request" in received
