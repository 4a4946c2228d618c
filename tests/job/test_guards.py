"""A corpus of bad inputs made here, beside real clips: each gets the right row (an error with a reason, empty, or
ok), the job exits 0, the good files are all transcribed; and the guards that keep memory bounded."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import struct
import threading

import av
import numpy as np
import pandas as pd
import pytest

from pipelines.core.audio import decode_audio
from pipelines.core.errors import (AudioDecodeError, AudioLimitError, AudioTooLongError, SourceReadError,
                                   SourceTooLargeError, input_error)
from pipelines.io.reading import hash_source, read_source
from pipelines.transcribe import main
from tests.conftest import JFK, JFK_PHRASE, ROOT
from tests.helpers import read_clip, write_audio

LJ1 = "ljspeech/LJ001-0001.wav"
LJ1_WORDS = "printing in the only sense"
LJ2 = "ljspeech/LJ001-0002.flac"  # "in being comparatively modern."


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, data_size: int | None = None) -> bytes:
    """A RIFF/WAVE file by hand: int16 PCM, or IEEE float32 for float ``samples`` (NaN and inf pass through
    untouched, which an encoder would not guarantee); ``data_size`` overrides the data chunk's declared size."""
    is_float = samples.dtype == np.float32
    data = samples.astype("<f4" if is_float else "<i2").tobytes()
    bits = 32 if is_float else 16
    size = len(data) if data_size is None else data_size
    fmt = struct.pack("<HHIIHH", 3 if is_float else 1, channels, rate, rate * channels * bits // 8,
                      channels * bits // 8, bits)
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) \
        + fmt + b"data" + struct.pack("<I", size) + data


