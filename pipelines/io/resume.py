"""What a run has left to do in an output folder, keyed by content hash and config fingerprint.

A run (see :mod:`pipelines.job.run`) reads the key columns of the rows already in the folder
(:func:`load_index`), hashes every manifest row's file, then :func:`plan_run` sorts each manifest row into one of:

- **keep**: the folder has a row for this id with the same ``sha256``, the same fingerprint
  (:func:`pipelines.core.options.row_fingerprint`), the same ``audio_filepath`` and ``reference``, and it is finished
  (``ok``/``empty``), or an ``error`` row when errors are not being retried. It stays as it is (its ``run_id`` too).
- **copy**: identical audio with the same fingerprint is finished elsewhere in the folder, or is transcribed by
  this run for another row: the row is written as a copy of that transcript (``duplicate_of`` names the source).
- **transcribe**: everything else, one row per distinct audio.

Rows of the folder for manifest ids that are not kept (another config, changed audio, a retried error, a second
row for one id) are **taken out** of the current set before anything new is written, so an id is never current
twice. Rows for ids outside the manifest are left alone. Everything here is plain data and pure functions, tested
without Ray.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from pipelines.core.options import row_fingerprint
from pipelines.core.errors import StorageError
from pipelines.core.schema import STATUS_EMPTY, STATUS_ERROR, STATUS_OK
from pipelines.io.manifest import ManifestRow
from pipelines.io.output import OutputFolder

#: The columns of the output a run reads to plan (cheap: no segments, no text).
INDEX_COLUMNS = ["id", "audio_filepath", "reference", "sha256", "config_fingerprint", "status", "error_type",
                 "error_message", "attempts", "run_id", "created_at", "duplicate_of"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class DoneRow:
    """A row already in the output folder: its key columns and where it lies (``part`` file, row ``position``)."""

    id: str
    audio_filepath: Optional[str]
    reference: Optional[str]
    sha256: Optional[str]
    config_fingerprint: Optional[str]
    status: Optional[str]
    run_id: Optional[str]
    part: str
    position: int
    error_type: Optional[str] = None
    error_message: Optional[str] = None
    attempts: Optional[int] = None
    created_at: Optional[dt.datetime] = None
    duplicate_of: Optional[str] = None

    @property
    def finished(self) -> bool:
        """``ok`` or ``empty``: a transcript that is reused, never redone."""
        return self.status in (STATUS_OK, STATUS_EMPTY)

    def rank(self) -> tuple:
        """Sort key of the best of several rows for one id: finished first, then the newest."""
        return self.finished, self.created_at or _EPOCH


def load_index(folder: OutputFolder) -> tuple[list[DoneRow], list[str]]:
    """The key columns of every row in the folder's current parts.

    Returns:
        The rows, and the parts that cannot be read as Parquet (the caller moves them aside: their rows are redone).

    Raises:
        StorageError: the folder cannot be listed or a part cannot be fetched after the retries (storage down,
            access denied): the run stops rather than take a good part it could not reach for a damaged one.
    """
    rows: list[DoneRow] = []
    unreadable: list[str] = []
    for part in folder.parts():
        try:
            table = folder.read_part(part, INDEX_COLUMNS)
        except StorageError:
            raise
        except Exception:  # noqa: BLE001 - a damaged part is set aside, never a reason to stop
            unreadable.append(part)
            continue
        for position, rec in enumerate(table.to_pylist()):
            rows.append(DoneRow(part=part, position=position, **{k: rec.get(k) for k in INDEX_COLUMNS}))
    return rows, unreadable


@dataclass(frozen=True)
class Copy:
    """A manifest ``row`` to write as a copy of the transcript of ``source_id``: a row already in the folder
    (``source``), or one this run transcribes (``source`` is None)."""

    row: ManifestRow
    source_id: str
    source: Optional[DoneRow] = None


@dataclass
class Plan:
    """What a run does with each manifest row (see the module doc)."""

    keep: list[DoneRow] = field(default_factory=list)
    transcribe: list[ManifestRow] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    take_out: list[DoneRow] = field(default_factory=list)
    #: why rows were taken out: "config changed", "audio changed", "manifest row changed", "error retried",
    #: "second row for an id"
    reasons: Counter = field(default_factory=Counter)

    def dependents(self) -> dict[str, list[ManifestRow]]:
        """Rows to copy from a row this run transcribes, by that row's id."""
        out: dict[str, list[ManifestRow]] = defaultdict(list)
        for copy in self.copies:
            if copy.source is None:
                out[copy.source_id].append(copy.row)
        return dict(out)

    def take_out_by_part(self) -> dict[str, list[int]]:
        """The rows to take out, as part -> row positions (what :meth:`OutputFolder.take_out` takes)."""
        out: dict[str, list[int]] = defaultdict(list)
        for row in self.take_out:
            out[row.part].append(row.position)
        return dict(out)

    def counts(self) -> dict[str, int]:
        """How many rows fall in each class."""
        return {"kept": len(self.keep), "to_transcribe": len(self.transcribe), "to_copy": len(self.copies),
                "taken_out": len(self.take_out)}


