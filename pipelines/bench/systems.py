"""Running and measuring the systems: each in a child process of its own (``python -m pipelines.bench --_child``),
its wall time measured inside it, and sampled from the parent while it runs: the peak resident memory of its
whole process tree (Ray's processes included) and, where NVML sees a GPU, the GPU's utilisation and memory
(:mod:`pipelines.bench.gpu`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from pipelines.bench.config import BenchConfig, baseline_beam_size, baseline_cpu_threads, manifest_rows
from pipelines.bench.gpu import GpuSampler, Reader


def run_system(system: str, cfg: BenchConfig, manifest: Path, out_dir: Path) -> dict:
    """Run one system in this process; returns ``{"wall_s", "results": [{id, text, duration_s, status}]}``.

    Wall time covers everything from start to the last transcript (model load, decoding, VAD and, for
    ``raywhisper``, Ray's start included). Only ``raywhisper`` imports Ray.
    """
    rows = manifest_rows(manifest)
    t0 = time.perf_counter()
    if system == "raywhisper-engine":
        from pipelines.bench.engine_system import run_engine

        results = run_engine(cfg, rows)
    elif system == "raywhisper":
        import pandas as pd

        from pipelines.job.run import run_job

        output = out_dir / "raywhisper_output"
        run_job(cfg.job, str(manifest), str(output))
        df = pd.read_parquet(output)
        results = df[["id", "text", "duration_s", "status"]].to_dict("records")
    else:
        from pipelines.core.whisper import Baseline

        baseline = Baseline(cfg.job.model, baseline_cpu_threads(cfg), batched=system == "faster-whisper-batched",
                            batch_size=cfg.baseline_batch_size)
        results = []
        for row in rows:
            try:
                text, duration_s = baseline.transcribe(row["audio_filepath"], baseline_beam_size(cfg))
                results.append({"id": row["id"], "text": text, "duration_s": duration_s,
                                "status": "ok" if text else "empty"})
            except Exception as exc:  # noqa: BLE001 - a baseline's failure on a file is recorded, not fatal
                results.append({"id": row["id"], "text": "", "duration_s": 0.0, "status": f"error: {exc}"})
    return {"wall_s": time.perf_counter() - t0, "results": results}


class TreeMemorySampler:
    """Peak resident memory (bytes) of a process and all its descendants, sampled every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        import psutil

        self._proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self._proc] + self._proc.children(recursive=True)
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_system_in_child(system: str, config_path: Optional[str], overrides: Sequence[str], manifest: Path,
                        out_dir: Path, gpu: Optional[Reader] = None, env: Optional[dict] = None) -> dict:
    """Run :func:`run_system` in a child process, sampling the memory of its process tree and, with a ``gpu``
    reader (:func:`pipelines.bench.gpu.nvml_reader`), the GPU: the result then has ``gpu_metrics``
    (:meth:`~pipelines.bench.gpu.GpuStats.metrics`). ``env``: variables set for the child on top of this
    process's environment (:func:`~pipelines.bench.config.child_env`).

    Raises:
        RuntimeError: the child failed (its stderr tail is in the message).
    """
    result_path = out_dir / f"{system}.result.json"
    cmd = [sys.executable, "-m", "pipelines.bench", "--_child", system, "--manifest", str(manifest),
           "--output", str(out_dir)]
    if config_path:
        cmd += ["--config", config_path]
    for item in overrides:
        cmd += ["--set", item]
    log_path = out_dir / f"{system}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        with TreeMemorySampler(proc.pid) as sampler, GpuSampler(gpu) as gpu_sampler:
            code = proc.wait()
    if code != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"system {system} failed (exit {code}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["peak_rss_bytes"] = sampler.peak_bytes
    if gpu_sampler.stats is not None:
        result["gpu_metrics"] = gpu_sampler.stats.metrics()
        result["gpu_name"] = getattr(gpu, "name", "")
    if gpu_sampler.error:
        print(f"   GPU sampling stopped early: {gpu_sampler.error}", flush=True)
    return result

