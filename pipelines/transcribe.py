"""The batch job: a manifest of audio in, Parquet transcripts out, on Ray Data; rerun it to finish what is left.

    python -m pipelines.transcribe --manifest URI --output DIR [--config configs/local.yaml] [--set key=value ...]
        [--retry-errors] [--overwrite] [--break-lock]

Flow: read and validate the manifest in the driver (a bad manifest or config stops here, before any work) ->
take the output folder's lock (:mod:`pipelines.io.lock`: one run writes a folder at a time; a second run stops
with exit code 2 naming the holder) -> start or join Ray, GPU pre-flight -> read the key columns of the rows
already in ``DIR`` -> hash every manifest
row's file (:class:`~pipelines.stages.HashStage`) -> plan (:func:`pipelines.io.resume.plan_run`: keep what is
done, copy identical audio, take stale rows out) -> ``ray.data.from_items`` over the rows left ->
:class:`~pipelines.stages.DecodeChunkStage` on a CPU actor pool -> :class:`~pipelines.stages.TranscribeStage` on
the transcription actor pool (``num_gpus`` per actor on GPU nodes, CPU threads otherwise) -> streamed back to the
driver, which writes Parquet parts as rows arrive (a part every ``output.rows_per_file`` rows, or sooner once a
row has waited ``output.flush_interval_s``), never a second row for an id -> check the folder holds one row per
manifest row (else exit code 4), release the lock, print a summary. Works the same run directly or under
``ray job submit`` (it joins the cluster it finds).

Every URI (manifest, audio, output) may be a local path, ``file://``, ``s3://`` or another fsspec URL. The
``storage`` config is resolved once in the driver (:func:`pipelines.io.storage.resolve_storage`) and used by every
step: the manifest, the output check before Ray starts, the output folder's listing and reads for the plan, the
hash and decode actors' reads (same options, same retries), the part, errors-table and summary writes.

Actors that die are restarted and their batch retried by Ray (``*.max_task_retries``); a batch that still fails
is dropped and its files are retried one per batch, and a file that kills its worker every time becomes an error
row (``WorkerDiedError``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pyarrow as pa

from pipelines.config import JobConfig, config_fingerprint, load_config, row_fingerprint
from pipelines.core.errors import (ConfigError, ManifestError, OutputIntegrityError, StorageError,
                                   WorkerDiedError)
from pipelines.core.schema import SCHEMA_VERSION, STATUS_EMPTY, STATUS_ERROR, STATUS_OK, rows_to_table
from pipelines.io.lock import OutputLock
from pipelines.io.manifest import ManifestRow, read_manifest
from pipelines.io.output import ERRORS_FILE, OutputFolder, PartWriter, write_summary
from pipelines.io.resume import FolderState, Plan, copy_row, folder_state, load_index, plan_run
from pipelines.io.storage import Storage, check_output, is_transient, resolve_storage
from pipelines.preflight import check_gpu
from pipelines.redact import install_log_scrubber, scrub_text

log = logging.getLogger("raywhisper")

DEFAULT_CONFIG = "configs/local.yaml"
#: Exit code of a run whose error rate passed ``guards.max_error_rate`` (2 is a bad config or manifest, or
#: storage that cannot be used).
EXIT_ERROR_RATE = 3
#: Exit code of a run after which the output does not hold exactly one row per manifest row (ids missing or
#: doubled; the error names them): rerun the same command.
EXIT_NOT_EXACTLY_ONCE = 4
#: How many missing / doubled ids the error and the log name.
IDS_SHOWN = 10
#: Columns of the errors table (``DIR/_errors.parquet``).
ERROR_COLUMNS = ["id", "audio_filepath", "sha256", "error_type", "error_message", "attempts", "config_fingerprint",
                 "run_id", "created_at"]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus 6 random hex characters."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunSummary:
    """Counts and timings of one run. ``files``/``ok``/``empty``/``error`` count the rows this run wrote (transcribed
    or copied); ``audio_s`` is the audio it transcribed, so ``real_time_factor`` = wall / audio (lower is faster)
    and ``x_real_time`` = audio / wall. ``output`` describes the manifest's rows in the folder after the run."""

    run_id: str
    files: int = 0
    ok: int = 0
    empty: int = 0
    error: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    ray_start_s: float = 0.0
    hash_s: float = 0.0
    errors: list[dict] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    manifest_rows: int = 0
    kept: int = 0
    transcribed: int = 0
    copied: int = 0
    worker_died: int = 0
    held_back: int = 0
    taken_out: dict[str, int] = field(default_factory=dict)
    parts_set_aside: list[str] = field(default_factory=list)
    output: Optional[dict] = None
    max_error_rate: Optional[float] = None
    error_rate_exceeded: bool = False

    def add(self, table: pa.Table, transcribed: bool = True) -> None:
        """Count the rows of a written table (``transcribed``: their audio counts towards ``audio_s``)."""
        cols = table.select(["id", "status", "duration_s", "error_type", "error_message"]).to_pylist()
        for row in cols:
            self.files += 1
            status = row["status"]
            if status == STATUS_OK:
                self.ok += 1
            elif status == STATUS_EMPTY:
                self.empty += 1
            else:
                self.error += 1
                self.errors.append({k: row[k] for k in ("id", "error_type", "error_message")})
            if transcribed:
                self.audio_s += row["duration_s"] or 0.0

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s else float("nan")

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s else float("nan")

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id, "files": self.files, "ok": self.ok, "empty": self.empty, "error": self.error,
            "audio_s": self.audio_s, "audio_hours": self.audio_s / 3600, "wall_s": self.wall_s,
            "ray_start_s": self.ray_start_s, "hash_s": self.hash_s, "real_time_factor": self.real_time_factor,
            "x_real_time": self.x_real_time, "manifest_rows": self.manifest_rows, "kept": self.kept,
            "transcribed": self.transcribed, "copied": self.copied, "worker_died": self.worker_died,
            "held_back": self.held_back,
            "taken_out": self.taken_out, "parts_set_aside": self.parts_set_aside, "output": self.output,
            "max_error_rate": self.max_error_rate, "error_rate_exceeded": self.error_rate_exceeded,
            "errors": self.errors, "parts": self.parts,
        }

    def render(self) -> str:
        taken = ", ".join(f"{n} {why}" for why, n in sorted(self.taken_out.items()))
        lines = [
            f"run {self.run_id}: {self.files} files: {self.ok} ok, {self.empty} empty, {self.error} error",
            f"manifest {self.manifest_rows} rows: {self.kept} already done, {self.transcribed} transcribed, "
            f"{self.copied} copied from identical audio"
            + (f"; {sum(self.taken_out.values())} old rows set aside ({taken})" if self.taken_out else "")
            + (f"; {len(self.parts_set_aside)} parts set aside (--overwrite)" if self.parts_set_aside else "")
            + (f"; {self.held_back} left as they were (their audio could not be reached: rerun later)"
               if self.held_back else ""),
            f"audio {self.audio_s / 3600:.3f} h ({self.audio_s:.1f} s) in {self.wall_s:.1f} s wall "
            f"(Ray start {self.ray_start_s:.1f} s, hashing {self.hash_s:.1f} s): {self.x_real_time:.1f}x real time, "
            f"real-time factor {self.real_time_factor:.4f}",
        ]
        if self.output is not None:
            o = self.output
            lines.append(f"output now: {o['rows']} rows for the manifest: {o['ok']} ok, {o['empty']} empty, "
                         f"{o['error']} error ({o['error_rate']:.1%}); errors table {o['errors_table']}")
            if o["missing"] or o["doubled"]:
                lines.append(f"  NOT EXACTLY ONCE: {len(o['missing'])} ids missing, {len(o['doubled'])} ids doubled "
                             f"(e.g. {(o['missing'] + o['doubled'])[:3]}): rerun the same command")
        if self.error_rate_exceeded:
            lines += ["", f"!!! ERROR RATE {self.output['error_rate']:.1%} IS ABOVE guards.max_error_rate "
                          f"{self.max_error_rate:.1%}: {self.output['error']} OF {self.manifest_rows} ROWS FAILED !!!",
                      "!!! see the errors below and the errors table; the job exits with code 3 !!!", ""]
        for err in self.errors[:20]:
            lines.append(f"  error {err['id']}: {err['error_type']}: {err['error_message']}")
        if len(self.errors) > 20:
            lines.append(f"  ... and {len(self.errors) - 20} more error rows (status == 'error' in the output)")
        return "\n".join(lines)


