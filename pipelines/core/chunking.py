"""Cut audio into chunks of at most 30 s at speech pauses, with the Silero VAD that ships in faster-whisper.

A chunk is a contiguous span of the file, ``[offset_s, offset_s + duration_s)``, so a time inside a chunk maps
back to file time by adding ``offset_s`` (WhisperX's ``merge_chunks`` does the same). A file no longer than
``max_chunk_s`` stays one chunk from 0 to its end, exactly the window plain faster-whisper decodes; VAD then
only decides whether it holds speech at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
from pipelines.core.options import ChunkingConfig
from pipelines.core.whisper import speech_timestamps


@dataclass(frozen=True)
class SpeechSpan:
    """A VAD speech run, in samples of the 16 kHz audio: ``[start, end)``."""

    start: int
    end: int


@dataclass(frozen=True)
class ChunkSpan:
    """A chunk of a file: ``offset_s`` and ``duration_s`` in seconds of file time; ``speech``: the VAD speech runs
    inside it as ``(start, end)`` seconds of chunk time (0 = the chunk's start), None when the VAD did not run."""

    offset_s: float
    duration_s: float
    speech: Optional[tuple[tuple[float, float], ...]] = None


def detect_speech(samples: np.ndarray, cfg: ChunkingConfig) -> list[SpeechSpan]:
    """Silero VAD speech runs of ``samples`` (float32, shape (n_samples,), 16 kHz).

    Runs longer than ``cfg.max_chunk_s`` are split by the VAD itself (``max_speech_duration_s``), at the
    quietest point it finds, so every run fits one chunk.
    """
    spans = speech_timestamps(
        samples, threshold=cfg.vad_threshold, min_speech_duration_ms=cfg.min_speech_duration_ms,
        max_speech_duration_s=cfg.max_chunk_s, min_silence_duration_ms=cfg.min_silence_duration_ms,
        speech_pad_ms=cfg.speech_pad_ms, sample_rate=cfg.sample_rate,
    )
    return [SpeechSpan(start, end) for start, end in spans]


def merge_speech(
    speech: list[SpeechSpan], n_samples: int, cfg: ChunkingConfig
) -> list[ChunkSpan]:
    """Greedily merge consecutive speech runs into contiguous chunks of at most ``cfg.max_chunk_s``.

    A file of at most ``max_chunk_s`` with any speech is one chunk covering the whole file. Longer files get chunks
    that start at a run's start and end at the last run's end that still fits; silence between chunks is skipped.

    Returns:
        Chunks in file order; [] when there is no speech.
    """
    rate = cfg.sample_rate
    max_len = int(cfg.max_chunk_s * rate)
    if not speech:
        return []
    if n_samples <= max_len:
        return [ChunkSpan(0.0, n_samples / rate)]
    chunks: list[ChunkSpan] = []
    start, end = speech[0].start, speech[0].end
    for span in speech[1:]:
        if span.end - start <= max_len:
            end = span.end
        else:
            chunks.append(ChunkSpan(start / rate, (min(end, start + max_len) - start) / rate))
            start, end = span.start, span.end
    chunks.append(ChunkSpan(start / rate, (min(end, start + max_len) - start) / rate))
    return chunks


def chunk_audio(samples: np.ndarray, cfg: ChunkingConfig) -> list[ChunkSpan]:
    """Chunks of ``samples`` (float32, shape (n_samples,), 16 kHz) for transcription.

    With ``cfg.vad_filter`` off, the file is cut into consecutive ``max_chunk_s`` windows and nothing is judged
    silent. With it on, see :func:`merge_speech`; [] means the file has no speech (status ``empty``).
    """
    n = samples.shape[0]
    rate = cfg.sample_rate
    if not cfg.vad_filter:
        step = int(cfg.max_chunk_s * rate)
        return [ChunkSpan(s / rate, (min(n, s + step) - s) / rate) for s in range(0, n, step)]
    speech = detect_speech(samples, cfg)
    return [with_speech(span, speech, rate) for span in merge_speech(speech, n, cfg)]


def with_speech(span: ChunkSpan, speech: list[SpeechSpan], rate: int) -> ChunkSpan:
    """``span`` with :attr:`ChunkSpan.speech` set: the parts of the ``speech`` runs (samples at ``rate``) inside it,
    in seconds of chunk time, rounded to the millisecond."""
    start, end = span.offset_s, span.offset_s + span.duration_s
    inside = tuple((round(max(s.start / rate, start) - start, 3), round(min(s.end / rate, end) - start, 3))
                   for s in speech if min(s.end / rate, end) > max(s.start / rate, start))
    return replace(span, speech=inside)


def slice_chunk(samples: np.ndarray, span: ChunkSpan, sample_rate: int) -> np.ndarray:
    """The samples of ``span`` (a view, float32, shape (n,))."""
    start = int(round(span.offset_s * sample_rate))
    return samples[start : start + int(round(span.duration_s * sample_rate))]
