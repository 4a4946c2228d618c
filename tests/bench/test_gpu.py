"""GPU sampling and the --device switch of the bench, without a GPU: the sampler's arithmetic with injected
readers, NVML's absence, a stand-in pynvml module for the device choice, the cuda refusal, the table's GPU
columns. The real NVML path needs an NVIDIA driver and GPU and is not run here (see docs/benchmarks.md)."""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import pytest

from pipelines.bench import cli, gpu
from pipelines.bench.config import child_env, device_overrides, in_process, load_bench_config
from pipelines.bench.gpu import GpuReading, GpuSampler, summarize
from pipelines.bench.report import render_table, score
from tests.conftest import ROOT

MIB = 2**20


def test_summarize_is_the_mean_and_peaks():
    readings = [GpuReading(0.0, 500 * MIB), GpuReading(50.0, 900 * MIB), GpuReading(100.0, 700 * MIB),
                GpuReading(30.0, 600 * MIB)]
    stats = summarize(readings)
    assert stats.samples == 4 and stats.util_mean_pct == pytest.approx(45.0) and stats.util_peak_pct == 100.0
    assert stats.memory_peak_bytes == 900 * MIB
    assert stats.metrics() == {"gpu_util_mean_pct": pytest.approx(45.0), "gpu_util_peak_pct": 100.0,
                               "gpu_mem_peak_mb": 900.0, "gpu_samples": 4.0}
    assert summarize([]) is None


def test_sampler_reads_on_a_thread_until_stopped():
    values = iter([10.0, 30.0, 20.0] * 1000)
    calls = []

    def read():
        calls.append(next(values))
        return GpuReading(calls[-1], int(calls[-1]) * MIB)

    with GpuSampler(read, interval_s=0.01) as sampler:
        deadline = time.monotonic() + 5
        while len(calls) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    n = len(calls)
    time.sleep(0.05)
    assert len(calls) == n >= 6  # stopped at __exit__
    stats = sampler.stats
    assert stats.samples == n and stats.util_mean_pct == pytest.approx(sum(calls) / n)
    assert stats.util_peak_pct == 30.0 and stats.memory_peak_bytes == 30 * MIB and sampler.error is None


def test_a_failing_reader_ends_sampling_not_the_run():
    readings = iter([GpuReading(40.0, MIB), GpuReading(60.0, 2 * MIB)])

    def read():
        reading = next(readings, None)
        if reading is None:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return reading

    with GpuSampler(read, interval_s=0.01) as sampler:
        time.sleep(0.2)
    assert sampler.stats.samples == 2 and sampler.stats.util_mean_pct == pytest.approx(50.0)
    assert "GPU_IS_LOST" in sampler.error
    with GpuSampler(None) as off:  # no NVML: nothing sampled, no thread
        pass
    assert off.stats is None and off.error is None


def test_nvml_absent_is_said_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    reader, why = gpu.nvml_reader()
    assert reader is None and "nvidia-ml-py" in why


def fake_pynvml(fail_init: bool = False):
    """A stand-in for the pynvml module: two devices, index 1 busy; the handles it was asked for in ``asked``."""
    asked = []
    devices = {"0": ("NVIDIA H200", 3.0, 1 * 2**30), "1": ("NVIDIA H200", 97.0, 40 * 2**30),
               "GPU-abc": ("NVIDIA L4", 55.0, 5 * 2**30)}

    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def by_index(i):
        asked.append(str(i))
        return str(i)

    def by_uuid(u):
        asked.append(u)
        return u

    module = SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetHandleByIndex=by_index,
        nvmlDeviceGetHandleByUUID=by_uuid, nvmlDeviceGetName=lambda h: devices[h][0].encode(),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=devices[h][1], memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=devices[h][2], total=141 * 2**30))
    return module, asked


@pytest.mark.parametrize("visible, handle, util", [(None, "0", 3.0), ("1,0", "1", 97.0), ("GPU-abc", "GPU-abc", 55.0)])
def test_nvml_reader_reads_the_first_visible_gpu(monkeypatch, visible, handle, util):
    module, asked = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    reader, why = gpu.nvml_reader()
    assert why == "" and asked == [handle] and reader.name.startswith("NVIDIA")
    assert reader().utilization_pct == util
    reader.close()


