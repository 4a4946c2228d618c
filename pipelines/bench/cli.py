"""MLflow-tracked benchmark runs: the raywhisper job against plain faster-whisper on the same manifest.

The command line of ``python -m pipelines.bench`` (see :mod:`pipelines.bench` for what it runs): the parent runs
each system in a child process (the hidden ``--_child SYSTEM`` mode), scores it, logs it to MLflow and prints the
side-by-side table.

``--device cuda`` (or ``cpu``) sets every system's model device and its compute type (:func:`device_overrides`).
On cuda (from ``--device`` or the config) the Ray job gives way to the in-process engine (:func:`in_process`: one
GPU, no Ray), and the run is refused (exit 2) when CTranslate2 sees no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipelines.bench.config import (
    SYSTEMS,
    BenchConfig,
    child_env,
    device_overrides,
    in_process,
    load_bench_config,
    manifest_rows,
    prepare_manifest,
)
from pipelines.bench.gpu import nvml_reader
from pipelines.bench.report import log_to_mlflow, render_table, score
from pipelines.bench.systems import run_system, run_system_in_child
from pipelines.core.errors import ConfigError
from pipelines.redact import install_log_scrubber, scrub_text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="bench YAML (configs/bench/*.yaml)")
    parser.add_argument("--manifest", default=None, help="manifest to benchmark (overrides the config's)")
    parser.add_argument("--output", default="out/bench", help="folder for outputs, logs and the default MLflow store")
    parser.add_argument("--systems", default=None, help="comma-separated systems (default: the config's)")
    parser.add_argument("--limit", type=int, default=None, help="first N manifest rows only")
    parser.add_argument("--repeat", type=int, default=None, help="repeat the manifest K times under new ids")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="model device of every system (cuda: float16 unless --set job.model.compute_type=..., "
                        "and the in-process engine instead of the Ray job; cpu: int8 unless set). Default: the "
                        "config's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a bench config field, e.g. --set job.model.batch_size=16")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return parser


def _child(system: str, cfg: BenchConfig, manifest: Path, out_dir: Path) -> int:
    """The child process: run one system, write its result as ``<out_dir>/<system>.result.json``."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_scrubber()
    result = run_system(system, cfg, manifest, out_dir)
    (out_dir / f"{system}.result.json").write_text(json.dumps(result))
    return 0


def _run_all(args: argparse.Namespace, cfg: BenchConfig, out_dir: Path) -> int:
    """The parent: each system in its own child process, scored, then logged to MLflow and printed side by side."""
    systems = tuple(args.systems.split(",")) if args.systems else cfg.systems
    if cfg.job.model.device == "cuda" and "raywhisper" in systems:
        systems = in_process(systems)
        print("note: on cuda the bench runs raywhisper-engine (the engine in one process, one GPU, no Ray) "
              "instead of the Ray job", flush=True)
    unknown = set(systems) - set(SYSTEMS)
    source = args.manifest or cfg.manifest
    if unknown or not source:
        print(f"error: unknown systems {sorted(unknown)}" if unknown else "error: no manifest (--manifest)",
              file=sys.stderr)
        return 2
    manifest = prepare_manifest(source, out_dir, args.limit or cfg.limit, args.repeat or cfg.repeat)
    rows = manifest_rows(manifest)
    results, all_metrics = {}, {}
    gpu, why = nvml_reader()
    print(f"GPU: {gpu.name}, sampled every 0.2 s" if gpu else f"GPU: not sampled, {why}", flush=True)
    try:
        for system in systems:
            print(f"== {system}: {len(rows)} files", flush=True)
            results[system] = run_system_in_child(system, args.config, args.overrides, manifest, out_dir, gpu,
                                                  child_env(system, cfg))
            all_metrics[system] = m = score(rows, results[system])
            print(f"   wall {m['wall_s']:.1f} s, {m['x_real_time']:.1f}x real time, "
                  f"WER {100 * m.get('wer', float('nan')):.1f}%"
                  + (f", GPU {m['gpu_util_mean_pct']:.1f}% mean" if "gpu_util_mean_pct" in m else ""), flush=True)
    finally:
        if gpu is not None:
            gpu.close()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out_dir / 'mlflow.db'}"
    run_ids = log_to_mlflow(cfg, tracking_uri, rows, results, all_metrics, out_dir)
    print(render_table(all_metrics))
    print(scrub_text(f"MLflow: {tracking_uri} experiment {cfg.experiment!r} runs {run_ids}"))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pipelines.bench``; returns the exit code (2: bad config, unknown system, no manifest, or
    ``--device cuda`` where CTranslate2 sees no CUDA device)."""
    args = _parser().parse_args(argv)
    out_dir = Path(args.output).resolve()
    args.overrides = device_overrides(args.device, args.overrides)  # the children get them as --set
    try:
        cfg = load_bench_config(args.config, args.overrides)
    except ConfigError as exc:
        print(scrub_text(f"error: {exc}"), file=sys.stderr)
        return 2
    if args._child:
        return _child(args._child, cfg, Path(args.manifest), out_dir)
    if cfg.job.model.device == "cuda" and not _cuda_seen():
        return 2
    return _run_all(args, cfg, out_dir)


def _cuda_seen() -> bool:
    """Whether CTranslate2 sees a CUDA device; if not, says so on stderr (the run is refused before any work)."""
    from pipelines.core.whisper import cuda_device_count

    if cuda_device_count() > 0:
        return True
    print("error: job.model.device is cuda (--device cuda), but CTranslate2 sees no CUDA device here "
          "(ctranslate2.get_cuda_device_count() is 0): check the NVIDIA driver, CUDA_VISIBLE_DEVICES and the "
          "CUDA 12 / cuDNN 9 libraries (scripts/gpu_bench.sh installs them), or run with --device cpu",
          file=sys.stderr)
    return False
