"""The GPU pre-flight checks (pipelines/preflight.py) as plain functions: no Ray, no GPU.

The same checks run end to end on a local Ray cluster in tests/job/test_cluster.py.
"""

from __future__ import annotations

import pytest

from pipelines.config import load_config
from pipelines.core.errors import ConfigError, GpuUnavailableError
from pipelines.preflight import CudaProbe, check_gpu, check_gpu_capacity, check_gpu_config, check_probe, wants_gpu
from tests.conftest import ROOT

GPU_YAML = ROOT / "configs" / "gpu.yaml"
LOCAL_YAML = ROOT / "configs" / "local.yaml"


def gpu_cfg(*overrides: str):
    return load_config(GPU_YAML, list(overrides))


def probe(**kw) -> CudaProbe:
    base = dict(node_ip="10.0.0.7", cuda_devices=1, cuda_visible_devices="0", ray_gpu_ids=("0",),
                compute_types=("float16", "float32", "int8", "int8_float16"), ctranslate2_version="4.8.5")
    return CudaProbe(**(base | kw))


def test_gpu_yaml_is_a_gpu_config():
    cfg = gpu_cfg()
    assert wants_gpu(cfg)
    assert cfg.transcribe.num_gpus == 1
    assert cfg.model.device == "cuda" and cfg.model.require_cuda
    assert cfg.model.compute_type in ("float16", "int8_float16")
    assert cfg.model.name not in ("bundled-tiny.en", "bundled-base")
    check_gpu_config(cfg)  # consistent


def test_cpu_config_skips_the_check_without_touching_ray():
    cfg = load_config(LOCAL_YAML)
    assert not wants_gpu(cfg)
    assert check_gpu(cfg) is None  # returns before importing or calling Ray


def test_cuda_device_without_num_gpus_is_a_config_error():
    with pytest.raises(ConfigError, match=r"transcribe.num_gpus is 0"):
        check_gpu_config(gpu_cfg("transcribe.num_gpus=0"))


def test_num_gpus_with_cpu_device_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.device is 'cpu'"):
        check_gpu_config(gpu_cfg("model.device=cpu"))


def test_no_gpu_and_no_autoscaler_fails_at_once():
    with pytest.raises(GpuUnavailableError, match=r"has 0 GPU\(s\).*no autoscaler config.*configs/local.yaml"):
        check_gpu_capacity(gpu_cfg(), cluster_gpus=0, max_gpus=None)


def test_no_gpu_and_an_autoscaler_without_gpus_fails_at_once():
    with pytest.raises(GpuUnavailableError, match=r"autoscaler can reach at most 0"):
        check_gpu_capacity(gpu_cfg(), cluster_gpus=0, max_gpus=0)


def test_waits_when_gpus_exist_or_can_be_added():
    assert check_gpu_capacity(gpu_cfg(), cluster_gpus=1, max_gpus=None)
    assert check_gpu_capacity(gpu_cfg(), cluster_gpus=0, max_gpus=8)


def test_more_gpus_per_actor_than_any_node_could_have_fails():
    with pytest.raises(GpuUnavailableError, match=r"num_gpus=2 per transcription actor.*has 1 GPU"):
        check_gpu_capacity(gpu_cfg("transcribe.num_gpus=2"), cluster_gpus=1, max_gpus=None)


def test_probe_without_cuda_fails_with_where_and_how_to_fix():
    seen = probe(cuda_devices=0, compute_types=(), error="RuntimeError: CUDA driver version is insufficient")
    with pytest.raises(GpuUnavailableError) as info:
        check_probe(gpu_cfg(), seen)
    msg = str(info.value)
    assert "sees no CUDA device" in msg and "run on the CPU" in msg
    assert "node 10.0.0.7" in msg and "CUDA_VISIBLE_DEVICES='0'" in msg
    assert "CUDA driver version is insufficient" in msg
    assert "configs/local.yaml" in msg


def test_probe_with_cuda_passes():
    check_probe(gpu_cfg(), probe())
    check_probe(gpu_cfg("model.compute_type=int8_float16"), probe())
    check_probe(gpu_cfg("model.compute_type=auto"), probe(compute_types=("float32",)))


def test_unsupported_compute_type_fails():
    with pytest.raises(GpuUnavailableError, match=r"compute_type='float16' is not supported.*float32"):
        check_probe(gpu_cfg(), probe(compute_types=("float32", "int8", "int8_float32")))


def test_gpu_unavailable_is_a_config_error_so_the_cli_exits_2():
    assert issubclass(GpuUnavailableError, ConfigError)


def test_the_autoscalers_reach_comes_from_the_config():
    """Ray has no public API for the autoscaler's limits: transcribe.max_cluster_gpus says them (unset: unknown, so
    a cluster without GPUs now stops at once, with the setting named in the message)."""
    assert gpu_cfg().transcribe.max_cluster_gpus is None
    scaling = gpu_cfg("transcribe.max_cluster_gpus=8")
    assert check_gpu_capacity(scaling, cluster_gpus=0, max_gpus=scaling.transcribe.max_cluster_gpus)
    with pytest.raises(GpuUnavailableError, match=r"set transcribe\.max_cluster_gpus"):
        check_gpu_capacity(gpu_cfg(), cluster_gpus=0, max_gpus=gpu_cfg().transcribe.max_cluster_gpus)


def test_probe_reads_cuda_through_the_adapter(monkeypatch):
    """probe_cuda asks CTranslate2 through pipelines.core.whisper (no ctranslate2 import of its own)."""
    import ray

    import pipelines.core.whisper as whisper
    from pipelines.preflight import probe_cuda

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])  # outside a task it would start a local Ray
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.7")
    monkeypatch.setattr(whisper, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(whisper, "supported_compute_types", lambda device: ("float16", "float32"))
    seen = probe_cuda()
    assert seen.cuda_devices == 1 and seen.compute_types == ("float16", "float32") and seen.error is None
    assert seen.ctranslate2_version == whisper.library_versions()["ctranslate2"]
