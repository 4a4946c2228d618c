"""Long-form test recordings built from the dev corpus: clips of different speakers, rooms and sources (AN4, LJ Speech,
JFK, LibriSpeech, the Harvard sentences) joined with 0.3-1.0 s of silence, with the joined reference text.

The dev corpus's own long files are one speaker in one room; Whisper behaves differently when the voice, the level
and the room change every few seconds (it closes windows early and skips speech), which is what these exercise.
"""

from __future__ import annotations

import random
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.audio import decode_audio
from pipelines.core.constants import SAMPLE_RATE
from tests.conftest import CORPUS, corpus_rows

#: Clips every recording holds (in a different place each time): the Harvard list (53.7 s), JFK, LibriSpeech.
SHARED = ("gentle/harvard-sentences-list30.mp3", "jfk/jfk.flac", "librispeech/2412-153948-0000.flac")


@dataclass(frozen=True)
class Joined:
    """One joined recording: ``samples`` (float32, 16 kHz mono), the clips it holds in order and where each starts
    (s), and the reference text (the clips' references joined)."""

    name: str
    samples: np.ndarray
    clips: tuple[str, ...]
    starts_s: tuple[float, ...]
    reference: str

    @property
    def duration_s(self) -> float:
        """Seconds of audio."""
        return self.samples.shape[0] / SAMPLE_RATE

    def write_wav(self, path: Path) -> Path:
        """The recording as a 16-bit PCM WAV file at ``path``."""
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes((np.clip(self.samples, -1, 1) * 32767).astype("<i2").tobytes())
        return path


def joined_recordings(n: int = 3, lj_per: int = 12, an4_per: int = 20, seed: int = 15) -> list[Joined]:
    """``n`` recordings of about 4 minutes: each holds :data:`SHARED`, ``lj_per`` LJ Speech clips and ``an4_per``
    AN4 clips (9 speakers), the LJ and AN4 clips different in every recording, all shuffled (a different order
    each time) and joined with 0.3-1.0 s of silence. Deterministic for a given ``seed``."""
    rng = random.Random(seed)
    rows = {r["path"]: r for r in corpus_rows()}
    lj = sorted(p for p in rows if p.startswith("ljspeech/") and "concat" not in p)
    an4 = sorted(p for p in rows if p.startswith("an4/"))
    rng.shuffle(lj)
    rng.shuffle(an4)
    if n * lj_per > len(lj) or n * an4_per > len(an4):
        raise ValueError(f"the dev corpus has {len(lj)} LJ and {len(an4)} AN4 clips: too few for {n} recordings")
    out = []
    for k in range(n):
        clips = list(SHARED) + lj[k * lj_per:(k + 1) * lj_per] + an4[k * an4_per:(k + 1) * an4_per]
        rng.shuffle(clips)
        out.append(_join(f"joined{k}", clips, [rows[c]["reference"] for c in clips], rng))
    return out


def _join(name: str, clips: list[str], references: list[str], rng: random.Random) -> Joined:
    parts, starts, t = [], [], 0.0
    for clip in clips:
        samples = decode_audio(CORPUS / clip).samples
        starts.append(round(t, 3))
        gap = np.zeros(int(SAMPLE_RATE * rng.uniform(0.3, 1.0)), np.float32)
        parts += [samples, gap]
        t += (samples.shape[0] + gap.shape[0]) / SAMPLE_RATE
    return Joined(name, np.concatenate(parts), tuple(clips), tuple(starts), " ".join(references))
