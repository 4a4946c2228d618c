"""MLflow-tracked benchmark runs: the raywhisper job against plain faster-whisper on the same manifest.

    python -m pipelines.bench --config configs/bench/dev.yaml [--manifest M] [--output out/bench]
                              [--systems raywhisper,faster-whisper-sequential] [--limit N] [--repeat K]

Systems (same model, compute type and threads; the baselines' beam size is ``baseline_beam_size``, by default
the job's):

- ``raywhisper``: the Ray Data job end to end, Ray start included (:func:`pipelines.transcribe.run_job`).
- ``faster-whisper-sequential``: ``WhisperModel.transcribe`` file after file.
- ``faster-whisper-batched``: ``BatchedInferencePipeline.transcribe(batch_size=...)`` file after file.

Each system runs in its own child process (one process tree per system, so Ray's processes are counted), while
the parent samples the resident memory of that whole tree; then the parent logs one MLflow run per system:
params (model, compute type, beam, batch size, actors, threads, library versions, git commit), metrics (audio
and wall seconds, real-time factor, files per second, WER overall and per subset, peak memory) and artifacts
(the per-file results table, a plot and the bench config with credentials masked), and prints a side-by-side
table with each baseline's wall time over the job's. The tracking store defaults to ``sqlite:///<output>/mlflow.db``; ``MLFLOW_TRACKING_URI`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import JobConfig, apply_overrides, load_tree
from pipelines.core.errors import ConfigError
from pipelines.redact import install_log_scrubber, scrub, scrub_text

SYSTEMS = ("raywhisper", "faster-whisper-sequential", "faster-whisper-batched")
SystemName = Literal["raywhisper", "faster-whisper-sequential", "faster-whisper-batched"]


class BenchConfig(BaseModel):
    """One benchmark: which systems, over which manifest, with which job config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Optional[str] = Field(None, description="Manifest to run (the CLI's --manifest wins).")
    systems: tuple[SystemName, ...] = Field(SYSTEMS, min_length=1, description="Systems to run, in order.")
    limit: Optional[int] = Field(None, ge=1, description="Use only the first N manifest rows.")
    repeat: int = Field(1, ge=1, description="Repeat the manifest K times under new ids (a corpus K times as long).")
    baseline_batch_size: int = Field(8, ge=1, description="batch_size of faster-whisper-batched.")
    baseline_beam_size: Optional[int] = Field(
        None, ge=1, description="beam_size of both faster-whisper baselines (None: the job's decoding.beam_size). "
        "The job's beam is one of its tuning knobs; the baselines stay what a plain faster-whisper user runs, and "
        "the WER columns show what the job's choice costs.")
    experiment: str = Field("raywhisper-bench", description="MLflow experiment name.")
    job: JobConfig = Field(default_factory=JobConfig, description="The raywhisper job config; its model, "
                           "compute type and threads (and beam size, unless baseline_beam_size is set) are used "
                           "by the baselines too.")


def load_bench_config(path: Optional[str], overrides: Sequence[str] = ()) -> BenchConfig:
    """Load a :class:`BenchConfig` from YAML plus ``--set`` overrides (``job.model.batch_size=16``).

    Raises:
        ConfigError: unreadable file or invalid field (named).
    """
    tree = apply_overrides(load_tree(path), list(overrides))
    try:
        return BenchConfig.model_validate(tree)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid bench config ({path}): {fields}") from exc