def unreadable_file(folder) -> str | None:
    """A path that open() refuses with EACCES. Tests usually run as root, where chmod 000 stops nothing, so as root
    this is a link to a write-only sysfs attribute (the kernel refuses to open those for reading, root or not);
    None where there is none."""
    if os.geteuid() != 0:
        path = folder / "locked.wav"
        path.write_bytes(b"RIFF" + b"\0" * 100)
        path.chmod(0)
        return str(path)
    for candidate in sorted(glob.glob("/sys/bus/pci/rescan") + glob.glob("/sys/devices/pci*/*/rescan")
                            + glob.glob("/sys/class/*/*") + glob.glob("/sys/kernel/*")):
        try:
            with open(candidate, "rb"):
                continue
        except PermissionError:
            link = folder / "locked.wav"
            link.symlink_to(candidate)
            return str(link)
        except OSError:
            continue
    return None


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory, corpus):
    """(folder, manifest, expected): expected maps each id to (status, words in the error message or text)."""
    tmp = tmp_path_factory.mktemp("guards")
    d = tmp / "in"
    d.mkdir()
    rng = np.random.default_rng(6)
    jfk, rate = read_clip(JFK)
    jfk_mono = jfk.mean(axis=0)
    jfk16 = (np.interp(np.arange(0, len(jfk_mono), rate / 16000), np.arange(len(jfk_mono)), jfk_mono)
             .astype(np.float32))
    expected: dict[str, tuple[str, str]] = {}
    rows = []

    def add(rid, path, status, words):
        rows.append({"audio_filepath": path, "id": rid})
        expected[rid] = (status, words)

    (d / "zero.wav").write_bytes(b"")
    add("zero-bytes", "in/zero.wav", "error", "empty (0 bytes)")
    (d / "random.mp3").write_bytes(rng.bytes(64_000))
    add("random-bytes", "in/random.mp3", "error", "not a readable audio")
    flac = (corpus / "librispeech" / "2412-153948-0000.flac").read_bytes()
    (d / "truncated.flac").write_bytes(flac[: len(flac) * 2 // 5])
    add("truncated-flac", "in/truncated.flac", "error", "truncated")
    whole = wav_bytes((jfk16 * 20000).astype(np.int16), 16000)
    (d / "short-data.wav").write_bytes(whole[: len(whole) * 3 // 5])
    add("wav-header-claims-more", "in/short-data.wav", "error", "the wav header declares")
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        samples = jfk16.copy()
        samples[16000:16100] = bad
        (d / f"{name}.wav").write_bytes(wav_bytes(samples, 16000))
        add(f"{name}-samples", f"in/{name}.wav", "error", "NaN or infinite")
    write_audio(d / "8ch-96k.wav", np.tile(jfk_mono, (8, 1)), rate, "pcm_s24le", "s32", layout="7.1", out_rate=96000)
    add("8ch-96k", "in/8ch-96k.wav", "ok", JFK_PHRASE)
    write_audio(d / "silence-10min.flac", np.zeros(16000 * 600, np.float32), 16000, "flac", "s16")
    add("silence-10min", "in/silence-10min.flac", "empty", "")
    noise = np.clip(rng.standard_normal(16000 * 600) * 0.1, -1, 1).astype(np.float32)
    write_audio(d / "noise-10min.flac", noise, 16000, "flac", "s16")
    add("white-noise-10min", "in/noise-10min.flac", "empty", "")
    odd = d / "dir with spaces" / "Ñandú été 語 — clip #1.flac"
    odd.parent.mkdir()
    shutil.copy(corpus / LJ2, odd)
    add("odd-path", str(odd.relative_to(tmp)), "ok", "comparatively modern")
    (d / "folder.wav").mkdir()
    add("directory", "in/folder.wav", "error", "is a directory")
    os.mkfifo(d / "pipe.wav")
    add("fifo", "in/pipe.wav", "error", "is a FIFO")
    locked = unreadable_file(d)
    if locked:
        add("unreadable", locked, "error", "permission denied")
    tone = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)
    (d / "768k.wav").write_bytes(wav_bytes(tone, 768000))
    add("rate-too-high", "in/768k.wav", "error", "768000 Hz is above the limit")
    (d / "100hz.wav").write_bytes(wav_bytes(tone, 100))
    add("rate-too-low", "in/100hz.wav", "error", "100 Hz is below the limit")
    (d / "70ch.wav").write_bytes(wav_bytes(np.tile(tone[:1600], 70), 16000, channels=70))
    add("too-many-channels", "in/70ch.wav", "error", "70 channels, above the limit")
    add("jfk", str(JFK), "ok", JFK_PHRASE)
    add("lj1", str(corpus / LJ1), "ok", LJ1_WORDS)
    add("lj2", str(corpus / LJ2), "ok", "comparatively modern")
    manifest = tmp / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return tmp, manifest, expected


@pytest.fixture(scope="module")
def bad_job(bad_corpus, ray_local):
    tmp, manifest, expected = bad_corpus
    out = tmp / "out"
    args = ["--config", str(ROOT / "configs" / "local.yaml"), "--manifest", str(manifest), "--output", str(out),
            "--set", "progress=false"]
    code = main(args + ["--run-id", "bad"])
    rerun = main(args + ["--run-id", "again"])
    return code, rerun, pd.read_parquet(out).set_index("id"), expected


@pytest.mark.ray
def test_job_exits_0_with_one_row_per_input(bad_job):
    code, rerun, df, expected = bad_job
    assert code == 0 and rerun == 0
    assert sorted(df.index) == sorted(expected) and df.index.is_unique
    assert (df["run_id"] == "bad").all()  # the rerun found every row done, error rows included


@pytest.mark.ray
@pytest.mark.parametrize("rid", ["zero-bytes", "random-bytes", "truncated-flac", "wav-header-claims-more",
                                 "nan-samples", "inf-samples", "8ch-96k", "silence-10min", "white-noise-10min",
                                 "odd-path", "directory", "fifo", "unreadable", "rate-too-high", "rate-too-low",
                                 "too-many-channels", "jfk", "lj1", "lj2"])
def test_each_input_gets_the_right_row(bad_job, rid):
    _, _, df, expected = bad_job
    if rid not in expected:
        pytest.skip("no path here that open() refuses for this user (root without a write-only sysfs file)")
    status, words = expected[rid]
    row = df.loc[rid]
    assert row["status"] == status, (row["status"], row["error_message"])
    if status == "error":
        assert words in row["error_message"] and row["error_type"] and row["attempts"] == 1
        assert row["audio_filepath"] in row["error_message"] or rid == "unreadable"
    elif status == "ok":
        assert words in row["text"].lower().replace(",", "") and row["num_chunks"] >= 1
    else:
        assert not row["text"] and row["duration_s"] == pytest.approx(600, abs=0.1)
    if rid == "8ch-96k":
        assert row["source_channels"] == 8 and row["source_sample_rate"] == 96000
    if rid.startswith("rate-") or rid == "too-many-channels":
        assert row["error_type"] == "AudioLimitError"


def test_a_stream_without_a_duration_stops_decoding_at_the_limit():
    """NUT declares no duration: decoding stops a second past the limit instead of filling memory."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="nut") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000 * 30), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame) + stream.encode(None):
            container.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data)) as probe:
        assert not probe.streams.audio[0].duration and not probe.duration
    assert decode_audio(data, max_duration_s=60).duration_s == pytest.approx(30, abs=0.1)
    with pytest.raises(AudioTooLongError, match="declares no duration.*stopped decoding"):
        decode_audio(data, max_duration_s=10)


def test_a_file_above_the_size_limit_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 5000)
    with pytest.raises(SourceTooLargeError, match="guards.max_file_bytes"):
        read_source(str(big), max_bytes=4096)
    with pytest.raises(SourceTooLargeError, match="guards.max_file_bytes"):
        hash_source(str(big), max_bytes=4096)
    assert len(read_source(str(big), max_bytes=5000).content) == 5000


def test_storage_refusals_keep_the_error_types_users_see(tmp_path, job_config):
    """Storage raises its own errors (it knows nothing of audio); an error row still names them as it always has:
    AudioLimitError above guards.max_file_bytes, AudioDecodeError for a missing or empty file."""
    from pipelines.stages import DecodeChunkStage

    too_large = SourceTooLargeError("x.wav: above the limit")
    assert isinstance(input_error(too_large), AudioLimitError) and str(input_error(too_large)) == str(too_large)
    assert type(input_error(SourceReadError("x.wav: no such file"))) is AudioDecodeError
    (tmp_path / "big.wav").write_bytes(b"\0" * 5000)
    (tmp_path / "empty.wav").write_bytes(b"")
    rows = [{"id": name, "audio_filepath": f"{name}.wav", "uri": str(tmp_path / f"{name}.wav"), "language": None,
             "prompt": None, "reference": None, "line": 1} for name in ("big", "empty", "missing")]
    cfg = job_config.model_copy(update={"guards": job_config.guards.model_copy(update={"max_file_bytes": 4096})})
    out = {r["id"]: r for r in DecodeChunkStage(cfg)(rows).to_pylist()}
    assert out["big"]["error_type"] == "AudioLimitError" and "guards.max_file_bytes" in out["big"]["error_message"]
    assert out["empty"]["error_type"] == "AudioDecodeError" and "empty" in out["empty"]["error_message"]
    assert out["missing"]["error_type"] == "AudioDecodeError" and "no such file" in out["missing"]["error_message"]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    errors = []

    def read_both():
        for reader in (read_source, hash_source):
            try:
                reader(str(fifo))
            except SourceReadError as exc:
                errors.append(str(exc))

    worker = threading.Thread(target=read_both, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert len(errors) == 2 and all("is a FIFO" in e for e in errors)
