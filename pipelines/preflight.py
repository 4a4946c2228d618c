"""Pre-flight checks the job driver runs once Ray is up and before any work (docs/architecture.md, invariant 5).

:func:`check_gpu` makes a GPU config fail fast, with a message a person can act on, instead of either of the
quiet failures it would otherwise meet on a cluster:

- the cluster has no GPU for the transcription actors and never will: Ray Data would wait for them forever;
- a task that Ray gave a GPU sees no CUDA device (no driver, CUDA/cuDNN libraries missing, a CPU-only image):
  CTranslate2 would fail per actor or, with ``model.device: auto``, faster-whisper would run on the CPU quietly.

It runs only when the config asks for a GPU (``transcribe.num_gpus`` > 0 or ``model.device: cuda``). The pure
checks (:func:`check_gpu_config`, :func:`check_gpu_capacity`, :func:`check_probe`) take plain values, so they are
tested without Ray or a GPU; :func:`check_gpu` gathers those values from the cluster and from one tiny task,
:func:`probe_cuda`, scheduled with the transcription actors' ``num_gpus``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from pipelines.config import JobConfig
from pipelines.core.errors import ConfigError, GpuUnavailableError

log = logging.getLogger("raywhisper")

#: How long the check waits for a GPU when the cluster has (or its autoscaler can add) enough of them: a g5/g6
#: node boots and pulls a GPU image in about 3-10 minutes; all GPUs may also be busy with another job.
GPU_WAIT_S = 900.0

#: Compute types CTranslate2 accepts on any device (it picks a supported one itself).
_ANY_DEVICE_TYPES = ("auto", "default")

_FIX_CUDA = (
    "Fix the GPU nodes (NVIDIA driver; CUDA 12 and cuDNN 9 libraries, e.g. the rayproject/ray:*-gpu image or "
    "`pip install nvidia-cublas-cu12 nvidia-cudnn-cu12`), or run on CPU with configs/local.yaml "
    "(--set model.device=cpu --set transcribe.num_gpus=0)."
)


@dataclass(frozen=True)
class CudaProbe:
    """What a task holding the transcription actors' GPU share sees (returned by :func:`probe_cuda`)."""

    node_ip: str
    cuda_devices: int  # ctranslate2.get_cuda_device_count()
    cuda_visible_devices: Optional[str]  # the environment variable Ray set for the task
    ray_gpu_ids: tuple = ()
    compute_types: tuple[str, ...] = field(default_factory=tuple)  # supported on cuda; () when no device
    ctranslate2_version: str = ""
    error: Optional[str] = None  # why CUDA could not be queried, if it could not

    def where(self) -> str:
        return (f"node {self.node_ip}, ray.get_gpu_ids()={list(self.ray_gpu_ids)}, "
                f"CUDA_VISIBLE_DEVICES={self.cuda_visible_devices!r}, CTranslate2 {self.ctranslate2_version}")


def wants_gpu(cfg: JobConfig) -> bool:
    """True when the config asks the transcription actors for a GPU."""
    return cfg.transcribe.num_gpus > 0 or cfg.model.device == "cuda"


def check_gpu_config(cfg: JobConfig) -> None:
    """Refuse GPU settings that contradict each other.

    Raises:
        ConfigError: ``device: cuda`` without ``num_gpus`` (Ray would give the actors no GPU, or let them share
            one unaccounted), or ``num_gpus`` with ``device: cpu`` (a reserved GPU left idle).
    """
    n, device = cfg.transcribe.num_gpus, cfg.model.device
    if device == "cuda" and n <= 0:
        raise ConfigError(
            "model.device is 'cuda' but transcribe.num_gpus is 0: Ray would schedule the transcription actors "
            "without a GPU. Set transcribe.num_gpus=1 (as configs/gpu.yaml does), or model.device=cpu."
        )
    if device == "cpu" and n > 0:
        raise ConfigError(
            f"transcribe.num_gpus={n:g} reserves a GPU per actor but model.device is 'cpu', so the GPU would sit "
            "idle. Set model.device=cuda (or auto), or transcribe.num_gpus=0."
        )


def check_gpu_capacity(cfg: JobConfig, cluster_gpus: float, max_gpus: Optional[float]) -> bool:
    """Decide whether a GPU can ever be had for one transcription actor.

    Args:
        cluster_gpus: GPUs in the cluster now (``ray.cluster_resources()['GPU']``).
        max_gpus: the most GPUs the autoscaler can reach (``transcribe.max_cluster_gpus``: Ray has no public API
            that reads the autoscaler's limits); None when unknown (a fixed cluster, a hand-started ``ray start``).

    Returns:
        True when the check should wait for a GPU (enough exist now, or the autoscaler can add them).

    Raises:
        GpuUnavailableError: not enough GPUs now and no known way to get them.
    """
    n = cfg.transcribe.num_gpus
    if cluster_gpus >= n:
        return True
    if max_gpus is not None and max_gpus >= n:
        return True
    if max_gpus is not None:
        can = f"and its autoscaler can reach at most {max_gpus:g}"
    else:
        can = ("and no autoscaler config says it could add GPU nodes (if the cluster does scale GPU nodes up from "
               "zero, set transcribe.max_cluster_gpus to the GPUs its autoscaler can reach, or keep one GPU worker "
               "running: min_workers: 1 in cluster.yaml, minReplicas: 1 in deploy/)")
    raise GpuUnavailableError(
        f"transcribe.num_gpus={n:g} per transcription actor, but the Ray cluster has {cluster_gpus:g} GPU(s) "
        f"{can}. Submit to a cluster with GPU workers (cluster.yaml, deploy/rayjob.yaml), or run on CPU with "
        "configs/local.yaml (--set model.device=cpu --set transcribe.num_gpus=0)."
    )


