"""MLflow-tracked benchmark runs: the raywhisper job and its engine against plain faster-whisper on the same
manifest.

    python -m pipelines.bench --config configs/bench/dev.yaml [--manifest M] [--output out/bench]
                              [--systems raywhisper,faster-whisper-sequential] [--limit N] [--repeat K]
                              [--device cpu|cuda]
    python -m pipelines.bench --config configs/bench/gpu.yaml --manifest M --device cuda   # one GPU, no Ray

Systems (same model, compute type and threads; the baselines' beam size is ``baseline_beam_size``, by default
the job's):

- ``raywhisper``: the Ray Data job end to end, Ray start included (:func:`pipelines.transcribe.run_job`).
- ``raywhisper-engine``: the same engine calls in one process without Ray: preparation (read, decode, VAD) on a
  thread pool overlapped with transcription in groups of the job's ``transcribe.files_per_batch``
  (:mod:`~pipelines.bench.engine_system`). ``--device cuda`` runs it instead of ``raywhisper``.
- ``faster-whisper-sequential``: ``WhisperModel.transcribe`` file after file.
- ``faster-whisper-batched``: ``BatchedInferencePipeline.transcribe(batch_size=...)`` file after file.

Each system runs in its own child process (one process tree per system, so Ray's processes are counted), while
the parent samples the resident memory of that whole tree; then the parent logs one MLflow run per system:
params (model, compute type, beam, batch size, actors, threads, library versions, git commit), metrics (audio
and wall seconds, real-time factor, files per second, WER overall and per subset, peak memory and, where NVML
sees a GPU, its mean and peak utilisation and peak memory: :mod:`~pipelines.bench.gpu`) and artifacts
(the per-file results table, a plot and the bench config with credentials masked), and prints a side-by-side
table with each baseline's wall time over the job's. The tracking store defaults to
``sqlite:///<output>/mlflow.db``; ``MLFLOW_TRACKING_URI`` overrides.

The package: :mod:`~pipelines.bench.config` (what runs), :mod:`~pipelines.bench.systems` (running and measuring
each system), :mod:`~pipelines.bench.engine_system` (the in-process engine), :mod:`~pipelines.bench.gpu` (GPU
sampling), :mod:`~pipelines.bench.report` (scores, MLflow runs, the table) and :mod:`~pipelines.bench.cli`. See
docs/benchmarks.md. Nothing here imports Ray except the ``raywhisper`` system's run.
"""

from pipelines.bench.cli import main
from pipelines.bench.config import (
    SYSTEMS,
    BenchConfig,
    baseline_beam_size,
    baseline_cpu_threads,
    device_overrides,
    in_process,
    load_bench_config,
    prepare_manifest,
)
from pipelines.bench.gpu import GpuSampler, GpuStats, nvml_reader
from pipelines.bench.report import log_to_mlflow, render_table, score, system_params
from pipelines.bench.systems import TreeMemorySampler, run_system, run_system_in_child

__all__ = ["SYSTEMS", "BenchConfig", "GpuSampler", "GpuStats", "TreeMemorySampler", "baseline_beam_size",
           "baseline_cpu_threads", "device_overrides", "in_process", "load_bench_config", "log_to_mlflow", "main",
           "nvml_reader", "prepare_manifest", "render_table", "run_system", "run_system_in_child", "score",
           "system_params"]
