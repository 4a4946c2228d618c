"""Decode any container/codec PyAV (FFmpeg) reads into float32 mono 16 kHz, in-process (no subprocess per file).

The resampler is FFmpeg's (libswresample through ``av.AudioResampler``), the same path faster-whisper's own
``decode_audio`` takes; channels are down-mixed by FFmpeg's standard matrix.

Every input is opened through :func:`open_audio`, which lets FFmpeg use only the demuxers of
:data:`ACCEPTED_DEMUXERS` (plain single-file audio/video containers) and no protocol at all: a playlist, concat
list or session description (ffconcat, HLS, SDP...) uploaded as "audio" is refused before FFmpeg reads anything
but the bytes it probes, so it can never make the decoder open another file or a socket.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, replace
from typing import BinaryIO, Iterator, Union

import av
import numpy as np

from pipelines.core.errors import AudioDecodeError, AudioLimitError, AudioTooLongError

from pipelines.core.constants import SAMPLE_RATE  # noqa: F401 - Hz, Whisper's input rate (re-exported here)
#: A file whose container says it lasts longer than this fraction more than what decodes is called truncated.
TRUNCATION_TOLERANCE = 0.05
TRUNCATION_MIN_S = 0.5  # ...and the gap must be at least this many seconds (container estimates are rough)

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]

#: The FFmpeg demuxers an input may be read with (the parts of FFmpeg's comma-joined demuxer names, e.g. the
#: QuickTime demuxer is "mov,mp4,m4a,3gp,3g2,mj2"): plain single-file audio and audio/video containers, none of
#: which opens anything but the bytes it is given. Left out on purpose, among others: concat/ffconcat, hls,
#: dash, sdp, rtp, rtsp, image2, tee, data, lavfi, and text formats (subtitles, tty).
ACCEPTED_DEMUXERS = frozenset(
    "wav w64 flac mp3 ogg mov mp4 m4a 3gp 3g2 mj2 matroska webm aac aiff caf amr amrnb amrwb ac3 eac3 wv ape tta "
    "au asf nut avi mpeg mpegts".split()
)
#: What every refusal to open an input says (the job's error rows, the endpoint's 400 body).
UNSUPPORTED_FORMAT = "not a supported audio format"
#: FFmpeg's AVFormatContext options for every open: ``format_whitelist`` is checked right after probing, before
#: the demuxer reads its header; ``protocol_whitelist`` names no protocol (there is none called "none"), so no
#: demuxer can open a file, URL or socket beside the input (FFmpeg opens the input itself through our Python file
#: object, not a protocol). PyAV 18 passes ``container_options`` to ``avformat_open_input`` (``options`` would
#: also reach the codecs).
_CONTAINER_OPTIONS = {"format_whitelist": ",".join(sorted(ACCEPTED_DEMUXERS)), "protocol_whitelist": "none"}


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


def _label(source: AudioSource, name: str | None) -> str:
    return name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<bytes>")


def _unsupported(label: str, why: str) -> str:
    return f"{label}: {UNSUPPORTED_FORMAT} (not a readable audio/video file: {why})"


@contextlib.contextmanager
def open_audio(source: AudioSource, name: str | None = None) -> Iterator[av.container.InputContainer]:
    """Open ``source`` (a local path, the file's bytes, or a binary file object) for reading with FFmpeg, as a
    context manager that closes the container (and the file it opened).

    FFmpeg probes the first bytes, then may go on only with a demuxer of :data:`ACCEPTED_DEMUXERS`; no protocol is
    allowed, so nothing but ``source`` itself is ever read (a path is opened here, in Python, and handed to FFmpeg
    as a file object; its name still serves FFmpeg's probe as a hint). The refusal does not depend on anything the
    input points to, so it says nothing about other files.

    Raises:
        AudioDecodeError: "not a supported audio format" for a demuxer off the list or bytes FFmpeg cannot read;
            "permission denied" for a path that cannot be opened for reading.
    """
    label = _label(source, name)
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            try:
                source = stack.enter_context(open(os.fspath(source), "rb"))
            except PermissionError as exc:
                raise AudioDecodeError(f"{label}: permission denied") from exc
            except OSError as exc:
                raise AudioDecodeError(f"{label}: cannot be read ({exc.strerror or exc})") from exc
        try:
            container = av.open(source, mode="r", metadata_errors="ignore", container_options=_CONTAINER_OPTIONS)
        except av.error.ArgumentError as exc:  # EINVAL: the probed demuxer is not on the list
            raise AudioDecodeError(_unsupported(label, "its container is not on the accepted list (wav, flac, mp3, "
                                                       "ogg/opus, m4a/mp4/mov, mkv/webm, aac, ...)")) from exc
        except PermissionError as exc:
            raise AudioDecodeError(f"{label}: permission denied") from exc
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise AudioDecodeError(_unsupported(label, getattr(exc, "strerror", None) or str(exc))) from exc
        with container:
            demuxer = container.format.name
            if not set(demuxer.split(",")) & ACCEPTED_DEMUXERS:  # the whitelist again, should FFmpeg not apply it
                raise AudioDecodeError(_unsupported(label, f"the {demuxer} format is not accepted"))
            yield container


def _check_input(source: AudioSource, label: str) -> None:
    """Refuse, before FFmpeg sees it, empty bytes, a local path that is a directory, missing or empty, and a wav
    whose header claims more data than the file holds (:func:`check_wav_header`).

    Raises:
        AudioDecodeError: naming the problem.
    """
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise AudioDecodeError(f"{label}: file is empty (0 bytes)")
        check_wav_header(bytes(source[:65536]), len(source), label)
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


@dataclass(frozen=True)
class _Decoding:
    """One decode's settings and what the header said: the input's ``label`` for messages, the output
    ``sample_rate`` (Hz), the guards (``limits``, ``max_duration_s`` from ``duration_field``) and the container's
    declared duration (s; None: not declared)."""

    label: str
    sample_rate: int
    limits: SourceLimits | None
    max_duration_s: float | None
    duration_field: str
    declared_s: float | None = None

    def truncated(self, done_s: float) -> bool:
        """Whether ``done_s`` seconds fall short of the declared duration by more than the tolerance."""
        d = self.declared_s
        return d is not None and d - done_s > max(TRUNCATION_MIN_S, TRUNCATION_TOLERANCE * d)


def _audio_stream(container: av.container.InputContainer,
                  plan: _Decoding) -> tuple[av.audio.stream.AudioStream, int, int, _Decoding]:
    """The first audio stream with its sample rate (Hz) and channel count, after the header's checks: stream
    limits and declared duration. The returned settings carry the declared duration.

    Raises:
        AudioDecodeError: no audio stream. AudioLimitError, AudioTooLongError: a guard refuses it.
    """
    label = plan.label
    if not container.streams.audio:
        raise AudioDecodeError(f"{label}: the file has no audio stream")
    stream = container.streams.audio[0]
    source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    source_channels = int(stream.codec_context.channels or 0)
    check_source_limits(label, source_rate, source_channels, plan.limits)
    declared_s = _declared_duration_s(container, stream)
    limit_s = plan.max_duration_s
    if limit_s is not None and declared_s is not None and declared_s > limit_s:
        raise AudioTooLongError(
            f"{label}: {format_duration(declared_s)} long, above the limit of {format_duration(limit_s)} "
            f"({plan.duration_field})"
        )
    return stream, source_rate, source_channels, replace(plan, declared_s=declared_s)


def _decode_pieces(container: av.container.InputContainer, stream: av.audio.stream.AudioStream,
                   plan: _Decoding) -> list[np.ndarray]:
    """Decode and resample ``stream`` to float32 mono at ``plan.sample_rate``, in pieces; stops once the output
    passes ``plan.max_duration_s`` by a second.

    Raises:
        AudioTooLongError: it decodes to more than ``max_duration_s``.
        AudioLimitError: the first decoded frame is outside the stream limits.
        AudioDecodeError: FFmpeg failed (truncated or corrupt, when short of the declared duration).
    """
    label, sample_rate, max_duration_s = plan.label, plan.sample_rate, plan.max_duration_s
    max_samples = None if max_duration_s is None else int(max_duration_s * sample_rate) + sample_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    pieces: list[np.ndarray] = []
    n_samples = 0
    try:
        for frame in container.decode(stream):
            if not pieces:
                check_source_limits(label, frame.sample_rate, frame.layout.nb_channels, plan.limits)
            frame.pts = None  # let the resampler run on sample counts, not possibly broken timestamps
            for out in resampler.resample(frame):
                piece = out.to_ndarray().reshape(-1)
                pieces.append(piece)
                n_samples += piece.shape[0]
            if max_samples is not None and n_samples > max_samples:
                said = "declares no duration" if plan.declared_s is None else \
                    f"declares {format_duration(plan.declared_s)}"
                raise AudioTooLongError(
                    f"{label}: the container {said} but it decodes to more than "
                    f"{format_duration(max_duration_s)} ({plan.duration_field}); stopped decoding"
                )
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray().reshape(-1))
    except AudioDecodeError:
        raise
    except (av.error.FFmpegError, ValueError, MemoryError) as exc:
        done_s = n_samples / sample_rate
        if plan.truncated(done_s):
            raise AudioDecodeError(f"{label}: truncated or corrupt: decoding failed after {done_s:.2f} s of the "
                                   f"{plan.declared_s:.2f} s the header declares ({exc})") from exc
        raise AudioDecodeError(f"{label}: decoding failed after {done_s:.2f} s ({exc})") from exc
    return pieces


def _checked_samples(pieces: list[np.ndarray], plan: _Decoding) -> np.ndarray:
    """The pieces joined into one float32 array, shape (n_samples,), refused when empty, shorter than the header
    declares (truncated) or holding NaN/inf.

    Raises:
        AudioDecodeError: naming which.
    """
    label = plan.label
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    decoded_s = samples.shape[0] / plan.sample_rate
    if samples.shape[0] == 0:
        raise AudioDecodeError(f"{label}: no audio samples could be decoded")
    if plan.truncated(decoded_s):
        raise AudioDecodeError(
            f"{label}: truncated: the header says {plan.declared_s:.2f} s but only {decoded_s:.2f} s decode"
        )
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int((~finite).sum())
        raise AudioDecodeError(f"{label}: {bad} samples are NaN or infinite; the file is corrupt")
    return samples


def decode_audio(
    source: AudioSource,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = None,
    name: str | None = None,
    limits: SourceLimits | None = None,
    duration_field: str = "chunking.max_audio_duration_s",
) -> AudioArray:
    """Decode the first audio stream of ``source`` (path, bytes or binary file object) to mono ``sample_rate``.

    Works for the containers of :data:`ACCEPTED_DEMUXERS` (opened by :func:`open_audio`): wav (int16/24/32,
    float32), flac, mp3, ogg/vorbis, opus, m4a/aac, and the audio track of mp4/mov/mkv/webm video, among others;
    any input sample rate and channel count.

    Args:
        source: a local path, the file's bytes, or a binary file object.
        sample_rate: output rate in Hz (16000 for Whisper).
        max_duration_s: refuse files whose container declares a longer duration, before decoding; where the
            container declares none, stop decoding once the output passes it by a second (guards memory: at most
            ``max_duration_s + 1`` seconds of float32 samples are ever held).
        name: how to name the input in error messages (defaults to the path).
        limits: refuse streams whose sample rate or channel count is outside these, before decoding (and again on
            the first decoded frame, for containers that only say then).
        duration_field: the setting that ``max_duration_s`` comes from, named in the too-long message.

    Returns:
        :class:`AudioArray` with float32 samples, shape (n_samples,).

    Raises:
        AudioDecodeError: missing or empty input, a directory, unreadable (permissions), not audio or a container
            off :data:`ACCEPTED_DEMUXERS` ("not a supported audio format"), no audio stream, a decode error, a file
            that ends before its header says it should (truncated), or NaN/inf samples.
        AudioTooLongError: the declared duration is above ``max_duration_s``, or the decoded one (no declared
            duration) passes it.
        AudioLimitError: the sample rate or channel count is outside ``limits``.
    """
    label = _label(source, name)
    _check_input(source, label)
    plan = _Decoding(label, sample_rate, limits, max_duration_s, duration_field)
    with open_audio(source, label) as container:
        stream, source_rate, source_channels, plan = _audio_stream(container, plan)
        pieces = _decode_pieces(container, stream, plan)
    return AudioArray(_checked_samples(pieces, plan), sample_rate, source_rate, source_channels)