def check_probe(cfg: JobConfig, probe: CudaProbe) -> None:
    """Check what a GPU task saw.

    Raises:
        GpuUnavailableError: no CUDA device visible to CTranslate2, or the GPU does not support
            ``model.compute_type``.
    """
    n = cfg.transcribe.num_gpus
    if probe.cuda_devices < 1:
        said = f" (CTranslate2: {probe.error})" if probe.error else ""
        raise GpuUnavailableError(
            f"a task given transcribe.num_gpus={n:g} GPU(s) by Ray sees no CUDA device ({probe.where()}){said}: "
            f"faster-whisper cannot use the GPU there and would run on the CPU. {_FIX_CUDA}"
        )
    ct = cfg.model.compute_type
    if ct not in _ANY_DEVICE_TYPES and probe.compute_types and ct not in probe.compute_types:
        raise GpuUnavailableError(
            f"model.compute_type={ct!r} is not supported by the GPU on {probe.where()}; it supports "
            f"{sorted(probe.compute_types)}. Set one of those, e.g. --set model.compute_type=int8_float16 or float32."
        )


def probe_cuda() -> CudaProbe:
    """Run inside a Ray task that holds the actors' GPU share: what CTranslate2 sees there."""
    import ray

    from pipelines.core.whisper import cuda_device_count, library_versions, supported_compute_types

    count, types, error = 0, (), None
    try:
        count = cuda_device_count()
        if count:
            types = supported_compute_types("cuda")
    except Exception as exc:  # noqa: BLE001 - reported in the message, whatever it is
        error = f"{type(exc).__name__}: {exc}"
    return CudaProbe(
        node_ip=ray.util.get_node_ip_address(),
        cuda_devices=int(count),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        ray_gpu_ids=tuple(str(g) for g in ray.get_gpu_ids()),
        compute_types=types,
        ctranslate2_version=library_versions()["ctranslate2"],
        error=error,
    )


def check_gpu(cfg: JobConfig, wait_s: float = GPU_WAIT_S) -> Optional[CudaProbe]:
    """Fail fast when the config asks for a GPU that the job cannot use; call after ``ray.init``.

    Does nothing (returns None) for a CPU config. Otherwise checks the settings, the cluster's GPUs (now and what
    the autoscaler can add), then runs :func:`probe_cuda` with ``num_gpus=transcribe.num_gpus``, waiting up to
    ``wait_s`` for a GPU to be free or launched, and checks what it saw.

    Returns:
        The probe's findings (logged) when the GPU is usable.

    Raises:
        ConfigError: contradictory GPU settings.
        GpuUnavailableError: no GPU can be had, none became free within ``wait_s``, or a GPU task sees no CUDA.
    """
    if not wants_gpu(cfg):
        return None
    check_gpu_config(cfg)
    import ray

    n = cfg.transcribe.num_gpus
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    max_gpus = cfg.transcribe.max_cluster_gpus
    check_gpu_capacity(cfg, cluster_gpus, max_gpus)
    log.info("GPU check: %g GPU(s) in the cluster%s; running a CUDA probe with num_gpus=%g (waiting up to %.0f s)",
             cluster_gpus, "" if max_gpus is None else f", up to {max_gpus:g} with autoscaling", n, wait_s)
    ref = ray.remote(probe_cuda).options(num_gpus=n, num_cpus=0, max_retries=0, name="raywhisper-cuda-probe").remote()
    ready, _ = ray.wait([ref], timeout=wait_s)
    if not ready:
        ray.cancel(ref, force=True)
        raise GpuUnavailableError(
            f"no GPU became free for a task with num_gpus={n:g} within {wait_s:.0f} s (the cluster has "
            f"{cluster_gpus:g} GPU(s) now): other work holds them, or the autoscaler could not launch a GPU node "
            "(see `ray status` and the autoscaler log, e.g. GPU quota or spot capacity)."
        )
    probe = ray.get(ref)
    check_probe(cfg, probe)
    log.info("GPU check passed: %d CUDA device(s) on %s; compute types %s", probe.cuda_devices, probe.where(),
             ", ".join(probe.compute_types))
    return probe
