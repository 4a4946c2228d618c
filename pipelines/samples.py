"""Make the bundled demo sample: speech that the project makes itself with espeak-ng (a Debian package).

    python -m pipelines.samples --output samples/demo

Writes a few spoken sentences in several formats (wav, flac, mp3, m4a, opus via PyAV), one long-form file joined with
pydub from all of them with pauses between (so the job cuts it into chunks), a silent file (status ``empty``), and
``manifest.jsonl`` with each file's reference text. Nothing is copied from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from pipelines.core.audio import open_audio

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ray Data streams audio files to a pool of transcription actors.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is sunny with a light breeze from the west.",
    "She sells sea shells by the sea shore.",
]
FORMATS = ["wav", "flac", "mp3", "m4a", "opus"]
CODECS = {"flac": ("flac", "s16"), "mp3": ("libmp3lame", "fltp"), "m4a": ("aac", "fltp"), "opus": ("libopus", "flt")}


def speak(text: str, path: Path, voice: str = "en-us", words_per_minute: int = 150) -> None:
    """Speak ``text`` to a 22.05 kHz mono wav with espeak-ng.

    Raises:
        RuntimeError: espeak-ng is not installed (``apt-get install espeak-ng``) or failed.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (make demo does this)")
    subprocess.run([exe, "-v", voice, "-s", str(words_per_minute), "-w", str(path), text], check=True,
                   capture_output=True)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples (float32, shape (n,)) and sample rate of a mono wav, through PyAV (opened like every input, by
    :func:`pipelines.core.audio.open_audio`)."""
    with open_audio(path) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        frames = [f.to_ndarray().astype(np.float32).reshape(-1) for f in container.decode(stream)]
    samples = np.concatenate(frames)
    if samples.dtype != np.float32 or np.abs(samples).max() > 1.5:
        samples = samples / 32768.0
    return samples.astype(np.float32), rate


def encode(samples: np.ndarray, rate: int, path: Path, fmt: str) -> None:
    """Write mono float32 ``samples`` at ``rate`` Hz to ``path`` in ``fmt`` (wav/flac/mp3/m4a/opus) with PyAV."""
    if fmt == "wav":
        codec, sample_fmt = "pcm_s16le", "s16"
    else:
        codec, sample_fmt = CODECS[fmt]
    out_rate = {"mp3": 44100, "m4a": 44100, "opus": 48000}.get(fmt, rate)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=out_rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=sample_fmt, layout="mono", rate=out_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def make_demo(output: Path) -> Path:
    """Write the demo sample under ``output``; returns the manifest path."""
    import warnings

    with warnings.catch_warnings():  # pydub looks for ffmpeg at import; wav in, wav out needs none
        warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
        from pydub import AudioSegment

    output.mkdir(parents=True, exist_ok=True)
    rows = []
    long_form = AudioSegment.silent(duration=500)
    for i, (text, fmt) in enumerate(zip(SENTENCES, FORMATS)):
        wav = output / f"_tmp_{i}.wav"
        speak(text, wav)
        long_form += AudioSegment.from_wav(str(wav)) + AudioSegment.silent(duration=1500)
        samples, rate = read_wav(wav)
        target = output / f"sentence_{i:02d}.{fmt}"
        encode(samples, rate, target, fmt)
        wav.unlink()
        rows.append({"id": f"sentence_{i:02d}", "audio_filepath": target.name, "text": text})
    # A long-form recording: every sentence, three times over, with pauses (over 30 s, so it is chunked).
    (long_form * 3).export(str(output / "long_form.wav"), format="wav")
    rows.append({"id": "long_form", "audio_filepath": "long_form.wav", "text": " ".join(SENTENCES * 3)})
    encode(np.zeros(16000 * 5, np.float32), 16000, output / "silence.flac", "flac")
    rows.append({"id": "silence", "audio_filepath": "silence.flac", "text": ""})
    manifest = output / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.samples", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="samples/demo", help="folder to write the sample and manifest into")
    args = parser.parse_args(argv)
    manifest = make_demo(Path(args.output))
    print(f"demo sample: {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
