"""The one output schema (docs/architecture.md, invariant 4), shared by the Parquet rows and the endpoint's
verbose_json.

Segment and word fields use the names of OpenAI's ``verbose_json``: ``start`` and ``end`` in seconds of file time,
``avg_logprob``, ``compression_ratio``, ``no_speech_prob``, ``temperature``, ``words[].word/start/end/probability``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional

import pyarrow as pa

if TYPE_CHECKING:
    from pipelines.core.coverage import Quality

#: Bumped on any change to :data:`TRANSCRIPT_SCHEMA` (major: a field removed or retyped; minor: a field added).
SCHEMA_VERSION = "1.3"  # 1.1: duplicate_of; 1.2: the quality columns (speech_s ... words_outside_speech); 1.3: speakers

STATUS_OK = "ok"
STATUS_EMPTY = "empty"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class Word:
    """One word with its time span (seconds) and the model's mean token probability (0..1); ``speaker`` is the
    diarized speaker with the most overlap (``SPEAKER_00``...), ``None`` without diarization."""

    word: str
    start: float
    end: float
    probability: float
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    """One decoded segment; ``start``/``end`` in seconds (chunk time inside the transcriber, file time after
    stitching). ``avg_logprob`` is the mean token log-probability of the chunk's decode, ``no_speech_prob`` the
    model's probability of no speech, ``temperature`` the one that produced it, ``compression_ratio`` the gzip
    ratio of ``text`` (openai/whisper's hallucination signals). ``speaker``: the diarized speaker with the most
    overlap over the segment's span, ``None`` without diarization."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float
    words: tuple[Word, ...] = ()
    speaker: str | None = None

    def to_dict(self) -> dict:
        """The segment as plain dicts and lists (verbose_json shape)."""
        return asdict(self) | {"words": [asdict(w) for w in self.words]}


@dataclass(frozen=True)
class Transcript:
    """One file's transcript: the segments in file time, in order, and the language that decoded it; ``quality``
    holds the coverage and hallucination measures (:class:`~pipelines.core.coverage.Quality`) when the engine
    computed them. ``speakers``: with diarization, each speaker's label and speech seconds in order of first
    appearance (:class:`~pipelines.core.speakers.SpeakerTime`; the segments and words then carry ``speaker``);
    None without."""

    text: str
    language: str | None
    language_probability: float | None
    duration_s: float
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    quality: Optional["Quality"] = None
    speakers: tuple | None = None

    @property
    def status(self) -> str:
        """``ok`` when any text was produced, else ``empty``."""
        return STATUS_OK if self.text.strip() else STATUS_EMPTY


WORD_TYPE = pa.struct(
    [
        ("word", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("probability", pa.float64()),
        ("speaker", pa.string()),
    ]
)

SEGMENT_TYPE = pa.struct(
    [
        ("id", pa.int32()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("text", pa.string()),
        ("avg_logprob", pa.float64()),
        ("compression_ratio", pa.float64()),
        ("no_speech_prob", pa.float64()),
        ("temperature", pa.float64()),
        ("words", pa.list_(WORD_TYPE)),
        ("speaker", pa.string()),
    ]
)

SPAN_TYPE = pa.struct([("start", pa.float64()), ("end", pa.float64())])
#: One speaker of a file: its label and its speech seconds (the union of its turns).
SPEAKER_TIME_TYPE = pa.struct([("speaker", pa.string()), ("speech_s", pa.float64())])

#: One row per manifest row. Times are seconds; ``*_s`` timings are the wall time spent on this file per stage
#: (the transcribe time of a batch is shared between its files in proportion to their audio duration).
TRANSCRIPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("audio_filepath", pa.string()),
        ("sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("language", pa.string()),
        ("language_probability", pa.float64()),
        ("text", pa.string()),
        ("segments", pa.list_(SEGMENT_TYPE)),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("attempts", pa.int32()),
        ("reference", pa.string()),
        ("source_sample_rate", pa.int32()),
        ("source_channels", pa.int32()),
        ("num_chunks", pa.int32()),
        # Quality (1.2; docs/job.md): VAD speech seconds in the file, the part of it within 0.5 s of a word,
        # stretches (file time) still holding >= decoding.uncovered_speech_s of speech without words after the
        # dropped-speech guard, how many stretches the guard decoded again, the highest segment compression ratio
        # and the words lying over 0.5 s away from VAD speech. Null on error rows, and the speech ones without VAD.
        ("speech_s", pa.float64()),
        ("covered_speech_s", pa.float64()),
        ("uncovered_spans", pa.list_(SPAN_TYPE)),
        ("redecoded_spans", pa.int32()),
        ("max_compression_ratio", pa.float64()),
        ("words_outside_speech", pa.int32()),
        ("model", pa.string()),
        ("compute_type", pa.string()),
        ("config_fingerprint", pa.string()),
        ("run_id", pa.string()),
        # The id of the row whose transcript this row copies (identical audio, same fingerprint); null when the
        # audio was transcribed for this row.
        ("duplicate_of", pa.string()),
        ("schema_version", pa.string()),
        ("decode_s", pa.float64()),
        ("vad_s", pa.float64()),
        ("transcribe_s", pa.float64()),
        ("created_at", pa.timestamp("ms", tz="UTC")),
        # 1.3: speakers (diarization.enabled; all null when it is off). Each speaker's speech seconds in order of
        # first appearance, their count, and the diarization stage's wall time for this file.
        ("speakers", pa.list_(SPEAKER_TIME_TYPE)),
        ("num_speakers", pa.int32()),
        ("diarize_s", pa.float64()),
    ],
    metadata={"raywhisper.schema_version": SCHEMA_VERSION},
)
