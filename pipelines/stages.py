"""The job's two map stages as plain callable classes (load in ``__init__``, work in ``__call__(batch)``), the
shape Ray Data's ``map_batches`` takes for actor pools. They import no Ray and are tested without it.

- :class:`DecodeChunkStage` (CPU): manifest rows -> decoded, VAD-chunked files (:data:`CHUNKED_SCHEMA`).
- :class:`TranscribeStage` (GPU or CPU): chunked files -> transcript rows (``TRANSCRIPT_SCHEMA``). The chunks of
  all files in a batch are pooled and transcribed together (cross-file batching), then stitched per file.
- :class:`HashStage` (CPU, before the job plans what to do): manifest rows -> the SHA-256 of each file, the key
  that resume and the reuse of identical audio go by.

A file that fails in either stage becomes an error row; the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import time
from typing import Optional

import numpy as np
import pyarrow as pa

from pipelines.config import JobConfig, config_fingerprint, row_fingerprint
from pipelines.core.audio import SourceLimits, decode_audio
from pipelines.core.chunking import chunk_audio, slice_chunk
from pipelines.core.errors import AudioDecodeError, InputNameError, SourceReadError, input_error
from pipelines.core.schema import (
    SCHEMA_VERSION,
    STATUS_ERROR,
    Transcript,
    rows_to_table,
)
from pipelines.core.stitch import stitch
from pipelines.core.transcriber import Chunk, Transcriber
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
]

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
    ]
)


def _rows(batch) -> list[dict]:
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    if isinstance(batch, list):
        return batch
    # dict of columns (numpy batch format)
    keys = list(batch.keys())
    n = len(batch[keys[0]]) if keys else 0
    return [{k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in keys} for i in range(n)]


class DecodeChunkStage:
    """Decode each file to 16 kHz mono float32 and cut it into VAD chunks of at most ``chunking.max_chunk_s``.

    ``__call__`` takes a batch of manifest rows (pyarrow Table or list of dicts with the :data:`MANIFEST_FIELDS`)
    and returns a :data:`CHUNKED_SCHEMA` table with one row per input row. A file that cannot be read or decoded
    gets ``error_type``/``error_message`` and no chunks.

    ``storage`` is how inputs are read (fsspec options per protocol, retries); the job resolves it once in the
    driver. None: resolved here from ``cfg.storage`` and this process's environment.
    """

    def __init__(self, cfg: JobConfig, storage: Optional[Storage] = None):
        self.cfg = cfg
        self.storage = storage or resolve_storage(cfg.storage)
        g = cfg.guards
        self.limits = SourceLimits(g.min_sample_rate_hz, g.max_sample_rate_hz, g.max_channels)

    def process(self, row: dict) -> dict:
        """Decode and chunk one manifest row (see the class doc); never raises for a bad file. A row with an
        ``error`` from the manifest (:class:`~pipelines.io.manifest.ManifestRow`) becomes its error row unread."""
        out = {name: row.get(name) for name, _ in MANIFEST_FIELDS}
        ck = self.cfg.chunking
        t0 = time.perf_counter()
        try:
            if row.get("error"):  # found while reading the manifest (a name that is not UTF-8): never read
                raise InputNameError(row["error"])
            try:
                data = self.storage.read(row["uri"], self.cfg.guards.max_file_bytes)
            except SourceReadError as exc:  # the row names it as users know it (AudioDecodeError/AudioLimitError)
                raise input_error(exc) from exc
            out["sha256"] = data.sha256
            audio = decode_audio(data.content, ck.sample_rate, ck.max_audio_duration_s, name=row["audio_filepath"],
                                 limits=self.limits)
        except AudioDecodeError as exc:
            out.update(error_type=type(exc).__name__, error_message=str(exc), decode_s=time.perf_counter() - t0)
            return out
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the corpus
            log.exception("unexpected error decoding %s", row.get("audio_filepath"))
            out.update(error_type=type(exc).__name__, error_message=f"{row['audio_filepath']}: {exc}",
                       decode_s=time.perf_counter() - t0)
            return out
        t1 = time.perf_counter()
        spans = chunk_audio(audio.samples, ck)
        out.update(
            duration_s=audio.duration_s,
            source_sample_rate=audio.source_sample_rate,
            source_channels=audio.source_channels,
            decode_s=t1 - t0,
            vad_s=time.perf_counter() - t1,
            chunk_offsets_s=[s.offset_s for s in spans],
            chunk_samples=[slice_chunk(audio.samples, s, ck.sample_rate).astype("<f4").tobytes() for s in spans],
        )
        return out

    def __call__(self, batch) -> pa.Table:
        rows = [self.process(row) for row in _rows(batch)]
        return pa.Table.from_pylist(rows, schema=CHUNKED_SCHEMA)


class TranscribeStage:
    """Transcribe a batch of chunked files with one :class:`Transcriber` (loaded once per actor).

    ``__call__`` takes a :data:`CHUNKED_SCHEMA` batch and returns a ``TRANSCRIPT_SCHEMA`` table with one row per
    input row. All chunks of the batch go to the model together; if that fails, each file is retried alone
    (``transcribe.max_retries_per_file`` times) so one bad file becomes one error row.
    """

    def __init__(self, cfg: JobConfig, run_id: str, transcriber: Optional[Transcriber] = None):
        self.cfg = cfg
        self.run_id = run_id
        self.fingerprint = config_fingerprint(cfg.model, cfg.decoding, cfg.chunking)
        self.transcriber = transcriber or Transcriber(cfg.model, cfg.decoding)

    @staticmethod
    def chunks_of(row: dict) -> list[Chunk]:
        """The :class:`Chunk` objects of one chunked row."""
        return [
            Chunk(
                key=row["id"],
                index=i,
                offset_s=float(offset),
                samples=np.frombuffer(blob, dtype="<f4"),
                language=row.get("language"),
                prompt=row.get("prompt"),
                pack_group=posixpath.dirname(row["audio_filepath"]),
            )
            for i, (offset, blob) in enumerate(zip(row.get("chunk_offsets_s") or [], row.get("chunk_samples") or []))
        ]

    def _transcribe(self, rows: list[dict]) -> tuple[dict[str, Transcript], float]:
        chunks = [c for row in rows for c in self.chunks_of(row)]
        t0 = time.perf_counter()
        results = self.transcriber.transcribe_chunks(chunks)
        elapsed = time.perf_counter() - t0
        return stitch(results, {row["id"]: row["duration_s"] for row in rows}), elapsed

    def __call__(self, batch) -> pa.Table:
        rows = _rows(batch)
        good = [r for r in rows if not r.get("error_type")]
        transcripts: dict[str, Transcript] = {}
        seconds: dict[str, float] = {}
        errors: dict[str, tuple[str, str, int]] = {}
        try:
            done, elapsed = self._transcribe(good)
            transcripts.update(done)
            total = sum(r["duration_s"] for r in good) or 1.0
            seconds.update({r["id"]: elapsed * r["duration_s"] / total for r in good})
        except Exception:  # noqa: BLE001 - isolate the failing file(s) below
            log.warning("batch of %d files failed; retrying each file alone", len(good), exc_info=True)
            for row in good:
                failure = None
                for attempt in range(1, self.cfg.transcribe.max_retries_per_file + 2):
                    try:
                        done, elapsed = self._transcribe([row])
                    except Exception as exc:  # noqa: BLE001
                        failure = (type(exc).__name__, f"{row['audio_filepath']}: {exc}", attempt)
                        continue
                    transcripts.update(done)
                    seconds[row["id"]] = elapsed
                    failure = None
                    break
                if failure:
                    errors[row["id"]] = failure
        return rows_to_table([self.output_row(r, transcripts.get(r["id"]), seconds.get(r["id"]), errors.get(r["id"]))
                              for r in rows])

    def output_row(self, row: dict, transcript: Optional[Transcript], transcribe_s: Optional[float],
                   error: Optional[tuple[str, str, int]]) -> dict:
        """One ``TRANSCRIPT_SCHEMA`` row for a chunked row and its transcript (or error)."""
        out = {
            "id": row["id"],
            "audio_filepath": row["audio_filepath"],
            "sha256": row.get("sha256"),
            "duration_s": row.get("duration_s"),
            "reference": row.get("reference"),
            "source_sample_rate": row.get("source_sample_rate"),
            "source_channels": row.get("source_channels"),
            "num_chunks": len(row.get("chunk_offsets_s") or []),
            "model": self.cfg.model.name,
            "compute_type": self.cfg.model.compute_type,
            "config_fingerprint": row_fingerprint(self.fingerprint, row.get("language"), row.get("prompt")),
            "run_id": self.run_id,
            "schema_version": SCHEMA_VERSION,
            "decode_s": row.get("decode_s"),
            "vad_s": row.get("vad_s"),
            "transcribe_s": transcribe_s,
            "attempts": 1,
            "created_at": dt.datetime.now(dt.timezone.utc),
            "segments": [],
        }
        if row.get("error_type") or error or transcript is None:
            etype, emsg, attempts = (row.get("error_type"), row.get("error_message"), 1) if row.get("error_type") \
                else (error or ("TranscriptionError", f"{row['audio_filepath']}: no transcript produced", 1))
            out.update(status=STATUS_ERROR, error_type=etype, error_message=emsg, attempts=attempts)
            return out
        out.update(
            status=transcript.status,
            text=transcript.text,
            language=transcript.language,
            language_probability=transcript.language_probability,
            segments=[seg.to_dict() for seg in transcript.segments],
        )
        return out


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
