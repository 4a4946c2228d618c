"""One run of the batch job (docs/job.md, docs/resume.md): :func:`run_job`.

Flow: read and validate the manifest in the driver (a bad manifest or config stops here, before any work) -> take
the output folder's lock (:mod:`pipelines.io.lock`: one run writes a folder at a time) -> start or join Ray, GPU
pre-flight -> read the key columns of the rows already in the folder -> hash every manifest row's file -> plan
(:func:`pipelines.io.resume.plan_run`: keep what is done, copy identical audio, take stale rows out) -> decode and
transcribe the rows left on Ray Data (:mod:`pipelines.job.dataset`), written as they arrive
(:mod:`pipelines.job.sink`) -> check the folder holds one row per manifest row, write the errors table, release
the lock.

Every URI (manifest, audio, output) may be a local path, ``file://``, ``s3://`` or another fsspec URL. The
``storage`` config is resolved once in the driver (:func:`pipelines.io.storage.resolve_storage`) and used by every
step.
"""

from __future__ import annotations

import dataclasses

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from typing import Optional, Sequence

import pyarrow as pa

from pipelines.config import JobConfig, config_fingerprint
from pipelines.core.errors import OutputIntegrityError, StorageError
from pipelines.io.lock import OutputLock
from pipelines.io.manifest import ManifestRow, read_manifest
from pipelines.core.schema import STATUS_EMPTY, STATUS_ERROR, STATUS_OK
from pipelines.io.output import ERRORS_FILE, OutputFolder, PartWriter, write_summary
from pipelines.io.progress import ProgressWriter
from pipelines.io.resume import DoneRow, FolderState, Plan, folder_state, load_index, plan_run
from pipelines.io.storage import Storage, check_output, resolve_storage
from pipelines.job.console import QuietRay
from pipelines.job.dataset import hash_rows, init_ray, transcribe_rows
from pipelines.job.sink import Sink, write_planned_copies
from pipelines.job.summary import RunSummary
from pipelines.preflight import check_gpu

log = logging.getLogger("raywhisper")

#: How many missing / doubled ids the error and the log name.
IDS_SHOWN = 10
#: Columns of the errors table (``DIR/_errors.parquet``).
ERROR_COLUMNS = ["id", "audio_filepath", "sha256", "error_type", "error_message", "attempts", "config_fingerprint",
                 "run_id", "created_at"]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus 6 random hex characters."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_job(cfg: JobConfig, manifest: str, output: str, run_id: Optional[str] = None, *,
            overwrite: bool = False, retry_errors: bool = False, break_lock: bool = False,
            transcribe_stage: Optional[type] = None, verbose: bool = False) -> RunSummary:
    """Run the whole job, or finish it: rows already done in ``output`` are kept (see
    :mod:`pipelines.io.resume`). The manifest is read and validated, and the output folder's lock taken
    (:mod:`pipelines.io.lock`), before Ray starts; the lock is refreshed while the run lives and released at its
    end, also when it fails.

    Args:
        overwrite: set every current part of ``output`` aside (``_replaced/<run_id>/``) and start afresh.
        retry_errors: redo the manifest rows whose current row is an error row.
        break_lock: take the output's lock even from a run whose heartbeat is fresh (the operator knows it is
            dead).
        transcribe_stage: a stand-in for :class:`~pipelines.stages.TranscribeStage` (tests).
        verbose: leave Ray's and Ray Data's own logging on the console; by default it goes to Ray's session log
            folder (:mod:`pipelines.job.console`; ``summary.ray_logs`` names it).

    Every URI may be a local path, ``file://``, ``s3://`` or another fsspec URL; ``cfg.storage`` (with the
    ``AWS_ENDPOINT_URL*`` environment, read now) says how to reach them.

    Raises:
        ManifestError: the manifest is unreadable or has a bad row (nothing has been transcribed).
        StorageError: the output cannot be written (missing bucket, access denied...), found before Ray starts;
            or the output folder cannot be listed, read or written after the retries (the rows written so far
            stay: a rerun goes on from them).
        GpuUnavailableError: the config asks for a GPU the cluster cannot give or a GPU task sees no CUDA
            (a ConfigError: exit code 2; nothing has been transcribed).
        OutputLockedError: another run holds the output's lock (a StorageError: exit code 2; nothing has been
            done), or this run lost it mid-run (it stops writing).
        OutputIntegrityError: after the run, the output does not hold exactly one row per manifest row (its
            ``summary`` attribute has the run's summary; exit code 4).
    """
    t0 = time.perf_counter()
    storage = resolve_storage(cfg.storage)
    rows = with_speaker_counts(cfg, read_manifest(manifest, storage.options_for(manifest)))
    check_diarizer(cfg)  # diarization on without the 'diarize' extra stops here, before any work
    check_output(output, storage)  # a missing bucket or a read-only output stops here, before any work
    run_id = run_id or new_run_id()
    lock = OutputLock(output, run_id, storage.options_for(output), stale_s=cfg.output.lock_stale_s,
                      heartbeat_s=cfg.output.lock_heartbeat_s, retry=storage.retry)
    lock.acquire(break_lock)  # before anything in the folder is touched; a second run stops here (exit 2)
    lock.start_heartbeat()
    try:
        run = _Run(cfg, manifest, output, run_id, rows, storage, lock, t0, overwrite=overwrite,
                   retry_errors=retry_errors, transcribe_stage=transcribe_stage)
        return run.execute(QuietRay() if not verbose else None)
    finally:
        lock.release()