def init_ray(cfg: JobConfig) -> None:
    """Join the Ray cluster named by ``ray.address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else
    start a local one."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": cfg.ray.include_dashboard, "log_to_driver": True}
    local = cfg.ray.address in (None, "local")
    if local and cfg.ray.num_cpus is not None:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    if local and cfg.ray.node_ip_address is not None:
        kwargs["_node_ip_address"] = cfg.ray.node_ip_address
    ray.init(address=cfg.ray.address, **kwargs)


def build_dataset(cfg: JobConfig, rows: Sequence[ManifestRow], run_id: str, storage: Optional[Storage] = None,
                  transcribe_stage: Optional[type] = None):
    """The lazy Ray Dataset of transcript rows for ``rows`` (decode/chunk -> transcribe), not yet executed.
    ``storage``: how the decode actors read the audio (None: resolved in each actor from ``cfg.storage``).

    An actor that dies is restarted and its batch retried ``max_task_retries`` times; a batch that still fails is
    dropped (``max_errored_blocks = -1``), and its rows simply never come back: the caller sees which.
    ``transcribe_stage`` replaces :class:`~pipelines.stages.TranscribeStage` (tests, experiments).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.stages import DecodeChunkStage, TranscribeStage

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress
    ctx.execution_options.preserve_order = False
    ctx.max_errored_blocks = -1
    blocks = max(1, math.ceil(len(rows) / cfg.decode.files_per_batch))
    ds = ray.data.from_items([r.to_dict() for r in rows], override_num_blocks=min(blocks, len(rows)))
    # max_restarts/max_task_retries have no named map_batches parameter in Ray 2.60 yet; the generic remote args
    # still work there (deprecated for Ray 2.64), so keep their warning out of every run's log.
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    ds = ds.map_batches(
        DecodeChunkStage,
        fn_constructor_args=(cfg, storage),
        batch_size=cfg.decode.files_per_batch,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.decode.concurrency),
        num_cpus=cfg.decode.num_cpus,
        max_restarts=-1,
        max_task_retries=cfg.decode.max_task_retries,
    )
    ts = cfg.transcribe
    ds = ds.map_batches(
        transcribe_stage or TranscribeStage,
        fn_constructor_args=(cfg, run_id),
        batch_size=ts.files_per_batch,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=ts.min_actors, max_size=max(ts.min_actors, ts.max_actors)),
        num_cpus=ts.num_cpus,
        num_gpus=ts.num_gpus or None,
        # Ray sets OMP_NUM_THREADS to the actor's CPU count (often 1); CTranslate2's CPU kernels read it, so
        # give them the threads the model config asks for (measured: 30% slower on 2 cores without this).
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cfg.model.cpu_threads or max(1, int(ts.num_cpus)))}},
        max_restarts=-1,
        max_task_retries=ts.max_task_retries,
    )
    return ds


