"""The one place an output row is built (docs/architecture.md, invariant 4): :class:`TranscriptRow`, one per
manifest row, in :data:`~pipelines.core.schema.TRANSCRIPT_SCHEMA`, for every kind of row — transcribed (``ok`` or
``empty``), an error (decode, model, worker died) and a copy of another row's transcript (identical audio).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import pyarrow as pa

from pipelines.core.diarization import Diarization
from pipelines.core.engine import Failure, Outcome, PreparedFile
from pipelines.core.errors import WorkerDiedError
from pipelines.core.options import row_fingerprint
from pipelines.core.schema import SCHEMA_VERSION, STATUS_ERROR, TRANSCRIPT_SCHEMA
from pipelines.core.speakers import label_segments, speaker_times


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Provenance:
    """What produced a row: the model's name and compute type, the job's config fingerprint (model, decoding,
    chunking: :func:`~pipelines.core.options.config_fingerprint`) and the run id."""

    model: str
    compute_type: str
    fingerprint: str
    run_id: str


@dataclass(frozen=True)
class Source:
    """The manifest row a transcript row answers: its id, the path as the manifest gave it, the content hash (None
    when the file could not be read), the reference text, and the row's own language, prompt and speaker counts
    (``(num_speakers, min_speakers, max_speakers)``, only when diarization is on; they enter the row's
    fingerprint)."""

    id: str
    audio_filepath: str
    sha256: Optional[str] = None
    reference: Optional[str] = None
    language: Optional[str] = None
    prompt: Optional[str] = None
    speaker_counts: Optional[tuple] = None


@dataclass(frozen=True)
class TranscriptRow:
    """One output row; fields and types are :data:`~pipelines.core.schema.TRANSCRIPT_SCHEMA`'s (times in seconds,
    ``segments`` as plain dicts in OpenAI ``verbose_json`` shape, file time). Build it with one of the class
    methods, never field by field."""

    id: str
    audio_filepath: str
    status: str
    sha256: Optional[str] = None
    duration_s: Optional[float] = None
    language: Optional[str] = None
    language_probability: Optional[float] = None
    text: Optional[str] = None
    segments: tuple = ()
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    attempts: int = 1
    reference: Optional[str] = None
    source_sample_rate: Optional[int] = None
    source_channels: Optional[int] = None
    num_chunks: int = 0
    speech_s: Optional[float] = None
    covered_speech_s: Optional[float] = None
    uncovered_spans: Optional[tuple] = None
    redecoded_spans: Optional[int] = None
    max_compression_ratio: Optional[float] = None
    words_outside_speech: Optional[int] = None
    model: Optional[str] = None
    compute_type: Optional[str] = None
    config_fingerprint: Optional[str] = None
    run_id: Optional[str] = None
    duplicate_of: Optional[str] = None
    schema_version: str = SCHEMA_VERSION
    decode_s: Optional[float] = None
    vad_s: Optional[float] = None
    transcribe_s: Optional[float] = None
    created_at: dt.datetime = field(default_factory=_now)
    speakers: Optional[tuple] = None
    num_speakers: Optional[int] = None
    diarize_s: Optional[float] = None

    @staticmethod
    def _base(source: Source, prov: Provenance) -> dict[str, Any]:
        return dict(id=source.id, audio_filepath=source.audio_filepath, sha256=source.sha256,
                    reference=source.reference, model=prov.model, compute_type=prov.compute_type,
                    config_fingerprint=row_fingerprint(prov.fingerprint, source.language, source.prompt,
                                                                      source.speaker_counts),
                    run_id=prov.run_id)

    @classmethod
    def transcribed(cls, source: Source, prepared: PreparedFile, outcome: Outcome,
                    prov: Provenance, diarization: Optional[Diarization] = None) -> "TranscriptRow":
        """The row of a file that went through :meth:`Engine.transcribe_isolated`: ``ok``/``empty`` with its
        transcript, or ``error`` with the model's failure (``attempts`` as tried).

        ``diarization``: the file's speaker turns (:func:`~pipelines.core.diarization.diarize_prepared`; its
        ``timings_s["total_s"]`` becomes ``diarize_s``), or None when diarization is off (the speaker fields stay
        null). With it, each segment and word gets the speaker with most overlap
        (:func:`~pipelines.core.speakers.label_segments`), ``speakers`` each speaker's speech seconds and
        ``num_speakers`` their count."""
        fields = cls._base(source, prov) | dict(
            duration_s=prepared.duration_s, source_sample_rate=prepared.source_sample_rate,
            source_channels=prepared.source_channels, num_chunks=prepared.num_chunks, decode_s=prepared.decode_s,
            vad_s=prepared.vad_s, transcribe_s=outcome.transcribe_s)
        if diarization is not None:
            times = speaker_times(diarization.turns)
            fields |= dict(speakers=tuple({"speaker": t.speaker, "speech_s": t.speech_s} for t in times),
                           num_speakers=len(times), diarize_s=diarization.timings_s.get("total_s"))
        if outcome.transcript is None:
            failure = outcome.failure or Failure("TranscriptionError",
                                                 f"{source.audio_filepath}: no transcript produced")
            return cls(status=STATUS_ERROR, error_type=failure.error_type, error_message=failure.message,
                       attempts=failure.attempts, **fields)
        t = outcome.transcript
        quality = t.quality.to_dict() if t.quality is not None else {}
        if "uncovered_spans" in quality:
            quality["uncovered_spans"] = tuple(quality["uncovered_spans"])
        segments = label_segments(t.segments, diarization.turns) if diarization is not None else t.segments
        return cls(status=t.status, text=t.text, language=t.language, language_probability=t.language_probability,
                   segments=tuple(seg.to_dict() for seg in segments), **fields, **quality)

    @classmethod
    def failed(cls, source: Source, failure: Failure, prov: Provenance, decode_s: Optional[float] = None,
               vad_s: Optional[float] = None, diarize_s: Optional[float] = None) -> "TranscriptRow":
        """The ``error`` row of a file that never reached the model (unreadable, not audio, over a guard, the
        diarizer failed...)."""
        return cls(status=STATUS_ERROR, error_type=failure.error_type, error_message=failure.message,
                   attempts=failure.attempts, decode_s=decode_s, vad_s=vad_s, diarize_s=diarize_s,
                   **cls._base(source, prov))

    @classmethod
    def worker_died(cls, source: Source, attempts: int, prov: Provenance) -> "TranscriptRow":
        """The ``error`` row of a file whose worker died (killed, out of memory, a native crash) on every attempt,
        the last ones in a batch of its own."""
        message = (f"{source.audio_filepath}: the worker processing this file failed on each of {attempts} "
                   "attempts, the last ones in a batch of its own: it died (killed, out of memory, a crash in the "
                   "decoder or the model) or raised out of the stage; see the Ray worker logs")
        return cls.failed(source, Failure(WorkerDiedError.__name__, message, attempts), prov)

    @classmethod
    def copy_of(cls, row: Mapping[str, Any], source: Source, run_id: str) -> "TranscriptRow":
        """A row for ``source`` holding the transcript of ``row`` (an existing row with the same audio and
        fingerprint): ``duplicate_of`` names the row the transcript was made for, timings are 0 (no work was done
        for this row), and an error message names this row's file."""
        known = {f.name for f in dataclasses.fields(cls)}
        out = {k: v for k, v in row.items() if k in known}
        origin = row.get("duplicate_of") or row["id"]
        message, path = row.get("error_message"), row.get("audio_filepath")
        if message and path and message.startswith(f"{path}:"):
            out["error_message"] = source.audio_filepath + message[len(path):]
        out.update(id=source.id, audio_filepath=source.audio_filepath, reference=source.reference,
                   duplicate_of=None if origin == source.id else origin, run_id=run_id,
                   schema_version=SCHEMA_VERSION, created_at=_now(), decode_s=0.0, vad_s=0.0, transcribe_s=0.0,
                   segments=tuple(out.get("segments") or ()),
                   diarize_s=0.0 if out.get("diarize_s") is not None else None,
                   speakers=tuple(out["speakers"]) if out.get("speakers") is not None else None)
        if out.get("uncovered_spans") is not None:
            out["uncovered_spans"] = tuple(out["uncovered_spans"])
        return cls(**out)

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict keyed by :data:`TRANSCRIPT_SCHEMA`'s names."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["segments"] = list(self.segments)
        out["uncovered_spans"] = None if self.uncovered_spans is None else list(self.uncovered_spans)
        out["speakers"] = list(self.speakers) if self.speakers is not None else None
        return out


def rows_to_table(rows: Sequence[Union[TranscriptRow, Mapping[str, Any]]]) -> pa.Table:
    """A table in :data:`TRANSCRIPT_SCHEMA` from rows (:class:`TranscriptRow`, or row dicts read back from a part).

    Raises:
        pyarrow.ArrowInvalid / ArrowTypeError: a value does not fit its field's type.
    """
    dicts = [r.to_dict() if isinstance(r, TranscriptRow) else r for r in rows]
    columns = {name: [d.get(name) for d in dicts] for name in TRANSCRIPT_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=TRANSCRIPT_SCHEMA)
