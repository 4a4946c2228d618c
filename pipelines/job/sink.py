"""Where the job's rows go (docs/resume.md): :class:`Sink` writes them to Parquet parts as they arrive, never a
second row for an id in one run, each transcribed row followed by the copies planned from it (identical audio);
:func:`write_planned_copies` writes the copies of rows already in the folder and takes stale rows out first.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import pyarrow as pa

from pipelines.core.rows import Source, TranscriptRow, rows_to_table
from pipelines.io.manifest import ManifestRow
from pipelines.io.output import OutputFolder, PartWriter
from pipelines.io.resume import Plan
from pipelines.job.summary import RunSummary

log = logging.getLogger("raywhisper")

#: Seconds between two progress lines while no part is written (with ``progress``).
PROGRESS_EVERY_S = 30.0


def manifest_source(row: ManifestRow, sha256: Optional[str] = None) -> Source:
    """The :class:`~pipelines.core.rows.Source` of a manifest row (``sha256``: its file's hash, if known)."""
    return Source(row.id, row.audio_filepath, sha256, row.reference, row.language, row.prompt, row.speaker_counts)


class Sink:
    """Writes rows as they arrive through ``writer``: never a second row for an id in one run, and with each
    transcribed row the copies planned from it (``dependents``: manifest rows by the id whose transcript they
    reuse). Counts into ``summary``; ``total`` is how many rows this run writes (for the progress lines, one per
    written part and one every :data:`PROGRESS_EVERY_S` seconds, with ``progress``). ``on_write`` is called after
    each table is written (the run's progress object counts from ``summary``)."""

    def __init__(self, writer: PartWriter, summary: RunSummary, dependents: dict[str, list[ManifestRow]],
                 run_id: str, total: int, progress: bool = True, on_write: Optional[Callable[[], None]] = None):
        self.writer, self.summary, self.dependents = writer, summary, dependents
        self.run_id, self.total, self.progress, self.on_write = run_id, total, progress, on_write
        self.written: set[str] = set()
        self._reported = time.monotonic()

    def write(self, table: pa.Table, transcribed: bool = True) -> None:
        """Write ``table`` (TRANSCRIPT_SCHEMA rows), less the ids this run already wrote (a retried batch), then
        the copies planned from its rows. ``transcribed``: rows made by this run (their audio counts)."""
        ids = table.column("id").to_pylist()
        fresh = [i not in self.written for i in ids]
        if not all(fresh):
            log.warning("dropping %d rows already written by this run (a retried batch)", fresh.count(False))
            table = table.filter(pa.array(fresh))
            ids = [i for i, f in zip(ids, fresh) if f]
        if not ids:
            return
        self.written.update(ids)
        self.summary.add(table, transcribed)
        if transcribed:
            self.summary.transcribed += len(ids)
        else:
            self.summary.copied += len(ids)
        self.report(self.writer.write(table))
        if self.on_write is not None:
            self.on_write()
        copies = [TranscriptRow.copy_of(table.slice(i, 1).to_pylist()[0], manifest_source(dep), self.run_id)
                  for i, rid in enumerate(ids) for dep in self.dependents.get(rid, [])]
        if copies:
            self.write(rows_to_table(copies), transcribed=False)

    def report(self, parts: list[str]) -> None:
        """A progress line per written part, else one if the last was :data:`PROGRESS_EVERY_S` ago."""
        if not self.progress:
            return
        for part in parts:
            log.info("wrote %s (%d/%d files done)", part, len(self.written), self.total)
        now = time.monotonic()
        if parts or now - self._reported >= PROGRESS_EVERY_S:
            if not parts:
                log.info("%d/%d files done", len(self.written), self.total)
            self._reported = now

    def close(self) -> list[str]:
        """Write the rows in hand; returns every part this run wrote."""
        self.report(self.writer.close())
        return self.writer.parts


def write_planned_copies(folder: OutputFolder, plan: Plan, sink: Sink, run_id: str) -> None:
    """Read the rows that copies come from, take stale rows out, then write the copies (in that order: a source
    may be a row taken out)."""
    wanted: dict[str, dict[int, list[ManifestRow]]] = {}
    for copy in plan.copies:
        if copy.source is not None:
            wanted.setdefault(copy.source.part, {}).setdefault(copy.source.position, []).append(copy.row)
    copies = []
    for part, positions in wanted.items():
        table = folder.read_part(part)
        for position, targets in positions.items():
            source = table.slice(position, 1).to_pylist()[0]
            copies += [TranscriptRow.copy_of(source, manifest_source(row), run_id) for row in targets]
    if plan.take_out:
        expect: dict[str, dict[int, str]] = {}
        for old in plan.take_out:  # a part that changed since it was indexed is left whole (StorageError)
            expect.setdefault(old.part, {})[old.position] = old.id
        n = folder.take_out(plan.take_out_by_part(), run_id, expect=expect)
        log.info("set %d old rows aside under %s (%s)", n, folder.path("_replaced", run_id), dict(plan.reasons))
    if copies:
        sink.write(rows_to_table(copies), transcribed=False)
