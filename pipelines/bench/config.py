"""What a benchmark runs: :class:`BenchConfig` (systems, manifest, the job config the baselines share), the
baselines' settings derived from it, and the manifest slice every system reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.config import JobConfig, apply_overrides, load_tree
from pipelines.core.errors import ConfigError

SYSTEMS = ("raywhisper", "raywhisper-engine", "faster-whisper-sequential", "faster-whisper-batched")
SystemName = Literal["raywhisper", "raywhisper-engine", "faster-whisper-sequential", "faster-whisper-batched"]

#: The compute type ``--device`` picks unless ``--set job.model.compute_type=...`` is given: float16 on a GPU
#: (what the issue-16 H200 measurements ran), int8 on CPU (configs/bench/dev.yaml's).
DEVICE_COMPUTE_TYPES = {"cuda": "float16", "cpu": "int8"}


class BenchConfig(BaseModel):
    """One benchmark: which systems, over which manifest, with which job config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest: Optional[str] = Field(None, description="Manifest to run (the CLI's --manifest wins).")
    systems: tuple[SystemName, ...] = Field(SYSTEMS, min_length=1, description="Systems to run, in order.")
    limit: Optional[int] = Field(None, ge=1, description="Use only the first N manifest rows.")
    repeat: int = Field(1, ge=1, description="Repeat the manifest K times under new ids (a corpus K times as long).")
    baseline_batch_size: int = Field(8, ge=1, description="batch_size of faster-whisper-batched.")
    engine_prepare_threads: Optional[int] = Field(
        None, ge=1, description="Threads of raywhisper-engine that read, decode and VAD-chunk files while the "
        "model transcribes (None: job.decode.concurrency, the job's decode actors).")
    engine_prefetch_groups: int = Field(
        1, ge=1, description="Groups of job.transcribe.files_per_batch files raywhisper-engine prepares ahead of "
        "the group being transcribed (the decoded audio of this many groups plus one is held at once).")
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


def device_overrides(device: Optional[str], overrides: Sequence[str]) -> list[str]:
    """``overrides`` plus what ``--device`` sets: ``job.model.device``, ``job.model.require_cuda`` (cuda: a model
    that cannot see the GPU fails instead of running on CPU) and, unless ``overrides`` already set it,
    ``job.model.compute_type`` from :data:`DEVICE_COMPUTE_TYPES`. No ``device``: ``overrides`` unchanged."""
    if device is None:
        return list(overrides)
    extra = [f"job.model.device={device}", f"job.model.require_cuda={'true' if device == 'cuda' else 'false'}"]
    if not any(item.split("=", 1)[0].strip() == "job.model.compute_type" for item in overrides):
        extra.insert(1, f"job.model.compute_type={DEVICE_COMPUTE_TYPES[device]}")
    return [*overrides, *extra]


def in_process(systems: Sequence[str]) -> tuple[str, ...]:
    """``systems`` with the Ray job (``raywhisper``) replaced by the in-process engine (``raywhisper-engine``), each
    once, in order: what a ``--device cuda`` run measures (one GPU, no Ray)."""
    out: list[str] = []
    for name in systems:
        name = "raywhisper-engine" if name == "raywhisper" else name
        if name not in out:
            out.append(name)
    return tuple(out)


def engine_prepare_threads(cfg: BenchConfig) -> int:
    """Prepare threads of ``raywhisper-engine``: ``engine_prepare_threads``, else the job's decode actors."""
    return cfg.engine_prepare_threads or cfg.job.decode.concurrency


def child_env(system: str, cfg: BenchConfig) -> dict[str, str]:
    """Environment variables set for a system's child process on top of the bench's own: ``raywhisper-engine`` gets
    ``OMP_NUM_THREADS`` as the job's transcription actors do (``model.cpu_threads``, else ``transcribe.num_cpus``;
    pipelines/job/dataset.py). CTranslate2's CPU kernels and the VAD's ONNX runtime read it when they start; left
    unset they start a thread per core beside the workers (dev corpus, 2 cores: 55.6 s unset, 41.9 s at 1)."""
    if system != "raywhisper-engine":
        return {}
    m, t = cfg.job.model, cfg.job.transcribe
    return {"OMP_NUM_THREADS": str(m.cpu_threads or max(1, int(t.num_cpus)))}


def baseline_cpu_threads(cfg: BenchConfig) -> int:
    """CPU threads of the faster-whisper baselines: as many as the job's transcriber uses in all
    (``model.cpu_threads`` x ``model.num_workers``), so both sides get the same cores; 0 stays CTranslate2's
    default."""
    m = cfg.job.model
    return m.cpu_threads * m.num_workers if m.cpu_threads else 0


def baseline_beam_size(cfg: BenchConfig) -> int:
    """Beam size of the faster-whisper baselines: ``baseline_beam_size``, else the job's."""
    return cfg.baseline_beam_size or cfg.job.decoding.beam_size


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


def manifest_rows(path: Path) -> list[dict]:
    """The rows of a manifest written by :func:`prepare_manifest` (``id``, ``audio_filepath``, ``text``, ``subset``)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

