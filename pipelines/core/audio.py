"""Decode any container/codec PyAV (FFmpeg) reads into float32 mono 16 kHz, in-process (no subprocess per file).

The resampler is FFmpeg's (libswresample through ``av.AudioResampler``), the same path faster-whisper's own
``decode_audio`` takes; channels are down-mixed by FFmpeg's standard matrix.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Union

import av
import numpy as np

from pipelines.core.errors import AudioDecodeError, AudioLimitError, AudioTooLongError

from pipelines.core.constants import SAMPLE_RATE  # noqa: F401 - Hz, Whisper's input rate (re-exported here)
#: A file whose container says it lasts longer than this fraction more than what decodes is called truncated.
TRUNCATION_TOLERANCE = 0.05
TRUNCATION_MIN_S = 0.5  # ...and the gap must be at least this many seconds (container estimates are rough)

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]


@dataclass(frozen=True)
class AudioArray:
    """Decoded audio: ``samples`` is float32, shape (n_samples,), mono at ``sample_rate`` Hz, nominally in [-1, 1].

    ``source_sample_rate`` and ``source_channels`` describe the input stream before resampling.
    """

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        """Duration in seconds (n_samples / sample_rate)."""
        return self.samples.shape[0] / self.sample_rate


@dataclass(frozen=True)
class SourceLimits:
    """What an input stream may be before it is decoded (the job's ``guards``); ``None`` leaves a bound off."""

    min_sample_rate_hz: int | None = None
    max_sample_rate_hz: int | None = None
    max_channels: int | None = None


def check_source_limits(label: str, sample_rate_hz: int, channels: int, limits: SourceLimits | None) -> None:
    """Refuse a stream whose sample rate or channel count is outside ``limits`` (0 means not known yet: passes).

    Raises:
        AudioLimitError: naming the value and the limit (``guards.*``) it breaks.
    """
    if limits is None:
        return
    if sample_rate_hz and limits.min_sample_rate_hz and sample_rate_hz < limits.min_sample_rate_hz:
        raise AudioLimitError(f"{label}: sample rate {sample_rate_hz} Hz is below the limit of "
                              f"{limits.min_sample_rate_hz} Hz (guards.min_sample_rate_hz)")
    if sample_rate_hz and limits.max_sample_rate_hz and sample_rate_hz > limits.max_sample_rate_hz:
        raise AudioLimitError(f"{label}: sample rate {sample_rate_hz} Hz is above the limit of "
                              f"{limits.max_sample_rate_hz} Hz (guards.max_sample_rate_hz)")
    if channels and limits.max_channels and channels > limits.max_channels:
        raise AudioLimitError(f"{label}: {channels} channels, above the limit of {limits.max_channels} "
                              "(guards.max_channels)")


def format_duration(seconds: float) -> str:
    """``'4.00 h'`` from an hour up, else ``'90.0 s'`` (for messages)."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"


def _declared_duration_s(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float | None:
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration:  # None or 0: not known (NUT, live Matroska, pipes)
        return container.duration / av.time_base
    return None


def check_wav_header(header: bytes, total_size: int, label: str) -> None:
    """Refuse a RIFF/WAVE file whose ``data`` chunk claims more bytes than the file holds.

    FFmpeg's wav demuxer quietly decodes what is there (it sizes the stream from the file), so a cut-off wav
    would otherwise pass as a shorter, complete recording.

    Raises:
        AudioDecodeError: the data chunk is larger than the bytes after it.
    """
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(header):
        chunk_id, size = header[pos:pos + 4], int.from_bytes(header[pos + 4:pos + 8], "little")
        if chunk_id == b"data":
            available = total_size - (pos + 8)
            if size not in (0, 0xFFFFFFFF) and size > available:
                raise AudioDecodeError(
                    f"{label}: truncated: the wav header declares {size} data bytes but the file has {available}"
                )
            return
        pos += 8 + size + (size & 1)


def decode_audio(
    source: AudioSource,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = None,
    name: str | None = None,
    limits: SourceLimits | None = None,
) -> AudioArray:
    """Decode the first audio stream of ``source`` (path, bytes or binary file object) to mono ``sample_rate``.

    Works for anything FFmpeg reads: wav (int16/24/32, float32), flac, mp3, ogg/vorbis, opus, m4a/aac, and the audio
    track of mp4/mov/mkv/webm video; any input sample rate and channel count.

    Args:
        source: a local path, the file's bytes, or a binary file object.
        sample_rate: output rate in Hz (16000 for Whisper).
        max_duration_s: refuse files whose container declares a longer duration, before decoding; where the
            container declares none, stop decoding once the output passes it by a second (guards memory: at most
            ``max_duration_s + 1`` seconds of float32 samples are ever held).
        name: how to name the input in error messages (defaults to the path).
        limits: refuse streams whose sample rate or channel count is outside these, before decoding (and again on
            the first decoded frame, for containers that only say then).

    Returns:
        :class:`AudioArray` with float32 samples, shape (n_samples,).

    Raises:
        AudioDecodeError: missing or empty input, a directory, unreadable (permissions), not audio, no audio
            stream, a decode error, a file that ends before its header says it should (truncated), or NaN/inf
            samples.
        AudioTooLongError: the declared duration is above ``max_duration_s``, or the decoded one (no declared
            duration) passes it.
        AudioLimitError: the sample rate or channel count is outside ``limits``.
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise AudioDecodeError(f"{label}: file is empty (0 bytes)")
        check_wav_header(bytes(source[:65536]), len(source), label)
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise AudioDecodeError(f"{label}: is a directory, not an audio file")
        if not os.path.exists(path):
            raise AudioDecodeError(f"{label}: no such file")
        if os.path.getsize(path) == 0:
            raise AudioDecodeError(f"{label}: file is empty (0 bytes)")
        try:
            with open(path, "rb") as f:
                check_wav_header(f.read(65536), os.path.getsize(path), label)
        except PermissionError as exc:
            raise AudioDecodeError(f"{label}: permission denied") from exc

    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except PermissionError as exc:
        raise AudioDecodeError(f"{label}: permission denied") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioDecodeError(f"{label}: not a readable audio/video file ({exc})") from exc

    with container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{label}: the file has no audio stream")
        stream = container.streams.audio[0]
        source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        source_channels = int(stream.codec_context.channels or 0)
        check_source_limits(label, source_rate, source_channels, limits)
        declared_s = _declared_duration_s(container, stream)
        if max_duration_s is not None and declared_s is not None and declared_s > max_duration_s:
            raise AudioTooLongError(
                f"{label}: {format_duration(declared_s)} long, above the limit of {format_duration(max_duration_s)} "
                "(chunking.max_audio_duration_s)"
            )
        max_samples = None if max_duration_s is None else int(max_duration_s * sample_rate) + sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pieces: list[np.ndarray] = []
        n_samples = 0
        try:
            for frame in container.decode(stream):
                if not pieces:
                    check_source_limits(label, frame.sample_rate, frame.layout.nb_channels, limits)
                frame.pts = None  # let the resampler run on sample counts, not possibly broken timestamps
                for out in resampler.resample(frame):
                    piece = out.to_ndarray().reshape(-1)
                    pieces.append(piece)
                    n_samples += piece.shape[0]
                if max_samples is not None and n_samples > max_samples:
                    said = "declares no duration" if declared_s is None else f"declares {format_duration(declared_s)}"
                    raise AudioTooLongError(
                        f"{label}: the container {said} but it decodes to more than "
                        f"{format_duration(max_duration_s)} (chunking.max_audio_duration_s); stopped decoding"
                    )
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
        except AudioDecodeError:
            raise
        except (av.error.FFmpegError, ValueError, MemoryError) as exc:
            done_s = n_samples / sample_rate
            if declared_s is not None and declared_s - done_s > max(TRUNCATION_MIN_S, TRUNCATION_TOLERANCE * declared_s):
                raise AudioDecodeError(f"{label}: truncated or corrupt: decoding failed after {done_s:.2f} s of the "
                                       f"{declared_s:.2f} s the header declares ({exc})") from exc
            raise AudioDecodeError(f"{label}: decoding failed after {done_s:.2f} s ({exc})") from exc

    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    decoded_s = samples.shape[0] / sample_rate
    if samples.shape[0] == 0:
        raise AudioDecodeError(f"{label}: no audio samples could be decoded")
    if declared_s is not None and declared_s - decoded_s > max(TRUNCATION_MIN_S, TRUNCATION_TOLERANCE * declared_s):
        raise AudioDecodeError(
            f"{label}: truncated: the header says {declared_s:.2f} s but only {decoded_s:.2f} s decode"
        )
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int((~finite).sum())
        raise AudioDecodeError(f"{label}: {bad} samples are NaN or infinite; the file is corrupt")
    return AudioArray(samples, sample_rate, source_rate, source_channels)
