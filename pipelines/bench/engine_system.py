"""The ``raywhisper-engine`` bench system: the job's work in one process, without Ray.

The same engine calls as the job's stages (:mod:`pipelines.stages`), with threads instead of Ray actors:

1. a pool of ``engine_prepare_threads`` threads reads and prepares each file as the job's decode stage does
   (:func:`~pipelines.stages.read_and_prepare`: the job's storage with ``guards.max_file_bytes``, then
   :func:`~pipelines.core.engine.prepare`: decode with the job's input guards, Silero VAD chunks); PyAV and the
   VAD's ONNX runtime release the GIL, so the threads run in parallel;
2. the calling thread loads the model (while the first groups are prepared) and hands the files to
   :meth:`~pipelines.core.engine.Engine.transcribe_isolated` in groups of ``job.transcribe.files_per_batch``, in
   manifest order, while the next ``engine_prefetch_groups`` groups are being prepared.

A file that cannot be read or decoded, or that the model fails on, becomes an ``error`` result, as in the job. No
module here imports Ray: this system runs where Ray is not installed (a GPU box with only ctranslate2 and
faster-whisper).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

from pipelines.bench.config import BenchConfig, engine_prepare_threads
from pipelines.core.engine import Engine, Failure, InputLimits, Outcome, PreparedFile
from pipelines.core.schema import STATUS_ERROR
from pipelines.io.storage import Storage, resolve_storage
from pipelines.stages import input_limits, read_and_prepare


@dataclass(frozen=True)
class Prepared:
    """One manifest row after reading and :func:`~pipelines.core.engine.prepare`: the prepared file, or why there is
    none (``failure``)."""

    row: dict
    file: Optional[PreparedFile] = None
    failure: Optional[Failure] = None


def prepare_row(row: dict, storage: Storage, cfg: BenchConfig, limits: InputLimits) -> Prepared:
    """Read and prepare one bench manifest row (``id``, ``audio_filepath``: an absolute path or URI) through the job
    decode stage's own :func:`~pipelines.stages.read_and_prepare`; never raises for a bad file."""
    job_row = {"id": row["id"], "audio_filepath": row["audio_filepath"], "uri": row["audio_filepath"]}
    read = read_and_prepare(job_row, storage, cfg.job, limits)
    return Prepared(row, file=read.file, failure=read.failure)


def groups_of(rows: Sequence[dict], size: int) -> Iterator[list[dict]]:
    """``rows`` in consecutive groups of ``size`` (the last one shorter), in order."""
    for start in range(0, len(rows), size):
        yield list(rows[start:start + size])


def _result(item: Prepared, outcome: Optional[Outcome]) -> dict:
    """The bench's per-file result (``id``, ``text``, ``duration_s``, ``status``; ``error`` for an error)."""
    row_id = item.row["id"]
    if item.file is None or outcome is None or outcome.transcript is None:
        failure = item.failure or (outcome.failure if outcome is not None else None)
        message = failure.message if failure else "no transcript produced"
        duration = item.file.duration_s if item.file is not None else None
        return {"id": row_id, "text": "", "duration_s": duration, "status": STATUS_ERROR, "error": message}
    t = outcome.transcript
    return {"id": row_id, "text": t.text, "duration_s": item.file.duration_s, "status": t.status}


def transcribe_group(engine: Engine, items: Sequence[Prepared], retries: int) -> list[dict]:
    """One :meth:`~pipelines.core.engine.Engine.transcribe_isolated` call over the prepared files of ``items``;
    one result per item, in order (items that failed to prepare become their error result unsent)."""
    good = [item for item in items if item.file is not None]
    outcomes = engine.transcribe_isolated([item.file for item in good], retries=retries) if good else []
    by_key = {o.key: o for o in outcomes}
    return [_result(item, by_key.get(item.row["id"]) if item.file is not None else None) for item in items]


def run_engine(cfg: BenchConfig, rows: Sequence[dict], storage: Optional[Storage] = None,
               load_engine: Optional[Callable[[], Engine]] = None) -> list[dict]:
    """Transcribe ``rows`` (bench manifest rows, ids unique) in this process: preparation on a thread pool,
    overlapped with transcription group by group (see the module doc).

    Args:
        storage: how files are read (None: resolved from ``cfg.job.storage`` and this process's environment).
        load_engine: builds the engine (None: ``Engine(cfg.job.model, cfg.job.decoding)``; tests pass a loaded one).

    Returns:
        one result per row, in ``rows`` order: ``{"id", "text", "duration_s", "status"}`` (``"error"`` with an
        ``"error"`` message for a file that could not be read, decoded or transcribed).

    Raises:
        ModelLoadError: the model cannot be loaded (e.g. ``require_cuda`` without a CUDA device).
    """
    storage = storage or resolve_storage(cfg.job.storage)
    limits = input_limits(cfg.job)
    groups = groups_of(rows, cfg.job.transcribe.files_per_batch)
    ahead: deque[list[Future]] = deque()
    results: list[dict] = []
    with ThreadPoolExecutor(engine_prepare_threads(cfg), thread_name_prefix="prepare") as pool:

        def fill(queued: int) -> None:  # submit groups until ``queued`` are waiting
            while len(ahead) < queued:
                group = next(groups, None)
                if group is None:
                    return
                ahead.append([pool.submit(prepare_row, row, storage, cfg, limits) for row in group])

        try:
            fill(cfg.engine_prefetch_groups + 1)  # the first group and those behind it
            engine = load_engine() if load_engine else Engine(cfg.job.model, cfg.job.decoding)  # while they prepare
            while ahead:
                current = ahead.popleft()
                fill(cfg.engine_prefetch_groups)  # prepared while ``current`` is transcribed
                items = [future.result() for future in current]
                results.extend(transcribe_group(engine, items, cfg.job.transcribe.max_retries_per_file))
        except BaseException:  # a model that cannot load: do not prepare the queued groups first
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results