# ------------------------------------------------------------------------------------------- the manifest slice
def prepare_manifest(source: str, out_dir: Path, limit: Optional[int], repeat: int) -> Path:
    """Write the manifest the systems share: absolute paths, the first ``limit`` rows, repeated ``repeat`` times
    under ids suffixed ``#rK``. Returns its path."""
    from pipelines.io.manifest import read_manifest

    rows = read_manifest(source)[:limit] if limit else read_manifest(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench_manifest.jsonl"
    with open(path, "w") as f:
        for k in range(repeat):
            for r in rows:
                rid = r.id if repeat == 1 else f"{r.id}#r{k}"
                f.write(json.dumps({"id": rid, "audio_filepath": r.uri, "text": r.reference,
                                    "subset": r.audio_filepath.split("/")[0] if "/" in r.audio_filepath else ""})
                        + "\n")
    return path


def _manifest_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -------------------------------------------------------------------------------- the systems (child processes)
def run_system(system: str, cfg: BenchConfig, manifest: Path, out_dir: Path) -> dict:
    """Run one system in this process; returns ``{"wall_s", "results": [{id, text, duration_s, status}]}``.

    Wall time covers everything from start to the last transcript (model load and Ray start included).
    """
    rows = _manifest_rows(manifest)
    t0 = time.perf_counter()
    if system == "raywhisper":
        import pandas as pd

        from pipelines.transcribe import run_job

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
                        out_dir: Path) -> dict:
    """Run :func:`run_system` in a child process, sampling the memory of its process tree.

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
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        with TreeMemorySampler(proc.pid) as sampler:
            code = proc.wait()
    if code != 0 or not result_path.exists():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"system {system} failed (exit {code}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["peak_rss_bytes"] = sampler.peak_bytes
    return result


# ------------------------------------------------------------------------------------------------ scoring + mlflow
def score(rows: list[dict], result: dict) -> dict:
    """Metrics of one system's result against the manifest's references (WER: Whisper normaliser + jiwer)."""
    from pipelines.core.wer import word_error_rate

    by_id = {r["id"]: r for r in result["results"]}
    audio_s = sum(float(by_id.get(r["id"], {}).get("duration_s") or 0.0) for r in rows)
    wall = result["wall_s"]
    metrics = {
        "files": float(len(rows)),
        "audio_s": audio_s,
        "wall_s": wall,
        "real_time_factor": wall / audio_s if audio_s else float("nan"),
        "x_real_time": audio_s / wall if wall else float("nan"),
        "files_per_s": len(rows) / wall if wall else float("nan"),
        "peak_rss_mb": result.get("peak_rss_bytes", 0) / 2**20,
        "files_not_ok": float(sum(1 for r in rows if by_id.get(r["id"], {}).get("status") != "ok")),
    }
    scored = [r for r in rows if (r.get("text") or "").strip()]
    if scored:
        metrics["wer"] = word_error_rate([r["text"] for r in scored],
                                         [by_id.get(r["id"], {}).get("text") or "" for r in scored])
        for subset in sorted({r.get("subset") or "" for r in scored} - {""}):
            part = [r for r in scored if r.get("subset") == subset]
            metrics[f"wer_{subset}"] = word_error_rate([r["text"] for r in part],
                                                       [by_id.get(r["id"], {}).get("text") or "" for r in part])
    return metrics


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("ray", "faster-whisper", "ctranslate2", "pyarrow", "av", "raywhisper"):
        try:
            out[f"version_{pkg}"] = version(pkg)
        except PackageNotFoundError:
            out[f"version_{pkg}"] = "n/a"
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = "unknown"
    return out


def baseline_cpu_threads(cfg: BenchConfig) -> int:
    """CPU threads of the faster-whisper baselines: as many as the job's transcriber uses in all
    (``model.cpu_threads`` x ``model.num_workers``), so both sides get the same cores; 0 stays CTranslate2's
    default."""
    m = cfg.job.model
    return m.cpu_threads * m.num_workers if m.cpu_threads else 0


def baseline_beam_size(cfg: BenchConfig) -> int:
    """Beam size of the faster-whisper baselines: ``baseline_beam_size``, else the job's."""
    return cfg.baseline_beam_size or cfg.job.decoding.beam_size


def system_params(system: str, cfg: BenchConfig, n_files: int) -> dict:
    """The MLflow params of one system's run."""
    job = cfg.job
    params = {
        "system": system, "model": job.model.name, "compute_type": job.model.compute_type,
        "device": job.model.device, "beam_size": baseline_beam_size(cfg), "cpu_threads": baseline_cpu_threads(cfg),
        "files": n_files, "repeat": cfg.repeat,
    }
    if system == "raywhisper":
        params.update(beam_size=job.decoding.beam_size, cpu_threads=job.model.cpu_threads,
                      batch_size=job.model.batch_size, files_per_batch=job.transcribe.files_per_batch,
                      actors=job.transcribe.max_actors, decode_actors=job.decode.concurrency,
                      num_workers=job.model.num_workers,
                      num_gpus_per_actor=job.transcribe.num_gpus, pack_short_chunks=job.decoding.pack_short_chunks,
                      word_timestamps=job.decoding.word_timestamps)
    elif system == "faster-whisper-batched":
        params.update(batch_size=cfg.baseline_batch_size, actors=1)
    else:
        params.update(batch_size=1, actors=1)
    return params | _versions()


