"""GPU utilisation and memory of a bench run, sampled through NVML (``nvidia-ml-py``, module ``pynvml``, the
``gpu`` extra; imported only when a reader is opened).

:func:`nvml_reader` opens the GPU the run uses (the first of ``CUDA_VISIBLE_DEVICES``, else NVML device 0) or says
why it cannot (no ``pynvml``, no driver, no GPU); :class:`GpuSampler` calls a reader every ``interval_s`` on a
thread while one system runs, and :func:`summarize` turns the readings into :class:`GpuStats`. Without a reader
there are no GPU figures: the bench says so once and never fails for it.

The figures are NVML's and device-wide: ``utilization.gpu`` is the percentage of the last sample period (1/6 s
to 1 s, by product) during which a kernel ran on the device; memory is what the whole device has in use (every
process on it, the CUDA context included).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

#: What the sampler calls for one reading of the device (:class:`NvmlReader`, or a stand-in in tests).
Reader = Callable[[], "GpuReading"]


@dataclass(frozen=True)
class GpuReading:
    """One NVML reading: ``utilization_pct`` (0-100, share of the last sample period a kernel ran) and
    ``memory_used_bytes`` (device-wide)."""

    utilization_pct: float
    memory_used_bytes: int


@dataclass(frozen=True)
class GpuStats:
    """A run's GPU figures: the number of readings, mean and peak utilisation (%) and peak memory in use (bytes)."""

    samples: int
    util_mean_pct: float
    util_peak_pct: float
    memory_peak_bytes: int

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics: ``gpu_util_mean_pct``, ``gpu_util_peak_pct``, ``gpu_mem_peak_mb`` (MiB) and
        ``gpu_samples``."""
        return {"gpu_util_mean_pct": self.util_mean_pct, "gpu_util_peak_pct": self.util_peak_pct,
                "gpu_mem_peak_mb": self.memory_peak_bytes / 2**20, "gpu_samples": float(self.samples)}


def summarize(readings: Sequence[GpuReading]) -> Optional[GpuStats]:
    """Mean and peak utilisation and peak memory of ``readings`` (taken at a fixed interval, so the plain mean is
    the time mean); None for none."""
    if not readings:
        return None
    utils = [r.utilization_pct for r in readings]
    return GpuStats(len(readings), sum(utils) / len(utils), max(utils), max(r.memory_used_bytes for r in readings))


class GpuSampler:
    """Calls ``read`` every ``interval_s`` seconds on a thread from ``__enter__`` to ``__exit__``; :attr:`stats`
    summarises the readings. ``read`` None (no NVML) samples nothing. A reading that raises ends the sampling (the
    readings so far are kept; :attr:`error` says why): a sampler never fails the run it measures."""

    def __init__(self, read: Optional[Reader], interval_s: float = 0.2):
        self.read = read
        self.interval_s = interval_s
        self.readings: list[GpuReading] = []
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-sampler")

    def _run(self) -> None:
        while True:
            try:
                self.readings.append(self.read())
            except Exception as exc:  # noqa: BLE001 - NVML errors end sampling, never the run
                self.error = f"{type(exc).__name__}: {exc}"
                return
            if self._stop.wait(self.interval_s):
                return

    @property
    def stats(self) -> Optional[GpuStats]:
        """:func:`summarize` of the readings so far (None: no reader or no reading)."""
        return summarize(list(self.readings))

    def __enter__(self) -> "GpuSampler":
        if self.read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def visible_device() -> str:
    """The GPU a one-GPU run uses, as ``CUDA_VISIBLE_DEVICES`` names it (its first entry: an index or a
    ``GPU-...`` UUID), else ``"0"``. Read when called."""
    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    return first or "0"


class NvmlReader:
    """Readings of one NVML device (see :func:`nvml_reader`); :meth:`close` shuts NVML down."""

    def __init__(self, pynvml, handle, name: str):
        self._nvml = pynvml
        self._handle = handle
        self.name = name

    def __call__(self) -> GpuReading:
        util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return GpuReading(float(util.gpu), int(memory.used))

    def close(self) -> None:
        """Shut NVML down (errors ignored)."""
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing to do about a failed shutdown
            pass


def nvml_reader(device: Optional[str] = None) -> tuple[Optional[NvmlReader], str]:
    """Open ``device`` (default :func:`visible_device`) through NVML and take one reading.

    Returns:
        ``(reader, "")``, or ``(None, why)`` when ``pynvml`` is not installed, NVML cannot start (no driver) or the
        device cannot be read. Never raises.
    """
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py, or the 'gpu' extra)"
    device = device or visible_device()
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded...: no GPU here
        return None, f"NVML cannot start ({exc}): no NVIDIA driver or GPU on this machine"
    try:
        handle = (pynvml.nvmlDeviceGetHandleByUUID(device) if device.startswith(("GPU-", "MIG-"))
                  else pynvml.nvmlDeviceGetHandleByIndex(int(device)))
        name = pynvml.nvmlDeviceGetName(handle)
        reader = NvmlReader(pynvml, handle, name.decode() if isinstance(name, bytes) else str(name))
        reader()
    except Exception as exc:  # noqa: BLE001 - a bad CUDA_VISIBLE_DEVICES entry, a device NVML cannot query...
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
        return None, f"NVML cannot read GPU {device!r} ({type(exc).__name__}: {exc})"
    return reader, ""