def _why(old: DoneRow, row: ManifestRow, sha: Optional[str], fingerprint: str, kept: bool) -> str:
    if kept:
        return "second row for an id"
    if old.config_fingerprint != fingerprint:
        return "config changed"
    if old.sha256 != sha:
        return "audio changed"
    if old.audio_filepath != row.audio_filepath or old.reference != row.reference:
        return "manifest row changed"
    return "error retried"


def plan_run(rows: Sequence[ManifestRow], hashes: Mapping[str, Optional[str]], done: Sequence[DoneRow],
             job_fingerprint: str, retry_errors: bool = False) -> Plan:
    """Sort manifest rows into keep / copy / transcribe, and the folder's stale rows into take-out.

    Args:
        rows: the manifest, ids unique.
        hashes: each row id's ``sha256`` now, None where the file cannot be read.
        done: the rows in the folder (:func:`load_index`).
        job_fingerprint: :func:`pipelines.core.options.config_fingerprint` of the run's config.
        retry_errors: redo rows whose current row is an error (else an error row stands, like a finished one,
            as long as its file and config are unchanged).
    """
    ids = {r.id for r in rows}
    by_id: dict[str, list[DoneRow]] = defaultdict(list)
    finished: dict[tuple[str, str], DoneRow] = {}
    for old in sorted(done, key=DoneRow.rank, reverse=True):
        if old.id in ids:
            by_id[old.id].append(old)
        if old.finished and old.sha256 and old.config_fingerprint:
            finished.setdefault((old.sha256, old.config_fingerprint), old)
    plan = Plan()
    primaries: dict[tuple[str, str], str] = {}
    for row in rows:
        sha = hashes.get(row.id)
        fingerprint = row_fingerprint(job_fingerprint, row.language, row.prompt, row.speaker_counts)
        olds = by_id.get(row.id, [])
        keeper = next((old for old in olds  # best first
                       if old.sha256 == sha and old.config_fingerprint == fingerprint
                       and old.audio_filepath == row.audio_filepath and old.reference == row.reference
                       and (old.finished or (old.status == STATUS_ERROR and not retry_errors))), None)
        for old in olds:
            if old is not keeper:
                plan.take_out.append(old)
                plan.reasons[_why(old, row, sha, fingerprint, keeper is not None)] += 1
        if keeper is not None:
            plan.keep.append(keeper)
            continue
        key = (sha, fingerprint) if sha else None
        if key in finished:
            plan.copies.append(Copy(row, finished[key].id, finished[key]))
        elif key in primaries:
            plan.copies.append(Copy(row, primaries[key]))
        else:
            if key is not None:
                primaries[key] = row.id
            plan.transcribe.append(row)
    return plan


@dataclass(frozen=True)
class FolderState:
    """The current rows of a manifest's ids in a folder, counted: ``missing`` ids have no row, ``doubled`` more
    than one (both empty after a complete run)."""

    rows: int
    ok: int
    empty: int
    error: int
    missing: list[str]
    doubled: list[str]
    errors: list[DoneRow]

    @property
    def error_rate(self) -> float:
        """Error rows per manifest row."""
        total = self.rows + len(self.missing)
        return self.error / total if total else 0.0


def folder_state(rows: Sequence[ManifestRow], done: Sequence[DoneRow]) -> FolderState:
    """Count the current rows of the manifest ``rows`` in the folder rows ``done``."""
    ids = {r.id for r in rows}
    mine = [d for d in done if d.id in ids]
    seen = Counter(d.id for d in mine)
    status = Counter(d.status for d in mine)
    return FolderState(
        rows=len(mine), ok=status[STATUS_OK], empty=status[STATUS_EMPTY], error=status[STATUS_ERROR],
        missing=[r.id for r in rows if r.id not in seen], doubled=sorted(i for i, n in seen.items() if n > 1),
        errors=[d for d in mine if d.status == STATUS_ERROR],
    )
