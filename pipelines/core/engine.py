"""The engine: the one way audio becomes a transcript (docs/architecture.md, invariant 1).

Three steps, each used unchanged by the batch job's Ray stages, the Serve deployment, the load test and the bench
(they only move data to and from these functions):

1. :func:`prepare`: the bytes of one file -> decoded with the input guards (:class:`InputLimits`) -> Silero VAD
   chunks -> a :class:`PreparedFile` (chunk samples with their offsets and VAD speech, the stream's facts, stage
   timings).
2. :meth:`Engine.transcribe_isolated`: a batch of prepared files from any number of callers -> one
   :class:`Outcome` per file. All chunks go to the transcriber together (cross-file batching and packing); if that
   call fails, each file is retried alone so one bad file fails alone.
3. :class:`~pipelines.core.rows.TranscriptRow`: the one place an output row is built from an outcome.

Reading bytes (local disk, S3...) is not here: it belongs to :mod:`pipelines.io.storage`, which also applies the
file-size guard before reading.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np

from pipelines.core.audio import AudioSource, SourceLimits, decode_audio
from pipelines.core.chunking import chunk_audio, slice_chunk
from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.coverage import Quality
from pipelines.core.options import ChunkingConfig, DecodingConfig, ModelConfig
from pipelines.core.schema import Transcript
from pipelines.core.stitch import stitch, stitch_file
from pipelines.core.transcriber import Chunk, Transcriber
from pipelines.core.whisper import LANGUAGE_CODES  # noqa: F401 - the codes a request may name, for the endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputLimits:
    """What an input may be before (or while) it is decoded; ``None`` leaves a bound off.

    ``max_duration_s`` is refused from the container's declared duration before decoding, else once decoding
    passes it (at most ``max_duration_s + 1`` s of float32 samples are ever held); ``duration_field`` is the
    setting it comes from, named in the error. The stream limits are checked from the header and again on the
    first decoded frame. The job takes them from ``guards`` and ``chunking.max_audio_duration_s``, the endpoint
    from its own ``guards`` (see docs/security.md).
    """

    max_duration_s: Optional[float] = None
    min_sample_rate_hz: Optional[int] = None
    max_sample_rate_hz: Optional[int] = None
    max_channels: Optional[int] = None
    duration_field: str = "chunking.max_audio_duration_s"

    @property
    def stream(self) -> SourceLimits:
        """The sample-rate and channel bounds as :class:`~pipelines.core.audio.SourceLimits`."""
        return SourceLimits(self.min_sample_rate_hz, self.max_sample_rate_hz, self.max_channels)


@dataclass(frozen=True)
class FileSpec:
    """Who a file is, whatever transport brought it: ``key`` is unique within one :meth:`Engine.transcribe_isolated`
    call (the manifest id, a request id); ``name`` names it in error messages; ``language`` and ``prompt`` override
    the decoding options for this file; chunks are packed into shared windows only within one ``pack_group`` (the
    job: the file's folder; the endpoint: the request itself)."""

    key: str
    name: str
    language: Optional[str] = None
    prompt: Optional[str] = None
    pack_group: Optional[str] = None


@dataclass(frozen=True)
class PreparedFile:
    """A decoded file cut into VAD chunks, ready for :meth:`Engine.transcribe_isolated`.

    ``chunk_samples[i]`` is float32, shape (n_samples,), 16 kHz mono, at most ``chunking.max_chunk_s`` seconds,
    starting ``chunk_offsets_s[i]`` seconds into the file. ``duration_s`` is the decoded duration (s);
    ``source_sample_rate`` (Hz) and ``source_channels`` describe the input stream before resampling;
    ``decode_s`` and ``vad_s`` the wall time (s) the two steps took. No chunks means no speech was found.
    ``chunk_speech[i]``, when the VAD ran, holds chunk ``i``'s VAD speech runs as ``(start, end)`` seconds of chunk
    time: the dropped-speech guard and the quality measures compare them with the words (None: unknown).
    """

    spec: FileSpec
    duration_s: float
    source_sample_rate: int
    source_channels: int
    chunk_offsets_s: tuple[float, ...]
    chunk_samples: tuple[np.ndarray, ...]
    decode_s: float = 0.0
    vad_s: float = 0.0
    chunk_speech: Optional[tuple[tuple[tuple[float, float], ...], ...]] = None

    @property
    def speech_s(self) -> Optional[float]:
        """Seconds of VAD speech in the file's chunks (None when unknown)."""
        if self.chunk_speech is None:
            return None
        return round(sum(end - start for runs in self.chunk_speech for start, end in runs), 3)

    @property
    def num_chunks(self) -> int:
        """How many VAD chunks the file was cut into."""
        return len(self.chunk_offsets_s)

    def chunks(self) -> list[Chunk]:
        """The file's chunks as :class:`~pipelines.core.transcriber.Chunk` objects, in file order."""
        s = self.spec
        speech = self.chunk_speech if self.chunk_speech is not None else (None,) * self.num_chunks
        return [Chunk(s.key, i, float(offset), samples, s.language, s.prompt, s.pack_group, runs)
                for i, (offset, samples, runs) in enumerate(zip(self.chunk_offsets_s, self.chunk_samples, speech))]


def prepare(source: AudioSource, spec: FileSpec, chunking: ChunkingConfig,
            limits: InputLimits = InputLimits()) -> PreparedFile:
    """Decode ``source`` (bytes, a binary file object or a local path) with the input guards and cut it into VAD
    chunks of at most ``chunking.max_chunk_s`` seconds.

    Raises:
        AudioDecodeError: not a supported audio format, undecodable, truncated, empty, NaN samples...
        AudioTooLongError: longer than ``limits.max_duration_s`` (a subclass of AudioDecodeError).
        AudioLimitError: a sample rate or channel count outside ``limits`` (a subclass of AudioDecodeError).
    """
    t0 = time.perf_counter()
    max_duration_s = limits.max_duration_s
    audio = decode_audio(source, SAMPLE_RATE, max_duration_s, name=spec.name, limits=limits.stream,
                         duration_field=limits.duration_field)
    t1 = time.perf_counter()
    spans = chunk_audio(audio.samples, chunking)
    samples = tuple(np.ascontiguousarray(slice_chunk(audio.samples, span, SAMPLE_RATE)) for span in spans)
    speech = None if any(span.speech is None for span in spans) else tuple(span.speech for span in spans)
    return PreparedFile(spec, audio.duration_s, audio.source_sample_rate, audio.source_channels,
                        tuple(float(span.offset_s) for span in spans), samples,
                        decode_s=t1 - t0, vad_s=time.perf_counter() - t1, chunk_speech=speech)


@dataclass(frozen=True)
class Failure:
    """Why a file has no transcript: the exception's class name, a message naming the file, and the attempts."""

    error_type: str
    message: str
    attempts: int = 1


@dataclass(frozen=True)
class Outcome:
    """One file's result from :meth:`Engine.transcribe_isolated`: a transcript (segments in file time) and the
    transcription wall time charged to it (s; a batch's time is shared by audio duration), or a failure."""

    key: str
    transcript: Optional[Transcript] = None
    transcribe_s: Optional[float] = None
    failure: Optional[Failure] = None


class Engine:
    """One Whisper model (loaded in ``__init__``) and the code around it that every path shares.

    Args:
        model, decoding: the core's options (``model.batch_size`` chunks per model call).
        transcriber: an already loaded :class:`~pipelines.core.transcriber.Transcriber` (tests, warm replicas).

    Raises (from ``__init__``):
        ModelLoadError: the model cannot be loaded, or CUDA is required and not seen.
    """

    def __init__(self, model: ModelConfig, decoding: DecodingConfig, transcriber: Optional[Transcriber] = None):
        self.model = model
        self.decoding = decoding
        self.transcriber = transcriber or Transcriber(model, decoding)

    @property
    def multilingual(self) -> bool:
        """Whether the model transcribes other languages than English."""
        return self.transcriber.multilingual

    def transcribe(self, files: Sequence[PreparedFile],
                   decoding: Optional[DecodingConfig] = None) -> tuple[list[Transcript], float]:
        """One transcriber call over every chunk of ``files`` (cross-file batching and packing, then the
        dropped-speech guard on each chunk's VAD speech), stitched per file.

        Returns:
            the transcripts in the order of ``files``, each with its
            :class:`~pipelines.core.coverage.Quality` (speech seconds and the part with words, stretches still
            without words, hallucination signals), and the call's wall time (s).

        Raises:
            TranscriptionError: the model failed on a batch (the cause is chained).
        """
        chunks = [c for f in files for c in f.chunks()]
        t0 = time.perf_counter()
        results = self.transcriber.transcribe_chunks(chunks, decoding) if chunks else []
        elapsed = time.perf_counter() - t0
        stitched = stitch(results, {f.spec.key: f.duration_s for f in files})
        return [self._no_speech(f, decoding) if not f.num_chunks else stitched[f.spec.key] for f in files], elapsed

    def _no_speech(self, file: PreparedFile, decoding: Optional[DecodingConfig]) -> Transcript:
        """The transcript of a file without speech: no segments; its language where it is known without a decode."""
        given = file.spec.language or (decoding or self.decoding).language
        known = given if given else (None if self.multilingual else "en")
        transcript = stitch_file([], file.duration_s, known, 1.0 if known else None)
        return transcript if file.chunk_speech is not None else replace(transcript, quality=Quality())

    def transcribe_isolated(self, files: Sequence[PreparedFile], decoding: Optional[DecodingConfig] = None,
                            retries: int = 0) -> list[Outcome]:
        """Transcribe ``files`` together; if that fails, each file alone, up to ``retries`` more times each, so a
        file the model fails on becomes one :class:`Failure` and its batch-mates are transcribed.

        Returns:
            one :class:`Outcome` per file, in order. Never raises for a model failure.
        """
        try:
            transcripts, elapsed = self.transcribe(files, decoding)
        except Exception:  # noqa: BLE001 - isolate the failing file(s) below
            log.warning("batch of %d files failed; retrying each file alone", len(files), exc_info=True)
            return [self._alone(f, decoding, retries) for f in files]
        total = sum(f.duration_s for f in files) or 1.0
        return [Outcome(f.spec.key, t, elapsed * f.duration_s / total) for f, t in zip(files, transcripts)]

    def _alone(self, file: PreparedFile, decoding: Optional[DecodingConfig], retries: int) -> Outcome:
        failure: Union[Failure, None] = None
        for attempt in range(1, retries + 2):
            try:
                (transcript,), elapsed = self.transcribe([file], decoding)
            except Exception as exc:  # noqa: BLE001 - becomes this file's failure
                failure = Failure(type(exc).__name__, f"{file.spec.name}: {exc}", attempt)
                continue
            return Outcome(file.spec.key, transcript, elapsed)
        log.error("%s failed on each of %d attempts: %s", file.spec.name, retries + 1, failure.message)
        return Outcome(file.spec.key, failure=failure)
