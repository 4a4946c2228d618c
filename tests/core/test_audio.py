"""Decoding: every format the issue names, any rate and channel count, and bad inputs as named errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pipelines.core.audio import SAMPLE_RATE, decode_audio
from pipelines.core.errors import AudioDecodeError, AudioTooLongError
from pipelines.core.transcriber import Chunk
from tests.conftest import JFK, JFK_PHRASE
from tests.helpers import read_clip, write_audio

JFK_SECONDS = 11.0

# name -> (suffix, audio codec, sample format, container format, rate, video codec)
FORMATS = {
    "wav_s16": (".wav", "pcm_s16le", "s16", None, None, None),
    "wav_s24": (".wav", "pcm_s24le", "s32", None, None, None),
    "wav_s32": (".wav", "pcm_s32le", "s32", None, None, None),
    "wav_f32": (".wav", "pcm_f32le", "flt", None, None, None),
    "flac": (".flac", "flac", "s16", None, None, None),
    "mp3": (".mp3", "libmp3lame", "fltp", None, None, None),
    "opus": (".opus", "libopus", "flt", "opus", 48000, None),
    "m4a_aac": (".m4a", "aac", "fltp", "ipod", None, None),
    "mp4_video": (".mp4", "aac", "fltp", "mp4", None, "libx264"),
    "mov_video": (".mov", "aac", "fltp", "mov", None, "mpeg4"),
    "mkv_video": (".mkv", "libmp3lame", "fltp", "matroska", None, "mpeg4"),
    "webm_video": (".webm", "libopus", "flt", "webm", 48000, "libvpx"),
}


@pytest.fixture(scope="module")
def jfk_clip():
    samples, rate = read_clip(JFK)
    assert samples.shape[0] == 2 and rate == 44100  # stereo 44.1 kHz source
    return samples, rate


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, jfk_clip):
    samples, rate = jfk_clip
    folder = tmp_path_factory.mktemp("formats")
    out = {}
    for name, (suffix, codec, fmt, container, out_rate, video) in FORMATS.items():
        out[name] = write_audio(folder / f"jfk_{name}{suffix}", samples, rate, codec, fmt,
                                container_format=container, video_codec=video, out_rate=out_rate)
    return out


def test_every_format_decodes_to_16k_mono_and_transcribes(encoded, corpus, transcriber):
    decoded = {name: decode_audio(path) for name, path in encoded.items()}
    # the corpus's own ogg/vorbis, opus and m4a re-encodes of a real LJ Speech clip
    for suffix in ("ogg", "opus", "m4a"):
        path = next((corpus / "ljspeech").glob(f"*.{suffix}"))
        decoded[f"corpus_{suffix}"] = decode_audio(path)
    for name, audio in decoded.items():
        assert audio.sample_rate == SAMPLE_RATE
        assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1, name
        assert np.isfinite(audio.samples).all() and np.abs(audio.samples).max() <= 1.5, name
    for name in encoded:
        assert abs(decoded[name].duration_s - JFK_SECONDS) < 0.15, (name, decoded[name].duration_s)
        assert decoded[name].source_channels == 2, name
    # one cross-file batch; each copy in its own pack group: twelve copies of one speech in shared windows
    # would test the model's patience with repetition, not the decoder
    chunks = [Chunk(name, 0, 0.0, decoded[name].samples, pack_group=name) for name in encoded]
    results = transcriber.transcribe_chunks(chunks)
    for res in results:
        text = "".join(seg.text for seg in res.segments).lower().replace(",", "")
        assert JFK_PHRASE in text, (res.key, text)


def test_any_rate_and_channel_count(tmp_path):
    rate, seconds = 96000, 2.0
    t = np.arange(int(rate * seconds)) / rate
    eight = np.stack([0.1 * np.sin(2 * np.pi * (220 + 50 * c) * t) for c in range(8)])
    path = write_audio(tmp_path / "eight.wav", eight, rate, "pcm_s24le", "s32", layout="octagonal")
    audio = decode_audio(path)
    assert audio.source_sample_rate == rate and audio.source_channels == 8
    assert audio.samples.shape[0] == pytest.approx(SAMPLE_RATE * seconds, abs=2)
    assert 0.05 < np.abs(audio.samples).max() < 1.0


def test_8khz_mono_upsamples(tmp_path):
    t = np.arange(8000) / 8000
    path = write_audio(tmp_path / "tel.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 8000, "pcm_s16le", "s16")
    audio = decode_audio(path)
    assert audio.source_sample_rate == 8000 and audio.samples.shape[0] == pytest.approx(16000, abs=2)


def test_bytes_input_matches_path(encoded):
    path = encoded["flac"]
    assert np.array_equal(decode_audio(path.read_bytes()).samples, decode_audio(path).samples)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is not audio, just text\n" * 20), "not a readable audio"),
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "directory"),
    ],
    ids=["empty", "text-as-wav", "missing", "directory"],
)
def test_bad_inputs_raise_named_errors(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioDecodeError, match=reason):
        decode_audio(path)


def test_truncated_mp3_and_flac_are_errors(encoded, tmp_path):
    for name in ("mp3", "flac"):
        data = encoded[name].read_bytes()
        cut = tmp_path / f"cut_{name}{encoded[name].suffix}"
        cut.write_bytes(data[: len(data) // 3])
        with pytest.raises(AudioDecodeError, match="truncated|decoding failed"):
            decode_audio(cut)


def test_wav_header_claiming_more_data_is_an_error(encoded, tmp_path):
    data = bytearray(encoded["wav_s16"].read_bytes())
    cut = bytes(data[: len(data) // 2])  # RIFF/data sizes still claim the whole clip
    path = tmp_path / "short.wav"
    path.write_bytes(cut)
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(path)


def test_nan_samples_are_an_error(tmp_path):
    samples = np.full(16000, 0.1, np.float32)
    samples[100:200] = np.nan
    header = b"RIFF" + struct.pack("<I", 36 + samples.nbytes) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 3, 1, 16000, 16000 * 4, 4, 32) + b"data" + struct.pack("<I", samples.nbytes)
    path = tmp_path / "nan.wav"
    path.write_bytes(header + samples.tobytes())
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio(path)


def test_too_long_is_refused_before_decoding(encoded):
    with pytest.raises(AudioTooLongError, match="above the limit"):
        decode_audio(encoded["flac"], max_duration_s=5.0)