def _plot(all_metrics: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(all_metrics)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(names, [all_metrics[n]["x_real_time"] for n in names], color="tab:blue")
    ax1.set_title("Throughput (higher is better)")
    ax1.set_ylabel("audio seconds per wall second (x real time)")
    ax2.bar(names, [100 * all_metrics[n].get("wer", float("nan")) for n in names], color="tab:orange")
    ax2.set_title("Word error rate (lower is better)")
    ax2.set_ylabel("WER (%)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_to_mlflow(cfg: BenchConfig, tracking_uri: str, rows: list[dict], results: dict[str, dict],
                  all_metrics: dict[str, dict], out_dir: Path) -> dict[str, str]:
    """One MLflow run per system (params, metrics, the per-file results table, the plot and the whole bench
    config as ``bench_config.json``; params and config pass through :func:`pipelines.redact.scrub`); returns
    ``{system: run_id}``."""
    import csv

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(cfg.experiment)
    plot = out_dir / "bench.png"
    _plot(all_metrics, plot)
    run_ids = {}
    for system, metrics in all_metrics.items():
        table = out_dir / f"{system}.results.csv"
        by_id = {r["id"]: r for r in results[system]["results"]}
        from pipelines.core.wer import normalize

        with open(table, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "subset", "duration_s", "status", "reference", "hypothesis", "wer"])
            for r in rows:
                got = by_id.get(r["id"], {})
                ref, hyp = r.get("text") or "", got.get("text") or ""
                from pipelines.core.wer import word_error_rate

                wer = word_error_rate([ref], [hyp]) if normalize(ref).strip() else ""
                writer.writerow([r["id"], r.get("subset", ""), got.get("duration_s"), got.get("status"), ref, hyp, wer])
        with mlflow.start_run(run_name=system) as run:
            mlflow.log_params(scrub(system_params(system, cfg, len(rows))))
            mlflow.log_dict(scrub(cfg.model_dump(mode="json")), "bench_config.json")  # credentials masked
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_artifact(str(table))
            mlflow.log_artifact(str(plot))
            run_ids[system] = run.info.run_id
    return run_ids


def render_table(all_metrics: dict[str, dict]) -> str:
    """Side-by-side table; ``vs job`` is the system's wall time over raywhisper's (how many times faster the job is)."""
    job_wall = all_metrics.get("raywhisper", {}).get("wall_s")
    subsets = sorted({k for m in all_metrics.values() for k in m if k.startswith("wer_")})
    head = f"{'system':28} {'files':>5} {'audio s':>8} {'wall s':>7} {'x RT':>6} {'WER':>6} " + \
        " ".join(f"{s[4:]:>8}" for s in subsets) + f" {'peak MiB':>8} {'vs job':>6}"
    lines = [head, "-" * len(head)]
    for name, m in all_metrics.items():
        ratio = f"{m['wall_s'] / job_wall:6.2f}" if job_wall else "   n/a"
        lines.append(
            f"{name:28} {int(m['files']):5d} {m['audio_s']:8.1f} {m['wall_s']:7.1f} {m['x_real_time']:6.1f} "
            f"{100 * m.get('wer', float('nan')):5.1f}% " + " ".join(f"{100 * m.get(s, float('nan')):7.1f}%" for s in subsets)
            + f" {m['peak_rss_mb']:8.0f} {ratio}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="bench YAML (configs/bench/*.yaml)")
    parser.add_argument("--manifest", default=None, help="manifest to benchmark (overrides the config's)")
    parser.add_argument("--output", default="out/bench", help="folder for outputs, logs and the default MLflow store")
    parser.add_argument("--systems", default=None, help="comma-separated systems (default: the config's)")
    parser.add_argument("--limit", type=int, default=None, help="first N manifest rows only")
    parser.add_argument("--repeat", type=int, default=None, help="repeat the manifest K times under new ids")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a bench config field, e.g. --set job.model.batch_size=16")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out_dir = Path(args.output).resolve()
    try:
        cfg = load_bench_config(args.config, args.overrides)
    except ConfigError as exc:
        print(scrub_text(f"error: {exc}"), file=sys.stderr)
        return 2
    if args._child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        install_log_scrubber()
        result = run_system(args._child, cfg, Path(args.manifest), out_dir)
        (out_dir / f"{args._child}.result.json").write_text(json.dumps(result))
        return 0

    systems = tuple(args.systems.split(",")) if args.systems else cfg.systems
    unknown = set(systems) - set(SYSTEMS)
    source = args.manifest or cfg.manifest
    if unknown or not source:
        print(f"error: unknown systems {sorted(unknown)}" if unknown else "error: no manifest (--manifest)",
              file=sys.stderr)
        return 2
    manifest = prepare_manifest(source, out_dir, args.limit or cfg.limit, args.repeat or cfg.repeat)
    rows = _manifest_rows(manifest)
    results, all_metrics = {}, {}
    for system in systems:
        print(f"== {system}: {len(rows)} files", flush=True)
        results[system] = run_system_in_child(system, args.config, args.overrides, manifest, out_dir)
        all_metrics[system] = score(rows, results[system])
        print(f"   wall {all_metrics[system]['wall_s']:.1f} s, {all_metrics[system]['x_real_time']:.1f}x real time, "
              f"WER {100 * all_metrics[system].get('wer', float('nan')):.1f}%", flush=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out_dir / 'mlflow.db'}"
    run_ids = log_to_mlflow(cfg, tracking_uri, rows, results, all_metrics, out_dir)
    print(render_table(all_metrics))
    print(scrub_text(f"MLflow: {tracking_uri} experiment {cfg.experiment!r} runs {run_ids}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