class _Run:
    """The run, once the output's lock is held (see :func:`run_job`)."""

    def __init__(self, cfg: JobConfig, manifest: str, output: str, run_id: str, rows: list[ManifestRow],
                 storage: Storage, lock: OutputLock, t0: float, *, overwrite: bool, retry_errors: bool,
                 transcribe_stage: Optional[type]):
        self.cfg, self.output, self.run_id, self.rows = cfg, output, run_id, rows
        self.storage, self.lock, self.t0, self.overwrite = storage, lock, t0, overwrite
        self.retry_errors, self.transcribe_stage = retry_errors, transcribe_stage
        self.summary = RunSummary(run_id, manifest_rows=len(rows), max_error_rate=cfg.guards.max_error_rate)
        self.fingerprint = config_fingerprint(cfg.model, cfg.decoding, cfg.chunking,
                                         cfg.diarization.fingerprint_payload())
        self.hashes: dict[str, Optional[str]] = {}
        self.out_options = storage.options_for(output)
        self.folder = OutputFolder(output, self.out_options, storage.retry)
        self.progress = ProgressWriter(output, run_id, self.out_options, interval_s=cfg.output.progress_interval_s)
        self.kept: Counter = Counter()
        self.record = {"run_id": run_id, "manifest": manifest, "output": output, "overwrite": overwrite,
                       "retry_errors": retry_errors, "config": cfg.model_dump(mode="json"),
                       "config_fingerprint": self.fingerprint}
        log.info("manifest %s: %d files; output %s; run %s", manifest, len(rows), output, run_id)

    def execute(self, quiet: Optional[QuietRay]) -> RunSummary:
        """Start Ray, prepare the folder, do the work, then check the folder (:meth:`finish`). The progress object
        (:mod:`pipelines.io.progress`) is written from the folder's preparation on, and a last time with the
        run's end (``done``, ``failed``, or ``stopped`` on Ctrl-C / SIGTERM)."""
        try:
            self.start(quiet)
            done = self.prepare_folder()
            self.progress.update(files_total=len(self.rows))
            self.progress.start()
            writer = PartWriter(self.output, self.run_id, self.cfg.output.rows_per_file, self.cfg.output.compression,
                                self.out_options, self.storage.retry, flush_interval_s=self.cfg.output.flush_interval_s,
                                before_write=self.lock.check)
            writer.start_timer()  # rows in hand are written on time even while no batch arrives
            try:
                sink = self.work(writer, done)
            except BaseException as exc:
                self.save_on_failure(writer, exc)
                raise
            self.summary.parts = sink.close()
            return self.finish()
        except BaseException as exc:
            self.progress.finish(ended_as(exc))  # no-op if the folder was never prepared
            raise
        finally:
            if quiet is not None:
                quiet.restore()

    def start(self, quiet: Optional[QuietRay]) -> None:
        """Start or join Ray (its logging kept off the console when ``quiet``), then the GPU pre-flight."""
        self.summary.ray_logs = init_ray(self.cfg, quiet)
        self.summary.ray_start_s = time.perf_counter() - self.t0
        if self.summary.ray_logs:
            log.info("Ray's own logging goes to %s and the folder beside it (--verbose: to the console)",
                     self.summary.ray_logs)
        check_gpu(self.cfg)  # a GPU config that cannot get a usable GPU stops here (GpuUnavailableError)

    def prepare_folder(self) -> list[DoneRow]:
        """Clean the folder's ``_tmp/``, record the run as running, set parts aside (``--overwrite``, unreadable
        parts); returns the index of the rows already there."""
        self.lock.check()
        self.folder.prepare()  # cleans _tmp/: only under the lock
        write_summary(self.output, self.run_id, self.record | {"status": "running"}, self.out_options,
                      self.storage.retry)
        if self.overwrite:
            self.summary.parts_set_aside = self.folder.move_aside(self.folder.parts(), self.run_id)
            log.info("--overwrite: set %d parts aside under %s", len(self.summary.parts_set_aside),
                     self.folder.path("_replaced", self.run_id))
        done, unreadable = load_index(self.folder)
        if unreadable:
            log.warning("parts that cannot be read are set aside (their rows are redone): %s", unreadable)
            self.summary.parts_set_aside += self.folder.move_aside(unreadable, self.run_id)
        return done

    def plan(self, done: list[DoneRow]) -> tuple[Plan, list[str]]:
        """Hash every manifest row's file and plan the run; returns the plan and the ids held back (their audio
        could not be reached: their rows in the folder stay as they are)."""
        t1 = time.perf_counter()
        hashes, unreachable = hash_rows(self.cfg, self.rows, self.storage)
        self.summary.hash_s = time.perf_counter() - t1
        self.hashes = hashes
        present = {d.id for d in done}
        held = [r.id for r in self.rows if r.id in unreachable and r.id in present]
        if held:
            log.warning("%d rows left as they are in the output: their audio could not be reached to hash it "
                        "(storage unavailable after the retries); rerun later to check them: %s", len(held),
                        held[:10])
        self.summary.held_back = len(held)
        plan = plan_run([r for r in self.rows if r.id not in set(held)], hashes, done, self.fingerprint,
                        self.retry_errors)
        log.info("plan: %s (taken out: %s)", plan.counts(), dict(plan.reasons) or "none")
        self.summary.kept, self.summary.taken_out = len(plan.keep), dict(plan.reasons)
        return plan, held

    def work(self, writer: PartWriter, done: list[DoneRow]) -> Sink:
        """Plan, write the planned copies, transcribe the rest; returns the sink that wrote them."""
        plan, held = self.plan(done)
        self.kept = Counter(d.status for d in plan.keep)
        self.report_progress(phase="transcribing")
        sink = Sink(writer, self.summary, plan.dependents(), self.run_id,
                    len(self.rows) - len(plan.keep) - len(held), progress=self.cfg.progress,
                    on_write=self.report_progress)
        self.lock.check()
        write_planned_copies(self.folder, plan, sink, self.run_id)
        self.summary.worker_died = transcribe_rows(self.cfg, plan.transcribe, self.run_id, sink, self.hashes,
                                                   self.transcribe_stage, self.storage)
        return sink

    def report_progress(self, **fields) -> None:
        """Hand the counts so far to the progress writer (it writes them on its own clock)."""
        s, kept = self.summary, self.kept
        self.progress.update(files_done=sum(kept.values()) + s.files, files_kept=sum(kept.values()),
                             rows={"ok": kept[STATUS_OK] + s.ok, "empty": kept[STATUS_EMPTY] + s.empty,
                                   "error": kept[STATUS_ERROR] + s.error},
                             audio_s_done=s.audio_s, **fields)

    def save_on_failure(self, writer: PartWriter, exc: BaseException) -> None:
        """Write the rows in hand and the failed run's summary (finished rows are never lost, not even on
        Ctrl-C); a storage error here is logged, the run's own error is the one raised."""
        try:
            writer.close()
            write_summary(self.output, self.run_id,
                          self.record | self.summary.to_dict() | {"status": ended_as(exc), "failure": repr(exc)},
                          self.out_options, self.storage.retry)
        except StorageError as also:  # the storage that failed the run may fail these too: keep the first error
            log.error("could not save the rows in hand or the failed run's summary: %s", also)

    def finish(self) -> RunSummary:
        """Check the folder holds each manifest row once, write the errors table and the summary.

        Raises:
            OutputIntegrityError: ids missing or doubled (the error carries the summary).
        """
        self.lock.check()
        state = check_folder(self.folder, self.rows, self.summary)
        self.summary.error_rate_exceeded = (self.cfg.guards.max_error_rate is not None
                                            and state.error_rate > self.cfg.guards.max_error_rate)
        self.summary.wall_s = time.perf_counter() - self.t0
        exact = not (state.missing or state.doubled)
        self.progress.finish("done" if exact else "failed", files_done=state.rows,
                             rows={"ok": state.ok, "empty": state.empty, "error": state.error},
                             audio_s_done=self.summary.audio_s)
        write_summary(self.output, self.run_id,
                      self.record | self.summary.to_dict() | {"status": "done" if exact else "not exactly once"},
                      self.out_options, self.storage.retry)
        if not exact:
            error = OutputIntegrityError(
                f"output {self.output}: run {self.run_id} ended without exactly one row per manifest row: "
                f"{len(state.missing)} ids missing {state.missing[:IDS_SHOWN]}, {len(state.doubled)} ids doubled "
                f"{state.doubled[:IDS_SHOWN]}; rerun the same command to finish the missing rows and set the extra "
                "ones aside")
            error.summary = self.summary
            raise error
        return self.summary