def hash_rows(cfg: JobConfig, rows: Sequence[ManifestRow], storage: Optional[Storage] = None
              ) -> tuple[dict[str, Optional[str]], set[str]]:
    """The SHA-256 of every row's file (None where it cannot be read), hashed on the decode pool's CPUs, read
    through ``storage`` (the decode stage's options and retries; None: ``cfg.storage``).

    Returns:
        The hashes by row id, and the ids whose file could not be hashed because the storage could not be reached
        after the retries (not because of the file: those are just None).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.stages import HashStage

    storage = storage or resolve_storage(cfg.storage)

    rows_per_block = 64
    # A row with an error from the manifest (a name that is not UTF-8) is never read: no hash, no copy of another
    # row's transcript by identical audio.
    hashes: dict[str, Optional[str]] = {r.id: None for r in rows if r.error}
    rows = [r for r in rows if not r.error]
    unreachable: set[str] = set()
    if not rows:
        return hashes, unreachable
    ds = ray.data.from_items([{"id": r.id, "uri": r.uri} for r in rows],
                             override_num_blocks=max(1, math.ceil(len(rows) / rows_per_block)))
    ds = ds.map_batches(HashStage, fn_constructor_args=(cfg, storage), batch_size=rows_per_block,
                        batch_format="pyarrow", compute=ActorPoolStrategy(size=cfg.decode.concurrency),
                        num_cpus=cfg.decode.num_cpus)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        ids = batch.column("id").to_pylist()
        hashes.update(zip(ids, batch.column("sha256").to_pylist()))
        unreachable.update(i for i, u in zip(ids, batch.column("unreachable").to_pylist()) if u)
    for row in rows:  # a block lost to a dead worker: hash here rather than guess
        if row.id not in hashes:
            try:
                hashes[row.id] = storage.hash(row.uri, cfg.guards.max_file_bytes)
            except Exception as exc:  # noqa: BLE001 - unreadable: the decode stage writes the reason
                hashes[row.id] = None
                if is_transient(exc):
                    unreachable.add(row.id)
    return hashes, unreachable


class _Sink:
    """Writes rows as they arrive: never a second row for an id in one run, and with each transcribed row the
    copies planned from it (identical audio)."""

    def __init__(self, writer: PartWriter, summary: RunSummary, dependents: dict[str, list[ManifestRow]],
                 run_id: str, total: int):
        self.writer, self.summary, self.dependents = writer, summary, dependents
        self.run_id, self.total = run_id, total
        self.written: set[str] = set()

    def write(self, table: pa.Table, transcribed: bool = True) -> None:
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
        for part in self.writer.write(table):
            log.info("wrote %s (%d/%d files done)", part, len(self.written), self.total)
        copies = [copy_row(table.slice(i, 1).to_pylist()[0], dep, self.run_id)
                  for i, rid in enumerate(ids) for dep in self.dependents.get(rid, [])]
        if copies:
            self.write(rows_to_table(copies), transcribed=False)


def _worker_died_row(cfg: JobConfig, row: ManifestRow, sha256: Optional[str], run_id: str, attempts: int) -> dict:
    return {
        "id": row.id, "audio_filepath": row.audio_filepath, "sha256": sha256, "reference": row.reference,
        "status": STATUS_ERROR, "error_type": WorkerDiedError.__name__, "attempts": attempts,
        "error_message": (f"{row.audio_filepath}: the worker processing this file failed on each of {attempts} "
                          "attempts, the last ones in a batch of its own: it died (killed, out of memory, a crash "
                          "in the decoder or the model) or raised out of the stage; see the Ray worker logs"),
        "segments": [], "num_chunks": 0, "model": cfg.model.name, "compute_type": cfg.model.compute_type,
        "config_fingerprint": row_fingerprint(config_fingerprint(cfg.model, cfg.decoding, cfg.chunking),
                                              row.language, row.prompt),
        "run_id": run_id, "schema_version": SCHEMA_VERSION, "created_at": dt.datetime.now(dt.timezone.utc),
    }


def _transcribe(cfg: JobConfig, rows: list[ManifestRow], run_id: str, sink: _Sink, hashes: dict,
                transcribe_stage: Optional[type], storage: Optional[Storage] = None) -> int:
    """Run the decode/transcribe passes over ``rows``; returns how many became WorkerDiedError rows."""
    isolated = cfg.model_copy(update={
        "decode": cfg.decode.model_copy(update={"files_per_batch": 1}),
        "transcribe": cfg.transcribe.model_copy(update={"files_per_batch": 1}),
    })
    left = rows
    for attempt, pass_cfg in enumerate((cfg, isolated)):
        if not left:
            return 0
        if attempt:
            log.warning("%d files never came back (their batch's worker died %d times); retrying them one per "
                        "batch", len(left), cfg.transcribe.max_task_retries + 1)
        for batch in build_dataset(pass_cfg, left, run_id, storage, transcribe_stage).iter_batches(
                batch_format="pyarrow", batch_size=None):
            sink.write(batch)
        left = [r for r in left if r.id not in sink.written]
    attempts = 2 * (cfg.transcribe.max_task_retries + 1)
    for row in left:
        sink.write(rows_to_table([_worker_died_row(cfg, row, hashes.get(row.id), run_id, attempts)]))
    return len(left)


def _errors_table(state: FolderState) -> pa.Table:
    fields = {"attempts": pa.int32(), "created_at": pa.timestamp("ms", tz="UTC")}
    schema = pa.schema([(c, fields.get(c, pa.string())) for c in ERROR_COLUMNS])
    return pa.Table.from_pylist([{c: getattr(r, c) for c in ERROR_COLUMNS} for r in state.errors], schema=schema)


def run_job(cfg: JobConfig, manifest: str, output: str, run_id: Optional[str] = None, *,
            overwrite: bool = False, retry_errors: bool = False, break_lock: bool = False,
            transcribe_stage: Optional[type] = None) -> RunSummary:
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
    rows = read_manifest(manifest, storage.options_for(manifest))
    check_output(output, storage)  # a missing bucket or a read-only output stops here, before any work
    run_id = run_id or new_run_id()
    lock = OutputLock(output, run_id, storage.options_for(output), stale_s=cfg.output.lock_stale_s,
                      heartbeat_s=cfg.output.lock_heartbeat_s, retry=storage.retry)
    lock.acquire(break_lock)  # before anything in the folder is touched; a second run stops here (exit 2)
    lock.start_heartbeat()
    try:
        return _run_locked(cfg, manifest, output, run_id, rows, storage, lock, t0, overwrite=overwrite,
                           retry_errors=retry_errors, transcribe_stage=transcribe_stage)
    finally:
        lock.release()


def _run_locked(cfg: JobConfig, manifest: str, output: str, run_id: str, rows: list[ManifestRow], storage: Storage,
                lock: OutputLock, t0: float, *, overwrite: bool, retry_errors: bool,
                transcribe_stage: Optional[type]) -> RunSummary:
    """The run, once ``lock`` is held (see :func:`run_job`)."""
    summary = RunSummary(run_id, manifest_rows=len(rows), max_error_rate=cfg.guards.max_error_rate)
    fingerprint = config_fingerprint(cfg.model, cfg.decoding, cfg.chunking)
    log.info("manifest %s: %d files; output %s; run %s", manifest, len(rows), output, run_id)
    init_ray(cfg)
    summary.ray_start_s = time.perf_counter() - t0
    check_gpu(cfg)  # a GPU config that cannot get a usable GPU stops here (GpuUnavailableError), before any work
    out_options = storage.options_for(output)
    folder = OutputFolder(output, out_options, storage.retry)
    lock.check()
    folder.prepare()  # cleans _tmp/: only under the lock
    record = {"run_id": run_id, "manifest": manifest, "output": output, "overwrite": overwrite,
              "retry_errors": retry_errors, "config": cfg.model_dump(mode="json"), "config_fingerprint": fingerprint}
    write_summary(output, run_id, record | {"status": "running"}, out_options, storage.retry)
    if overwrite:
        summary.parts_set_aside = folder.move_aside(folder.parts(), run_id)
        log.info("--overwrite: set %d parts aside under %s", len(summary.parts_set_aside), folder.path("_replaced", run_id))
    done, unreadable = load_index(folder)
    if unreadable:
        log.warning("parts that cannot be read are set aside (their rows are redone): %s", unreadable)
        summary.parts_set_aside += folder.move_aside(unreadable, run_id)
    writer = PartWriter(output, run_id, cfg.output.rows_per_file, cfg.output.compression, out_options, storage.retry,
                        flush_interval_s=cfg.output.flush_interval_s, before_write=lock.check)
    writer.start_timer()  # rows in hand are written on time even while no batch arrives
    try:
        t1 = time.perf_counter()
        hashes, unreachable = hash_rows(cfg, rows, storage)
        summary.hash_s = time.perf_counter() - t1
        # A row whose audio the storage would not serve (down, throttling past the retries) has no key to check
        # its rows in the folder against: leave those rows as they are rather than set a good transcript aside.
        present = {d.id for d in done}
        held = [r.id for r in rows if r.id in unreachable and r.id in present]
        if held:
            log.warning("%d rows left as they are in the output: their audio could not be reached to hash it "
                        "(storage unavailable after the retries); rerun later to check them: %s", len(held), held[:10])
        summary.held_back = len(held)
        plan = plan_run([r for r in rows if r.id not in set(held)], hashes, done, fingerprint, retry_errors)
        log.info("plan: %s (taken out: %s)", plan.counts(), dict(plan.reasons) or "none")
        summary.kept, summary.taken_out = len(plan.keep), dict(plan.reasons)
        sink = _Sink(writer, summary, plan.dependents(), run_id, len(rows) - len(plan.keep) - len(held))
        lock.check()
        _write_existing_copies(folder, plan, sink, run_id)
        summary.worker_died = _transcribe(cfg, plan.transcribe, run_id, sink, hashes, transcribe_stage, storage)
    except BaseException as exc:
        try:
            writer.close()  # finished rows are never lost, not even on Ctrl-C
            write_summary(output, run_id, record | summary.to_dict() | {"status": "failed", "failure": repr(exc)},
                          out_options, storage.retry)
        except StorageError as also:  # the storage that failed the run may fail these too: keep the first error
            log.error("could not save the rows in hand or the failed run's summary: %s", also)
        raise
    writer.close()
    summary.parts = writer.parts
    lock.check()
    _finish(cfg, folder, rows, summary)
    summary.wall_s = time.perf_counter() - t0
    exact = not (summary.output["missing"] or summary.output["doubled"])
    write_summary(output, run_id, record | summary.to_dict() | {"status": "done" if exact else "not exactly once"},
                  out_options, storage.retry)
    if not exact:
        missing, doubled = summary.output["missing"], summary.output["doubled"]
        error = OutputIntegrityError(
            f"output {output}: run {run_id} ended without exactly one row per manifest row: {len(missing)} ids "
            f"missing {missing[:IDS_SHOWN]}, {len(doubled)} ids doubled {doubled[:IDS_SHOWN]}; rerun the same "
            "command to finish the missing rows and set the extra ones aside")
        error.summary = summary
        raise error
    return summary


def _write_existing_copies(folder: OutputFolder, plan: Plan, sink: _Sink, run_id: str) -> None:
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
            copies += [copy_row(source, row, run_id) for row in targets]
    if plan.take_out:
        expect: dict[str, dict[int, str]] = {}
        for old in plan.take_out:  # a part that changed since it was indexed is left whole (StorageError)
            expect.setdefault(old.part, {})[old.position] = old.id
        n = folder.take_out(plan.take_out_by_part(), run_id, expect=expect)
        log.info("set %d old rows aside under %s (%s)", n, folder.path("_replaced", run_id), dict(plan.reasons))
    if copies:
        sink.write(rows_to_table(copies), transcribed=False)


def _finish(cfg: JobConfig, folder: OutputFolder, rows: Sequence[ManifestRow], summary: RunSummary) -> None:
    """Check the folder holds each manifest row once, write the errors table, apply the error-rate alarm."""
    done, _ = load_index(folder)
    state = folder_state(rows, done)
    errors_path = folder.write_atomic(folder.path(ERRORS_FILE), _errors_table(state))
    summary.output = {"rows": state.rows, "ok": state.ok, "empty": state.empty, "error": state.error,
                      "error_rate": state.error_rate, "missing": state.missing, "doubled": state.doubled,
                      "errors_table": errors_path}
    if state.missing or state.doubled:
        log.error("the output does not hold each manifest row exactly once: missing %s, doubled %s",
                  state.missing[:IDS_SHOWN], state.doubled[:IDS_SHOWN])
    limit = cfg.guards.max_error_rate
    summary.error_rate_exceeded = limit is not None and state.error_rate > limit


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.transcribe",
        description="Transcribe a manifest of audio into Parquet with Ray Data and faster-whisper. Rerun the same "
                    "command to finish an interrupted job: rows already done in --output are kept.",
        epilog="exit codes: 0 done; 2 bad config or manifest, unusable storage, or --output locked by another "
               "run (the message names it); 3 error rate above guards.max_error_rate; 4 the output does not hold "
               "exactly one row per manifest row after the run (the ids are named): rerun the same command",
    )
    parser.add_argument("--manifest", required=True,
                        help="JSONL/CSV/Parquet manifest, a folder or a glob of audio files (local or fsspec URL)")
    parser.add_argument("--output", required=True, help="output folder for the Parquet dataset (local or URL)")
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.batch_size=16 (repeatable)")
    parser.add_argument("--run-id", default=None, help="run id recorded in every row (default: time + random)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="also redo the rows whose current row in --output is an error row")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh: set every current part of --output aside under _replaced/<run_id>/")
    parser.add_argument("--break-lock", action="store_true",
                        help="take --output's lock (_lock.json) even if its run's heartbeat is fresh; only when "
                             "sure that run is dead (a stale lock, or one of a process gone from this host, is "
                             "taken over without it)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit code: 0 done; 2 bad config or manifest, unusable storage, or the output
    folder locked by another run (the message names its run id, host, pid and heartbeat age); 3 error rate above
    ``guards.max_error_rate``; 4 (:data:`EXIT_NOT_EXACTLY_ONCE`) the output does not hold exactly one row per
    manifest row after the run (the message names the first missing and doubled ids)."""
    import os

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_scrubber()  # a URI's user:password@ never reaches the log (pipelines.redact)
    args = parse_args(argv)
    config_path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    try:
        cfg = load_config(config_path, args.overrides)
        summary = run_job(cfg, args.manifest, args.output, args.run_id,
                          overwrite=args.overwrite, retry_errors=args.retry_errors, break_lock=args.break_lock)
    except (ConfigError, ManifestError, StorageError) as exc:
        print(scrub_text(f"error: {exc}"), file=sys.stderr)
        return 2
    except OutputIntegrityError as exc:
        if getattr(exc, "summary", None) is not None:
            print(scrub_text(exc.summary.render()))
        print(scrub_text(f"error: {exc}"), file=sys.stderr)
        return EXIT_NOT_EXACTLY_ONCE
    print(scrub_text(summary.render()))
    print(scrub_text(f"transcripts: {args.output} (pandas.read_parquet({args.output!r}))"))
    return EXIT_ERROR_RATE if summary.error_rate_exceeded else 0


if __name__ == "__main__":
    sys.exit(main())
