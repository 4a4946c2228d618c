"""The job on Ray Data (docs/job.md): start or join Ray, the hash pass, the decode -> transcribe dataset, and the
pass that retries one file per batch the files whose batch's worker died.

The work itself is in :mod:`pipelines.stages` (plain classes run by actor pools here) and the engine behind them.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Optional, Sequence

from pipelines.config import JobConfig
from pipelines.core.rows import TranscriptRow, rows_to_table
from pipelines.io.manifest import ManifestRow
from pipelines.io.storage import Storage, is_transient, resolve_storage
from pipelines.job.console import QuietRay, session_logs_dir
from pipelines.job.sink import Sink, manifest_source
from pipelines.stages import provenance

log = logging.getLogger("raywhisper")

#: Manifest rows per block of the hash pass.
HASH_ROWS_PER_BLOCK = 64


def init_ray(cfg: JobConfig, quiet: Optional[QuietRay] = None) -> Optional[str]:
    """Join the Ray cluster named by ``ray.address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), else
    start a local one; set Ray Data's options for the job.

    ``quiet``: keep Ray's and Ray Data's internal logging off the console (:mod:`pipelines.job.console`); None
    leaves it as Ray sets it up (``--verbose``). Returns the file that holds Ray's driver-side messages in a quiet
    run (None otherwise).
    """
    import ray

    if quiet is not None:
        quiet.hold()
    if not ray.is_initialized():
        kwargs = {"include_dashboard": cfg.ray.include_dashboard, "log_to_driver": quiet is None}
        local = cfg.ray.address in (None, "local")
        if local and cfg.ray.num_cpus is not None:
            kwargs["num_cpus"] = cfg.ray.num_cpus
        if local and cfg.ray.node_ip_address is not None:
            kwargs["_node_ip_address"] = cfg.ray.node_ip_address
        ray.init(address=cfg.ray.address, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress and quiet is None
    ctx.execution_options.preserve_order = False
    ctx.max_errored_blocks = -1
    return quiet.route(session_logs_dir()) if quiet is not None else None


def build_dataset(cfg: JobConfig, rows: Sequence[ManifestRow], run_id: str, storage: Optional[Storage] = None,
                  transcribe_stage: Optional[type] = None):
    """The lazy Ray Dataset of transcript rows for ``rows`` (decode/chunk -> transcribe), not yet executed.
    ``storage``: how the decode actors read the audio (None: resolved in each actor from ``cfg.storage``).

    An actor that dies is restarted and its batch retried ``max_task_retries`` times; a batch that still fails is
    dropped (``DataContext.max_errored_blocks = -1``, set by :func:`init_ray`), and its rows simply never come
    back: the caller sees which. ``transcribe_stage`` replaces :class:`~pipelines.stages.TranscribeStage` (tests,
    experiments).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.stages import DecodeChunkStage, DiarizeStage, TranscribeStage

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
    dz = cfg.diarization
    if dz.enabled:  # a CPU pool of its own between decode and transcribe (docs/diarization.md)
        ds = ds.map_batches(
            DiarizeStage,
            fn_constructor_args=(cfg,),
            batch_size=dz.files_per_batch,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=dz.concurrency),
            num_cpus=dz.num_cpus,
            max_restarts=-1,
            max_task_retries=dz.max_task_retries,
        )
    ts = cfg.transcribe
    return ds.map_batches(
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
    # A row with an error from the manifest (a name that is not UTF-8) is never read: no hash, no copy of another
    # row's transcript by identical audio.
    hashes: dict[str, Optional[str]] = {r.id: None for r in rows if r.error}
    rows = [r for r in rows if not r.error]
    unreachable: set[str] = set()
    if not rows:
        return hashes, unreachable
    ds = ray.data.from_items([{"id": r.id, "uri": r.uri} for r in rows],
                             override_num_blocks=max(1, math.ceil(len(rows) / HASH_ROWS_PER_BLOCK)))
    ds = ds.map_batches(HashStage, fn_constructor_args=(cfg, storage), batch_size=HASH_ROWS_PER_BLOCK,
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


def transcribe_rows(cfg: JobConfig, rows: list[ManifestRow], run_id: str, sink: Sink,
                    hashes: dict[str, Optional[str]], transcribe_stage: Optional[type] = None,
                    storage: Optional[Storage] = None) -> int:
    """Decode and transcribe ``rows``, writing each batch of output rows to ``sink`` as it comes; the files whose
    batch never came back (its worker died every time) get a second pass, one file per batch; a file that still
    does not come back becomes a ``WorkerDiedError`` row. Returns how many did."""
    isolated = cfg.model_copy(update={
        "decode": cfg.decode.model_copy(update={"files_per_batch": 1}),
        "transcribe": cfg.transcribe.model_copy(update={"files_per_batch": 1}),
        "diarization": cfg.diarization.model_copy(update={"files_per_batch": 1}),
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
    prov = provenance(cfg, run_id)
    for row in left:
        sink.write(rows_to_table([TranscriptRow.worker_died(manifest_source(row, hashes.get(row.id)), attempts, prov)]))
    return len(left)
