"""Hostile "audio" (issue 13, findings 1 and 8): files that would make FFmpeg open other files or sockets (ffconcat,
SDP, HLS playlists) are refused as "not a supported audio format" before FFmpeg reads their header, as bytes, as
paths, in the job and at the endpoint, with one message whatever they point to; a file name that is not UTF-8 is
an error row with the name escaped, and the rest of the batch goes on."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import av
import pandas as pd
import pytest

from pipelines.core.audio import _CONTAINER_OPTIONS, ACCEPTED_DEMUXERS, UNSUPPORTED_FORMAT, decode_audio
from pipelines.core.errors import AudioDecodeError
from tests.conftest import JFK, JFK_PHRASE, ROOT

SECRET_CLIP = "ljspeech/LJ001-0001.wav"  # "printing, in the only sense with which we are at present concerned..."
SECRET_WORDS = "printing"
HOSTILE = ("ffconcat", "sdp", "hls")
#: The extension FFmpeg's probe would take as a hint for each, when the input is a path.
NATIVE_SUFFIX = {"ffconcat": ".ffconcat", "sdp": ".sdp", "hls": ".m3u8"}


class Listener:
    """A TCP listener on 127.0.0.1 that records (and at once closes) every connection made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections.append(peer)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def secret_root(tmp_path_factory, corpus):
    """A folder holding ``sub/speech.wav``, a real speech clip: what a hostile input naming ``sub/speech.wav``
    (relative to the working directory, or to the hostile file's own folder) would read."""
    root = tmp_path_factory.mktemp("secret")
    (root / "sub").mkdir()
    shutil.copy(corpus / SECRET_CLIP, root / "sub" / "speech.wav")
    return root


def ffconcat(target) -> bytes:
    return f"ffconcat version 1.0\nfile '{target}'\n".encode()


@pytest.fixture(scope="module")
def hostile(secret_root, listener) -> dict[str, bytes]:
    """The bytes of each hostile input: an ffconcat list naming ``sub/speech.wav`` (the concat demuxer's safe mode
    takes relative names only), an SDP session (FFmpeg binds UDP sockets and waits for RTP), an HLS playlist with a
    ``file:`` entry and ``http://`` entries at the listener."""
    udp = free_udp_port()
    sdp = (f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio {udp} RTP/AVP 0\n"
           "a=rtpmap:0 PCMU/8000\n").encode()
    http = f"http://127.0.0.1:{listener.port}"
    hls = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
           f"#EXTINF:10.0,\nfile:{secret_root / 'sub' / 'speech.wav'}\n#EXTINF:10.0,\n{http}/x.ts\n"
           f"#EXTINF:10.0,\n{http}/y.ts\n#EXT-X-ENDLIST\n").encode()
    return {"ffconcat": ffconcat("sub/speech.wav"), "sdp": sdp, "hls": hls}


@pytest.fixture
def in_secret_root(secret_root, monkeypatch):
    """Work in ``secret_root``: FFmpeg resolves an in-memory ffconcat's relative names against the working
    directory."""
    monkeypatch.chdir(secret_root)
    return secret_root


def refused(source, **kwargs) -> tuple[str, float]:
    """The message decode_audio refuses ``source`` with, and how long it took."""
    t0 = time.monotonic()
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(source, **kwargs)
    return str(info.value), time.monotonic() - t0


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_bytes_are_refused_quickly_and_open_nothing(hostile, listener, in_secret_root, kind):
    message, seconds = refused(hostile[kind], name="upload.wav")
    assert message.startswith(f"upload.wav: {UNSUPPORTED_FORMAT}"), message
    assert seconds < 5, f"{kind}: {seconds:.1f} s"  # SDP used to bind UDP sockets and wait ~10-20 s for RTP
    assert listener.connections == []