def ended_as(exc: BaseException) -> str:
    """How a run that raised ``exc`` ended: ``stopped`` (Ctrl-C, or SIGTERM: ``ray job stop`` and
    ``DELETE /v1/jobs/{id}`` send it, and Ray's driver exits on it) or ``failed``."""
    return "stopped" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"


def with_speaker_counts(cfg: JobConfig, rows: list[ManifestRow]) -> list[ManifestRow]:
    """The manifest rows with their speaker counts where diarization is on; with it off the counts are dropped, so
    they change neither the work nor the rows' fingerprints."""
    if cfg.diarization.enabled:
        return rows
    return [dataclasses.replace(r, num_speakers=None, min_speakers=None, max_speakers=None)
            if r.speaker_counts else r for r in rows]


def check_diarizer(cfg: JobConfig) -> None:
    """With ``diarization.enabled``, load the diarizer once in the driver (about 2 s).

    Raises:
        DiarizationUnavailableError: the ``diarize`` extra is missing or its models do not load (a ConfigError:
            exit code 2, nothing done).
    """
    if cfg.diarization.enabled:
        from pipelines.core.diarization import Diarizer

        Diarizer(cfg.diarization.options)


def check_folder(folder: OutputFolder, rows: Sequence[ManifestRow], summary: RunSummary) -> FolderState:
    """The end-of-run check: count the manifest's current rows in the folder (``summary.output``), write the
    errors table (``DIR/_errors.parquet``), log missing or doubled ids."""
    done, _ = load_index(folder)
    state = folder_state(rows, done)
    errors_path = folder.write_atomic(folder.path(ERRORS_FILE), errors_table(state))
    summary.output = {"rows": state.rows, "ok": state.ok, "empty": state.empty, "error": state.error,
                      "error_rate": state.error_rate, "missing": state.missing, "doubled": state.doubled,
                      "errors_table": errors_path}
    if state.missing or state.doubled:
        log.error("the output does not hold each manifest row exactly once: missing %s, doubled %s",
                  state.missing[:IDS_SHOWN], state.doubled[:IDS_SHOWN])
    return state


def errors_table(state: FolderState) -> pa.Table:
    """The error rows of the manifest's ids in the folder, in :data:`ERROR_COLUMNS`."""
    fields = {"attempts": pa.int32(), "created_at": pa.timestamp("ms", tz="UTC")}
    schema = pa.schema([(c, fields.get(c, pa.string())) for c in ERROR_COLUMNS])
    return pa.Table.from_pylist([{c: getattr(r, c) for c in ERROR_COLUMNS} for r in state.errors], schema=schema)
