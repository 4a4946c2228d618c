"""Reporting a benchmark: each system's metrics against the manifest's references (:func:`score`), one MLflow run
per system (:func:`log_to_mlflow`: params, metrics, the per-file results, a plot, the bench config with credentials
masked) and a side-by-side table (:func:`render_table`; GPU columns when a GPU was sampled)."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path
from typing import Optional

from pipelines.bench.config import (
    BenchConfig,
    baseline_beam_size,
    baseline_cpu_threads,
    child_env,
    engine_prepare_threads,
)
from pipelines.redact import scrub


def score(rows: list[dict], result: dict) -> dict:
    """Metrics of one system's result against the manifest's references (WER: Whisper normaliser + jiwer), plus
    the GPU's (``gpu_util_mean_pct``, ``gpu_util_peak_pct``, ``gpu_mem_peak_mb``) when it was sampled."""
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
    return metrics | result.get("gpu_metrics", {})


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
    elif system == "raywhisper-engine":
        params.update(beam_size=job.decoding.beam_size, cpu_threads=job.model.cpu_threads,
                      batch_size=job.model.batch_size, files_per_batch=job.transcribe.files_per_batch,
                      actors=1, prepare_threads=engine_prepare_threads(cfg),
                      prefetch_groups=cfg.engine_prefetch_groups, num_workers=job.model.num_workers,
                      omp_num_threads=child_env(system, cfg)["OMP_NUM_THREADS"],
                      pack_short_chunks=job.decoding.pack_short_chunks, word_timestamps=job.decoding.word_timestamps)
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


def _write_results(path: Path, rows: list[dict], result: dict) -> None:
    """One system's per-file results as CSV: id, subset, duration_s, status, reference, hypothesis, wer."""
    from pipelines.core.wer import normalize, word_error_rate

    by_id = {r["id"]: r for r in result["results"]}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "subset", "duration_s", "status", "reference", "hypothesis", "wer"])
        for r in rows:
            got = by_id.get(r["id"], {})
            ref, hyp = r.get("text") or "", got.get("text") or ""
            wer = word_error_rate([ref], [hyp]) if normalize(ref).strip() else ""
            writer.writerow([r["id"], r.get("subset", ""), got.get("duration_s"), got.get("status"), ref, hyp, wer])


def log_to_mlflow(cfg: BenchConfig, tracking_uri: str, rows: list[dict], results: dict[str, dict],
                  all_metrics: dict[str, dict], out_dir: Path) -> dict[str, str]:
    """One MLflow run per system (params, metrics, the per-file results table, the plot and the whole bench
    config as ``bench_config.json``; params and config pass through :func:`pipelines.redact.scrub`); returns
    ``{system: run_id}``."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(cfg.experiment)
    plot = out_dir / "bench.png"
    _plot(all_metrics, plot)
    run_ids = {}
    for system, metrics in all_metrics.items():
        table = out_dir / f"{system}.results.csv"
        _write_results(table, rows, results[system])
        with mlflow.start_run(run_name=system) as run:
            params = system_params(system, cfg, len(rows))
            if results[system].get("gpu_name"):
                params["gpu_name"] = results[system]["gpu_name"]
            mlflow.log_params(scrub(params))
            mlflow.log_dict(scrub(cfg.model_dump(mode="json")), "bench_config.json")  # credentials masked
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            mlflow.log_artifact(str(table))
            mlflow.log_artifact(str(plot))
            run_ids[system] = run.info.run_id
    return run_ids


def reference_system(names) -> Optional[str]:
    """The system the others are compared with (``vs job``): ``raywhisper``, else ``raywhisper-engine`` (a
    ``--device cuda`` run), else none."""
    return next((n for n in ("raywhisper", "raywhisper-engine") if n in names), None)


def render_table(all_metrics: dict[str, dict]) -> str:
    """Side-by-side table; ``vs job`` is the system's wall time over the job's (``raywhisper``, or
    ``raywhisper-engine`` when the Ray job did not run: how many times faster the job is). With GPU figures: mean
    and peak utilisation (%) and peak memory in use (MiB) of the GPU while the system ran."""
    ref = reference_system(all_metrics)
    job_wall = all_metrics[ref]["wall_s"] if ref else None
    subsets = sorted({k for m in all_metrics.values() for k in m if k.startswith("wer_")})
    gpu = any("gpu_util_mean_pct" in m for m in all_metrics.values())
    head = f"{'system':28} {'files':>5} {'audio s':>8} {'wall s':>7} {'x RT':>6} {'WER':>6} " + \
        " ".join(f"{s[4:]:>8}" for s in subsets) + f" {'peak MiB':>8}" + \
        (f" {'GPU %':>6} {'GPU max':>7} {'GPU MiB':>8}" if gpu else "") + f" {'vs job':>6}"
    lines = [head, "-" * len(head)]
    for name, m in all_metrics.items():
        ratio = f"{m['wall_s'] / job_wall:6.2f}" if job_wall else "   n/a"
        nan = float("nan")
        gpu_cells = (f" {m.get('gpu_util_mean_pct', nan):6.1f} {m.get('gpu_util_peak_pct', nan):7.0f}"
                     f" {m.get('gpu_mem_peak_mb', nan):8.0f}") if gpu else ""
        lines.append(
            f"{name:28} {int(m['files']):5d} {m['audio_s']:8.1f} {m['wall_s']:7.1f} {m['x_real_time']:6.1f} "
            f"{100 * m.get('wer', float('nan')):5.1f}% " + " ".join(f"{100 * m.get(s, float('nan')):7.1f}%" for s in subsets)
            + f" {m['peak_rss_mb']:8.0f}" + gpu_cells + f" {ratio}"
        )
    return "\n".join(lines)
