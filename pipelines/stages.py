"""The job's map stages as plain callable classes (load in ``__init__``, work in ``__call__(batch)``), the shape
Ray Data's ``map_batches`` takes for actor pools. They import no Ray and are tested without it. They only move data
between Arrow rows and the engine (:mod:`pipelines.core.engine`), which does the work, and build output rows with
:class:`~pipelines.core.rows.TranscriptRow` (docs/architecture.md).

- :class:`DecodeChunkStage` (CPU): manifest rows -> bytes read through the :class:`~pipelines.io.storage.Storage`
  -> :func:`~pipelines.core.engine.prepare` -> one :data:`CHUNKED_SCHEMA` row per file (a
  :class:`~pipelines.core.engine.PreparedFile` in transport form).
- :class:`DiarizeStage` (CPU, only with ``diarization.enabled``): chunked rows -> the file's audio rebuilt from its
  chunks -> :func:`~pipelines.core.diarization.diarize_prepared` -> the same rows with ``speaker_turns`` and
  ``diarize_s`` (the samples pass on untouched; a diarizer failure becomes the row's error).
- :class:`TranscribeStage` (GPU or CPU): chunked rows -> :meth:`~pipelines.core.engine.Engine.transcribe_isolated`
  (the chunks of all files in a batch together, each file alone on failure) -> ``TRANSCRIPT_SCHEMA`` rows.
- :class:`HashStage` (CPU, before the job plans what to do): manifest rows -> the SHA-256 of each file, the key
  that resume and the reuse of identical audio go by.

A file that fails in either stage becomes an error row; the batch goes on.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import pyarrow as pa

from pipelines.config import JobConfig, config_fingerprint
from pipelines.core.diarization import Diarization, Diarizer, SpeakerCount, diarize_prepared
from pipelines.core.engine import Engine, Failure, FileSpec, InputLimits, PreparedFile, prepare
from pipelines.core.errors import AudioDecodeError, DiarizationError, InputNameError, SourceReadError, input_error
from pipelines.core.rows import Provenance, Source, TranscriptRow, rows_to_table
from pipelines.core.speakers import SpeakerTurn
from pipelines.core.transcriber import Transcriber
from pipelines.io.storage import Storage, is_transient, resolve_storage

log = logging.getLogger(__name__)

#: The manifest columns that travel through both stages.
MANIFEST_FIELDS = [
    ("id", pa.string()),
    ("audio_filepath", pa.string()),
    ("uri", pa.string()),
    ("language", pa.string()),
    ("prompt", pa.string()),
    ("reference", pa.string()),
    ("line", pa.int64()),
    ("num_speakers", pa.int32()),
    ("min_speakers", pa.int32()),
    ("max_speakers", pa.int32()),
]

#: One speaker turn in transport (seconds of file time).
TURN_TYPE = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("speaker", pa.string())])

#: Output of the decode stage: one row per file, its chunks as raw float32 little-endian bytes (16 kHz mono).
CHUNKED_SCHEMA = pa.schema(
    MANIFEST_FIELDS
    + [
        ("sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("source_sample_rate", pa.int32()),
        ("source_channels", pa.int32()),
        ("decode_s", pa.float64()),
        ("vad_s", pa.float64()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("chunk_offsets_s", pa.list_(pa.float64())),
        ("chunk_samples", pa.list_(pa.large_binary())),
        # per chunk, its VAD speech runs as [start, end] seconds of chunk time; null when the VAD did not run
        ("chunk_speech", pa.list_(pa.list_(pa.list_(pa.float64())))),
        # filled by DiarizeStage (diarization.enabled); null when it is off
        ("speaker_turns", pa.list_(TURN_TYPE)),
        ("diarize_s", pa.float64()),
    ]
)


def _rows(batch: Union[pa.Table, list]) -> list[dict]:
    """The rows of a batch: a pyarrow Table (what the job sends) or a list of dicts (tests)."""
    return batch.to_pylist() if isinstance(batch, pa.Table) else batch


def file_spec(row: dict) -> FileSpec:
    """The engine's :class:`~pipelines.core.engine.FileSpec` of a manifest or chunked row: keyed by id, named by
    its path as the manifest gave it, packed only with files of the same folder."""
    return FileSpec(key=row["id"], name=row["audio_filepath"], language=row.get("language"),
                    prompt=row.get("prompt"), pack_group=posixpath.dirname(row["audio_filepath"]))


def to_chunked_row(prepared: PreparedFile) -> dict:
    """The :data:`CHUNKED_SCHEMA` fields of a prepared file (its chunks as float32 little-endian bytes)."""
    return dict(duration_s=prepared.duration_s, source_sample_rate=prepared.source_sample_rate,
                source_channels=prepared.source_channels, decode_s=prepared.decode_s, vad_s=prepared.vad_s,
                chunk_offsets_s=list(prepared.chunk_offsets_s),
                chunk_samples=[s.astype("<f4", copy=False).tobytes() for s in prepared.chunk_samples],
                chunk_speech=None if prepared.chunk_speech is None
                else [[list(run) for run in runs] for runs in prepared.chunk_speech])


def from_chunked_row(row: dict) -> PreparedFile:
    """The :class:`~pipelines.core.engine.PreparedFile` a :data:`CHUNKED_SCHEMA` row without an error carries (the
    samples are read in place from the row's bytes, not copied)."""
    return PreparedFile(file_spec(row), row["duration_s"], row["source_sample_rate"], row["source_channels"],
                        tuple(float(o) for o in row.get("chunk_offsets_s") or ()),
                        tuple(np.frombuffer(b, dtype="<f4") for b in row.get("chunk_samples") or ()),
                        decode_s=row.get("decode_s") or 0.0, vad_s=row.get("vad_s") or 0.0,
                        chunk_speech=None if row.get("chunk_speech") is None
                        else tuple(tuple((float(a), float(b)) for a, b in runs) for runs in row["chunk_speech"]))


def input_limits(cfg: JobConfig) -> InputLimits:
    """The job's input guards for :func:`~pipelines.core.engine.prepare`: ``guards.*`` and
    ``chunking.max_audio_duration_s``."""
    g = cfg.guards
    return InputLimits(max_duration_s=cfg.chunking.max_audio_duration_s, min_sample_rate_hz=g.min_sample_rate_hz,
                       max_sample_rate_hz=g.max_sample_rate_hz, max_channels=g.max_channels)


def provenance(cfg: JobConfig, run_id: str) -> Provenance:
    """What the job's rows name as their producer: the model, its compute type, the config fingerprint
    (model, decoding, chunking) and the run id."""
    return Provenance(cfg.model.name, cfg.model.compute_type,
                      config_fingerprint(cfg.model, cfg.decoding, cfg.chunking,
                                         cfg.diarization.fingerprint_payload()), run_id)


@dataclass(frozen=True)
class ReadFile:
    """One manifest row after :func:`read_and_prepare`: the file's ``sha256`` (None when it could not be read), the
    prepared file or the ``failure`` that stopped it, and the wall time (s) reading and preparing took."""

    sha256: Optional[str]
    file: Optional[PreparedFile]
    failure: Optional[Failure]
    seconds: float


def read_and_prepare(row: dict, storage: Storage, cfg: JobConfig, limits: InputLimits) -> ReadFile:
    """Read the file of one manifest row (``id``, ``audio_filepath``, ``uri``; ``language``, ``prompt``, ``error``
    optional) through ``storage`` with ``guards.max_file_bytes`` and :func:`~pipelines.core.engine.prepare` it
    with ``cfg.chunking`` and ``limits``: the job's decode stage and the bench's in-process engine system both go
    through here. Never raises for a bad file: a row with an ``error`` from the manifest (a name that is not UTF-8),
    a read failure (named as rows always named it: AudioDecodeError / AudioLimitError), a decode failure or an
    unexpected error becomes the :class:`ReadFile`'s ``failure``."""
    sha256 = None
    t0 = time.perf_counter()
    try:
        if row.get("error"):  # found while reading the manifest: never read
            raise InputNameError(row["error"])
        try:
            data = storage.read(row["uri"], cfg.guards.max_file_bytes)
        except SourceReadError as exc:  # the row names it as users know it (AudioDecodeError/AudioLimitError)
            raise input_error(exc) from exc
        sha256 = data.sha256
        prepared = prepare(data.content, file_spec(row), cfg.chunking, limits)
    except AudioDecodeError as exc:
        return ReadFile(sha256, None, Failure(type(exc).__name__, str(exc)), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the corpus
        log.exception("unexpected error decoding %s", row.get("audio_filepath"))
        return ReadFile(sha256, None, Failure(type(exc).__name__, f"{row['audio_filepath']}: {exc}"),
                        time.perf_counter() - t0)
    return ReadFile(sha256, prepared, None, time.perf_counter() - t0)


class DecodeChunkStage:
    """Read each file, decode it to 16 kHz mono float32 with the input guards and cut it into VAD chunks of at most
    ``chunking.max_chunk_s`` (:func:`~pipelines.core.engine.prepare`).

    ``__call__`` takes a batch of manifest rows (pyarrow Table or list of dicts with the :data:`MANIFEST_FIELDS`)
    and returns a :data:`CHUNKED_SCHEMA` table with one row per input row. A file that cannot be read or decoded
    gets ``error_type``/``error_message`` and no chunks.

    ``storage`` is how inputs are read (fsspec options per protocol, retries, ``guards.max_file_bytes`` before
    reading); the job resolves it once in the driver. None: resolved here from ``cfg.storage`` and this process's
    environment.
    """

    def __init__(self, cfg: JobConfig, storage: Optional[Storage] = None):
        self.cfg = cfg
        self.storage = storage or resolve_storage(cfg.storage)
        self.limits = input_limits(cfg)

    def process(self, row: dict) -> dict:
        """Read, decode and chunk one manifest row (see the class doc); never raises for a bad file. A row with an
        ``error`` from the manifest (:class:`~pipelines.io.manifest.ManifestRow`) becomes its error row unread."""
        out = {name: row.get(name) for name, _ in MANIFEST_FIELDS}
        read = read_and_prepare(row, self.storage, self.cfg, self.limits)
        if read.sha256 is not None:
            out["sha256"] = read.sha256
        if read.failure is not None:
            out.update(error_type=read.failure.error_type, error_message=read.failure.message,
                       decode_s=read.seconds)
            return out
        out.update(to_chunked_row(read.file))
        return out

    def __call__(self, batch) -> pa.Table:
        return pa.Table.from_pylist([self.process(row) for row in _rows(batch)], schema=CHUNKED_SCHEMA)


def speaker_count(cfg: JobConfig, row: dict) -> SpeakerCount:
    """A row's speaker count: its own manifest counts when it has any, else the job's ``diarization`` ones."""
    own = {k: row.get(k) for k in ("num_speakers", "min_speakers", "max_speakers") if row.get(k) is not None}
    return SpeakerCount(**own) if own else cfg.diarization.count


def diarization_of(row: dict) -> Optional[Diarization]:
    """The :class:`~pipelines.core.diarization.Diarization` a chunked row carries (None: not diarized)."""
    if row.get("speaker_turns") is None:
        return None
    turns = tuple(SpeakerTurn(t["start_s"], t["end_s"], t["speaker"]) for t in row["speaker_turns"])
    return Diarization(turns, {}, {"total_s": row.get("diarize_s")})


class DiarizeStage:
    """Who spoke when in each file of a :data:`CHUNKED_SCHEMA` batch, with one
    :class:`~pipelines.core.diarization.Diarizer` (loaded once per actor, about 2 s).

    ``__call__`` returns the batch with ``speaker_turns`` and ``diarize_s`` filled for each row without an error;
    the chunks pass on unchanged. A file the diarizer fails on gets ``error_type``/``error_message`` (a
    ``DiarizationError`` row; it is not transcribed).

    Raises (from ``__init__``):
        DiarizationUnavailableError: the ``diarize`` extra is missing.
    """

    def __init__(self, cfg: JobConfig, diarizer: Optional[Diarizer] = None):
        self.cfg = cfg
        self.diarizer = diarizer or Diarizer(cfg.diarization.options)

    def process(self, row: dict) -> dict:
        """Diarize one chunked row (see the class doc); never raises for a bad file."""
        if row.get("error_type"):
            return row
        t0 = time.perf_counter()
        try:
            result = diarize_prepared(self.diarizer, from_chunked_row(row), speaker_count(self.cfg, row))
        except Exception as exc:  # noqa: BLE001 - one file's failure is its error row
            if not isinstance(exc, DiarizationError):
                log.exception("unexpected error diarizing %s", row.get("audio_filepath"))
            message = str(exc) if isinstance(exc, DiarizationError) else f"{row['audio_filepath']}: {exc}"
            return row | dict(error_type=type(exc).__name__, error_message=message,
                              diarize_s=time.perf_counter() - t0, chunk_offsets_s=None, chunk_samples=None)
        turns = [{"start_s": t.start_s, "end_s": t.end_s, "speaker": t.speaker} for t in result.turns]
        return row | dict(speaker_turns=turns, diarize_s=result.timings_s["total_s"])

    def __call__(self, batch) -> pa.Table:
        return pa.Table.from_pylist([self.process(row) for row in _rows(batch)], schema=CHUNKED_SCHEMA)


class TranscribeStage:
    """Transcribe a batch of chunked files with one :class:`~pipelines.core.engine.Engine` (its model loaded once
    per actor).

    ``__call__`` takes a :data:`CHUNKED_SCHEMA` batch and returns a ``TRANSCRIPT_SCHEMA`` table with one row per
    input row. All chunks of the batch go to the model together; if that fails, each file is retried alone
    (``transcribe.max_retries_per_file`` more times) so one bad file becomes one error row.

    ``transcriber``: an already loaded model (tests); None loads ``cfg.model``.
    """

    def __init__(self, cfg: JobConfig, run_id: str, transcriber: Optional[Transcriber] = None):
        self.cfg = cfg
        self.engine = Engine(cfg.model, cfg.decoding, transcriber)
        self.provenance = provenance(cfg, run_id)

    @staticmethod
    def source_of(row: dict) -> Source:
        """The manifest facts of a chunked row that its output row carries."""
        counts = tuple(row.get(k) for k in ("num_speakers", "min_speakers", "max_speakers"))
        return Source(row["id"], row["audio_filepath"], row.get("sha256"), row.get("reference"), row.get("language"),
                      row.get("prompt"), counts if any(v is not None for v in counts) else None)

    def __call__(self, batch) -> pa.Table:
        rows = _rows(batch)
        good = [r for r in rows if not r.get("error_type")]
        files = [from_chunked_row(r) for r in good]
        outcomes = self.engine.transcribe_isolated(files, retries=self.cfg.transcribe.max_retries_per_file) \
            if files else []
        results = iter(zip(files, outcomes))
        out = []
        for row in rows:
            source = self.source_of(row)
            if row.get("error_type"):  # the decode stage's error: the file never reaches the model
                out.append(TranscriptRow.failed(source, Failure(row["error_type"], row["error_message"]),
                                                self.provenance, decode_s=row.get("decode_s"),
                                                vad_s=row.get("vad_s"), diarize_s=row.get("diarize_s")))
            else:
                out.append(TranscriptRow.transcribed(source, *next(results), self.provenance, diarization_of(row)))
        return rows_to_table(out)


#: Output of the hash stage: one row per manifest row; ``sha256`` is null where the file cannot be read (the
#: decode stage then writes the error row and its reason); ``unreachable`` where that is because the storage could
#: not be reached after the retries (transient errors), not because of the file itself.
HASHED_SCHEMA = pa.schema([("id", pa.string()), ("sha256", pa.string()), ("error_message", pa.string()),
                           ("unreachable", pa.bool_())])


class HashStage:
    """The SHA-256 of each manifest row's file, read in blocks (never whole); the same value and the same refusals
    as the decode stage's read, so a row's key is the same on both paths.

    ``storage`` is how inputs are read (fsspec options per protocol, the same retries as the decode stage); the job
    resolves it once in the driver. None: resolved here from ``cfg.storage`` and this process's environment.
    """

    def __init__(self, cfg: JobConfig, storage: Optional[Storage] = None):
        self.max_bytes = cfg.guards.max_file_bytes
        self.storage = storage or resolve_storage(cfg.storage)

    def __call__(self, batch) -> pa.Table:
        out = []
        for row in _rows(batch):
            try:
                out.append({"id": row["id"], "sha256": self.storage.hash(row["uri"], self.max_bytes)})
            except Exception as exc:  # noqa: BLE001 - unreadable here means unreadable in the decode stage too
                out.append({"id": row["id"], "sha256": None, "error_message": str(exc),
                            "unreachable": is_transient(exc)})
        return pa.Table.from_pylist(out, schema=HASHED_SCHEMA)