@pytest.mark.parametrize("suffix", ["native", ".wav"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_paths_are_refused_quickly_and_open_nothing(hostile, listener, secret_root, kind, suffix):
    """As a path, FFmpeg also sees the file name: ``.m3u8`` makes it probe HLS, which fetched the http entries;
    an ffconcat file's names resolve against its own folder (here beside ``sub/speech.wav``)."""
    path = secret_root / f"hostile-{kind}{NATIVE_SUFFIX[kind] if suffix == 'native' else suffix}"
    path.write_bytes(hostile[kind])
    message, seconds = refused(path)
    assert message.startswith(f"{path}: {UNSUPPORTED_FORMAT}"), message
    assert seconds < 5, f"{kind}: {seconds:.1f} s"
    assert listener.connections == []


def test_sdp_returns_at_once(hostile):
    _, seconds = refused(hostile["sdp"])
    assert seconds < 5


def test_no_file_existence_oracle(in_secret_root):
    """ffconcat naming an audio file, a missing file, a directory or a text file: one and the same refusal."""
    (in_secret_root / "sub" / "notes.txt").write_text("not audio\n" * 50)
    targets = {"existing audio": "sub/speech.wav", "missing": "sub/missing.wav", "directory": "sub",
               "not audio": "sub/notes.txt"}
    messages = {what: refused(ffconcat(target), name="upload.wav")[0] for what, target in targets.items()}
    assert len(set(messages.values())) == 1, messages
    assert UNSUPPORTED_FORMAT in messages["existing audio"]


def test_protocol_whitelist_alone_stops_nested_opens(in_secret_root):
    """The second guard on its own: even with the demuxer allowed, no protocol may be opened from an input."""
    options = {"protocol_whitelist": _CONTAINER_OPTIONS["protocol_whitelist"]}
    with pytest.raises(av.error.FFmpegError):
        with av.open(io.BytesIO(ffconcat("sub/speech.wav")), container_options=options) as container:
            next(container.decode(audio=0))


def test_the_accepted_demuxers_are_single_file_formats():
    forbidden = {"concat", "ffconcat", "hls", "applehttp", "dash", "sdp", "rtp", "rtsp", "image2", "image2pipe",
                 "tee", "data", "lavfi", "mpjpeg", "webm_dash_manifest", "tty"}
    assert not forbidden & ACCEPTED_DEMUXERS
    for name in ACCEPTED_DEMUXERS:  # each names a real demuxer of this FFmpeg, all of whose names are accepted
        demuxer = av.ContainerFormat(name, "r")
        assert demuxer.is_input and set(demuxer.name.split(",")) <= ACCEPTED_DEMUXERS, (name, demuxer.name)


def test_real_containers_still_decode(tmp_path, corpus):
    """A sample of the formats (tests/core/test_audio.py has them all): flac, ogg, opus, m4a from the corpus, as
    bytes and as paths."""
    for path in [JFK] + [next((corpus / "ljspeech").glob(f"*.{ext}")) for ext in ("ogg", "opus", "m4a", "mp3")]:
        assert decode_audio(path).duration_s > 1
        assert decode_audio(path.read_bytes()).duration_s > 1


@pytest.mark.parametrize("kind", HOSTILE)
def test_endpoint_refuses_hostile_uploads(hostile, listener, in_secret_root, kind):
    """The endpoint's request preparation (serve_app.preparation.prepare_job, Ray-free; the Serve fixture of
    tests/serve/test_serve.py starts a model replica): a 400 ``invalid_audio`` naming the reason, quickly."""
    from pipelines.config import load_serve_config
    from serve_app.preparation import prepare_job
    from serve_app.schemas import APIError, TranscriptionRequest

    cfg = load_serve_config()
    t0 = time.monotonic()
    with pytest.raises(APIError) as info:
        prepare_job(hostile[kind], "upload.wav", TranscriptionRequest(model="whisper-1"), cfg)
    assert time.monotonic() - t0 < 5
    assert info.value.status_code == 400 and info.value.code == "invalid_audio"
    assert UNSUPPORTED_FORMAT in info.value.message
    assert listener.connections == []


def non_utf8_folder(folder, corpus) -> str:
    """Copy a real clip into ``folder`` under the name ``b"bad\\xff.flac"``; returns that name as listed."""
    raw = os.path.join(os.fsencode(folder), b"bad\xff.flac")
    shutil.copy(corpus / "jfk" / "jfk.flac", raw)
    return os.fsdecode(b"bad\xff.flac")


def test_a_non_utf8_name_is_an_escaped_error_row_without_ray(tmp_path, corpus, job_config):
    import pyarrow as pa

    from pipelines.io.manifest import read_manifest
    from pipelines.stages import DecodeChunkStage

    non_utf8_folder(tmp_path, corpus)
    shutil.copy(JFK, tmp_path / "jfk.flac")
    rows = read_manifest(str(tmp_path))
    assert [r.id for r in rows] == ["bad\\xff.flac", "jfk.flac"]
    table = DecodeChunkStage(job_config)(pa.Table.from_pylist([r.to_dict() for r in rows]))
    out = {r["id"]: r for r in table.to_pylist()}
    assert out["bad\\xff.flac"]["error_type"] == "InputNameError"
    assert "bad\\xff.flac" in out["bad\\xff.flac"]["error_message"]
    assert "not valid UTF-8" in out["bad\\xff.flac"]["error_message"]
    assert out["jfk.flac"]["error_type"] is None and out["jfk.flac"]["duration_s"] > 10


@pytest.fixture(scope="module")
def hostile_job(tmp_path_factory, corpus, hostile, listener, secret_root):
    """One job (the CLI, with its own local Ray, working in ``secret_root`` as the issue's reproduction did) over a
    folder holding the hostile inputs (with audio extensions, as a folder is listed), a real clip, and a copy of
    that clip under a name that is not UTF-8."""
    folder = tmp_path_factory.mktemp("hostile_job") / "in"
    folder.mkdir()
    for kind, suffix in (("ffconcat", ".wav"), ("sdp", ".wav"), ("hls", ".mp3")):
        (folder / f"{kind}{suffix}").write_bytes(hostile[kind])
    shutil.copy(JFK, folder / "jfk.flac")
    non_utf8_folder(folder, corpus)
    out = folder.parent / "out"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.transcribe", "--config", str(ROOT / "configs" / "local.yaml"),
         "--manifest", str(folder), "--output", str(out), "--run-id", "hostile", "--set", "progress=false"],
        cwd=secret_root, env=env, capture_output=True, text=True, timeout=300)
    return result, pd.read_parquet(out).set_index("id") if out.exists() else None