def test_nvml_without_driver_is_said_not_raised(monkeypatch):
    module, _ = fake_pynvml(fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    reader, why = gpu.nvml_reader()
    assert reader is None and "no NVIDIA driver" in why
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml()[0])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # not a device NVML knows
    reader, why = gpu.nvml_reader()
    assert reader is None and "'7'" in why


def test_device_overrides():
    cuda = load_bench_config("configs/bench/dev.yaml", device_overrides("cuda", [])).job.model
    assert (cuda.device, cuda.compute_type, cuda.require_cuda) == ("cuda", "float16", True)
    mine = load_bench_config("configs/bench/gpu.yaml",
                             device_overrides("cuda", ["job.model.compute_type=int8_float16"]))
    assert mine.job.model.compute_type == "int8_float16"
    cpu = load_bench_config("configs/bench/gpu.yaml", device_overrides("cpu", ["job.model.device=cuda"])).job.model
    assert (cpu.device, cpu.compute_type, cpu.require_cuda) == ("cpu", "int8", False)
    assert device_overrides(None, ["a=1"]) == ["a=1"]
    # the engine's process gets the OMP_NUM_THREADS the job gives its transcription actors; the baselines nothing
    assert child_env("raywhisper-engine", cpu_cfg := load_bench_config("configs/bench/dev.yaml")) == \
        {"OMP_NUM_THREADS": "1"}
    assert child_env("raywhisper-engine", load_bench_config(None, ["job.transcribe.num_cpus=3"])) == \
        {"OMP_NUM_THREADS": "3"}
    assert child_env("faster-whisper-sequential", cpu_cfg) == {}
    assert in_process(["raywhisper", "faster-whisper-batched", "raywhisper-engine"]) == \
        ("raywhisper-engine", "faster-whisper-batched")


def test_gpu_config_is_the_issues_shape():
    cfg = load_bench_config(str(ROOT / "configs/bench/gpu.yaml"))
    assert cfg.systems == ("raywhisper-engine", "faster-whisper-sequential", "faster-whisper-batched")
    m = cfg.job.model
    assert (m.device, m.compute_type, m.num_workers, m.batch_size, cfg.baseline_batch_size) == \
        ("cuda", "float16", 4, 16, 16)


def test_gpu_bench_runs_the_jobs_gpu_settings():
    """The bench measures what configs/gpu.yaml ships: the same model knobs and decoding shortcuts."""
    from pipelines.config import load_config

    bench = load_bench_config(str(ROOT / "configs/bench/gpu.yaml")).job
    job = load_config(str(ROOT / "configs/gpu.yaml"))
    keys = ("device", "compute_type", "cpu_threads", "num_workers", "batch_size", "prefetch_batches")
    assert {k: getattr(bench.model, k) for k in keys} == {k: getattr(job.model, k) for k in keys}
    for key in ("beam_size", "word_timestamps", "without_timestamps"):
        assert getattr(bench.decoding, key) == getattr(job.decoding, key), key


def test_cuda_refused_without_a_cuda_device(tmp_path, capsys):
    from pipelines.core.whisper import cuda_device_count

    if cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    for argv in (["--config", "configs/bench/dev.yaml", "--device", "cuda"], ["--config", "configs/bench/gpu.yaml"]):
        code = cli.main([*argv, "--manifest", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "out")])
        assert code == 2
        assert "sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_score_and_table_carry_the_gpu_columns():
    rows = [{"id": "a", "text": "hello world", "subset": ""}]
    result = {"wall_s": 2.0, "results": [{"id": "a", "text": "hello world", "duration_s": 10.0, "status": "ok"}],
              "peak_rss_bytes": 100 * MIB, "gpu_metrics": summarize([GpuReading(20.0, 800 * MIB)]).metrics()}
    with_gpu = score(rows, result)
    assert with_gpu["gpu_util_mean_pct"] == 20.0 and with_gpu["gpu_mem_peak_mb"] == 800.0
    plain = score(rows, {k: v for k, v in result.items() if k != "gpu_metrics"})
    table = render_table({"raywhisper-engine": with_gpu, "faster-whisper-sequential": plain | {"wall_s": 4.0}})
    head, _, engine, baseline = table.splitlines()
    assert "GPU %" in head and "GPU MiB" in head
    assert engine.split()[-4:] == ["20.0", "20", "800", "1.00"] and baseline.split()[-1] == "2.00"
    assert "nan" in baseline  # no GPU figures for that run
    assert "GPU" not in render_table({"raywhisper": plain}).splitlines()[0]
