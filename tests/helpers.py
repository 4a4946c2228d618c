"""Test helpers: write audio in any codec/container with PyAV, from real clips or synthetic signals; wait for a
Serve application to be ready."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import av
import numpy as np


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str, sample_fmt: str,
                container_format: Optional[str] = None, layout: Optional[str] = None,
                video_codec: Optional[str] = None, options: Optional[dict] = None,
                out_rate: Optional[int] = None) -> Path:
    """Encode float32 ``samples`` (shape (channels, n) or (n,)) at ``rate`` Hz into ``path`` (resampled to
    ``out_rate`` when the codec needs another rate, e.g. 48 kHz for Opus).

    ``codec``/``sample_fmt`` pick the audio encoder (e.g. ``pcm_s24le``/``s32``, ``libmp3lame``/``fltp``); with
    ``video_codec`` a short black video track is muxed beside the audio (mp4/mkv/webm/mov with sound).
    """
    samples = np.atleast_2d(samples).astype(np.float32)
    channels = samples.shape[0]
    layout = layout or {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(str(path), "w", format=container_format) as container:
        vstream = None
        if video_codec:
            vstream = container.add_stream(video_codec, rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        stream = container.add_stream(codec, rate=out_rate or rate)
        stream.layout = layout
        if options:
            stream.codec_context.options = options
        resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=out_rate or rate)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.reshape(1, -1) if channels == 1
                                                                else samples.T.reshape(1, -1)),
                                           format="flt", layout=layout)
        frame.sample_rate = rate
        if vstream is not None:
            seconds = samples.shape[1] / rate
            for i in range(max(1, int(seconds * 10))):
                vframe = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                vframe.pts = i
                for packet in vstream.encode(vframe):
                    container.mux(packet)
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if vstream is not None:
            for packet in vstream.encode(None):
                container.mux(packet)
    return path


def read_clip(path: Path) -> tuple[np.ndarray, int]:
    """A real clip as float32 (channels, n) at its own rate (no resampling), through PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
        frames = [f.to_ndarray() for fr in container.decode(stream) for f in resampler.resample(fr)]
    return np.concatenate(frames, axis=1).astype(np.float32), rate


def write_wav16(path: Path, samples: np.ndarray) -> Path:
    """Write float32 ``samples`` (shape (n,), 16 kHz mono, clipped to [-1, 1]) as a 16-bit PCM wav; returns ``path``."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def process_family(pid: int) -> list:
    """The process ``pid`` started a session with, and everything in that session or below it (psutil processes)."""
    import os

    import psutil

    root = psutil.Process(pid)
    family = {p.pid: p for p in [root, *root.children(recursive=True)]}
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == pid:
                family.setdefault(proc.pid, proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return list(family.values())


def wait_until_ready(base: str, timeout_s: float = 120) -> None:
    """Poll ``base``/health/ready every 0.5 s until it answers 200; fail the test after ``timeout_s`` seconds."""
    import requests

    deadline = time.monotonic() + timeout_s
    while requests.get(f"{base}/health/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        time.sleep(0.5)