@pytest.mark.ray
def test_job_refuses_hostile_inputs_as_error_rows(hostile_job, listener):
    result, df = hostile_job
    assert result.returncode == 0 and df is not None, result.stderr[-3000:]
    for rid in ("ffconcat.wav", "sdp.wav", "hls.mp3"):
        row = df.loc[rid]
        assert row["status"] == "error" and row["error_type"] == "AudioDecodeError", (rid, row["error_message"])
        assert row["error_message"].startswith(f"{rid}: {UNSUPPORTED_FORMAT}"), row["error_message"]
        assert row["decode_s"] < 5, (rid, row["decode_s"])
    assert not df["text"].fillna("").str.lower().str.contains(SECRET_WORDS).any()  # sub/speech.wav was not read
    assert listener.connections == []


@pytest.mark.ray
def test_job_gives_a_non_utf8_name_an_escaped_error_row_and_goes_on(hostile_job):
    result, df = hostile_job
    assert result.returncode == 0 and df is not None, result.stderr[-3000:]
    assert sorted(df.index) == sorted(["bad\\xff.flac", "ffconcat.wav", "hls.mp3", "jfk.flac", "sdp.wav"])
    row = df.loc["bad\\xff.flac"]
    assert row["status"] == "error" and row["error_type"] == "InputNameError"
    assert row["audio_filepath"] == "bad\\xff.flac" and "not valid UTF-8" in row["error_message"]
    assert df.loc["jfk.flac", "status"] == "ok"
    assert JFK_PHRASE in df.loc["jfk.flac", "text"].lower().replace(",", "")
    assert "5 files: 1 ok, 0 empty, 4 error" in result.stdout


def test_a_manifest_path_escaped_as_a_lone_surrogate_is_an_error_row_other_fields_stop(tmp_path):
    """JSON can spell a name that is not UTF-8 (``json.dumps(os.fsdecode(name))`` writes ``"bad\\udcff.flac"``): the
    same escaped error row; such text in another field is a bad manifest line."""
    from pipelines.core.errors import ManifestError
    from pipelines.io.manifest import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "bad\\udcff.flac"}\n{"path": "jfk.flac"}\n')
    rows = read_manifest(str(manifest))
    assert rows[0].audio_filepath == rows[0].id == "bad\\xff.flac" and "not valid UTF-8" in rows[0].error
    assert rows[1].audio_filepath == "jfk.flac" and rows[1].error is None
    manifest.write_text('{"path": "a.flac"}\n{"path": "b.flac", "prompt": "x\\ud800y"}\n')
    with pytest.raises(ManifestError, match=r"line 2: the prompt is not valid UTF-8"):
        read_manifest(str(manifest))
