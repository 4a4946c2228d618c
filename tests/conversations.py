"""Conversations built from dev-corpus clips of different speakers, with their reference speaker turns, and the
scores of a diarization against them (tests/test_diarization.py; ``python -m tests.conversations`` prints the
evaluation table of the issue's note).

Speakers (``shared/corpus/dev``): the nine AN4 speakers (``an4/<speaker>/*.flac``, spelled letters and digits,
about 2.7 s a clip), the LJ Speech reader (``ljspeech/LJ00*.wav``), JFK (``jfk/jfk.flac``), the LibriSpeech reader
2412 (``librispeech/``) and the Harvard-sentences reader (``gentle/harvard-sentences-list30.mp3``, 8 kHz, cut into
sentences at its pauses). Each clip is trimmed of leading and trailing silence (frame energy 35 dB under the clip's
loud frames) and brought to the same loudness, so a reference turn is speech from end to end.

A conversation is a sequence of turns by speakers drawn at random (never the same speaker twice in a row); a turn
lasts 2-20 s (the speaker's next unused clips, joined with 0.1-0.3 s pauses, until the drawn length is reached)
and turns are separated by 0.2-1.0 s of silence. Each clip is one reference segment labelled with its speaker's
name. JFK and LibriSpeech have about 11 s each, so they speak once or twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipelines.core.audio import decode_audio
from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.speakers import SpeakerTurn, TurnIndex

FRAME_S = 0.02
TRIM_DB = 35.0
TARGET_RMS = 0.05  # about -26 dBFS


def trim_silence(x: np.ndarray, margin_s: float = 0.05) -> np.ndarray:
    """``x`` without its leading and trailing frames quieter than TRIM_DB under the clip's 95th-percentile frame
    energy (a margin of ``margin_s`` kept on each side)."""
    n = int(FRAME_S * SAMPLE_RATE)
    frames = x[: len(x) // n * n].reshape(-1, n)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) + 1e-10
    loud = np.flatnonzero(20 * np.log10(rms / np.percentile(rms, 95)) > -TRIM_DB)
    if not len(loud):
        return x[:0]
    margin = int(margin_s * SAMPLE_RATE)
    return x[max(0, loud[0] * n - margin): min(len(x), (loud[-1] + 1) * n + margin)]


def split_at_pauses(x: np.ndarray, min_pause_s: float = 0.35) -> list[np.ndarray]:
    """Pieces of ``x`` between pauses (runs of quiet frames, as in :func:`trim_silence`) of at least
    ``min_pause_s``; each piece trimmed."""
    n = int(FRAME_S * SAMPLE_RATE)
    frames = x[: len(x) // n * n].reshape(-1, n)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)) + 1e-10
    quiet = 20 * np.log10(rms / np.percentile(rms, 95)) < -TRIM_DB
    pieces, start, run = [], 0, 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run == int(min_pause_s / FRAME_S):
            pieces.append(x[start * n: (i + 1) * n])
            start = i + 1
    pieces.append(x[start * n:])
    return [p for p in (trim_silence(p) for p in pieces) if len(p) > 0.8 * SAMPLE_RATE]


def _level(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    return np.clip(x * (TARGET_RMS / rms), -1, 1).astype(np.float32)


def _load(path: Path) -> np.ndarray:
    return decode_audio(str(path), SAMPLE_RATE).samples


def speaker_pools(corpus: Path, max_lj_clips: int = 14) -> dict[str, list[np.ndarray]]:
    """Speaker name -> its clips (trimmed, levelled float32 at 16 kHz), in a fixed order."""
    pools: dict[str, list[np.ndarray]] = {}
    for folder in sorted((corpus / "an4").iterdir()):
        if folder.is_dir():
            pools[f"an4-{folder.name}"] = [_level(trim_silence(_load(p))) for p in sorted(folder.glob("*.flac"))]
    lj = sorted(p for p in (corpus / "ljspeech").glob("LJ00[12]-00[0-9][0-9].wav"))[:max_lj_clips]
    pools["ljspeech"] = [_level(trim_silence(_load(p))) for p in lj]
    pools["jfk"] = [_level(p) for p in split_at_pauses(_load(corpus / "jfk" / "jfk.flac"), 0.25)]
    pools["librispeech-2412"] = [_level(p) for p in
                                 split_at_pauses(_load(corpus / "librispeech" / "2412-153948-0000.flac"), 0.25)]
    pools["harvard"] = [_level(p) for p in
                        split_at_pauses(_load(corpus / "gentle" / "harvard-sentences-list30.mp3"))]
    return {k: v for k, v in pools.items() if v}


@dataclass(frozen=True)
class Conversation:
    """Float32 16 kHz samples and the reference turns (one per clip, labelled with the speaker's name)."""

    name: str
    samples: np.ndarray
    reference: tuple[SpeakerTurn, ...]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def speakers(self) -> list[str]:
        return sorted({t.speaker for t in self.reference})


def build_conversation(pools: dict[str, list[np.ndarray]], speakers: Sequence[str], seed: int,
                       min_total_s: float = 60.0, turn_s: tuple[float, float] = (2.0, 20.0),
                       gap_s: tuple[float, float] = (0.2, 1.0)) -> Conversation:
    """Turns by ``speakers`` until at least ``min_total_s`` of audio and every speaker has spoken twice, or until
    the speakers' clips run out. No clip is used twice: repeated audio gives identical embeddings, which cluster
    by clip rather than by voice and would make the test about something else."""
    rng = random.Random(seed)
    left = {s: list(pools[s]) for s in speakers}
    for s in speakers:
        k = rng.randrange(len(left[s]))
        left[s] = left[s][k:] + left[s][:k]
    turns_by: dict[str, int] = {s: 0 for s in speakers}
    pieces: list[np.ndarray] = []
    reference: list[SpeakerTurn] = []
    t, previous = 0.0, None

    def add(x: np.ndarray) -> None:
        nonlocal t
        pieces.append(x)
        t += len(x) / SAMPLE_RATE

    while t < min_total_s or min(turns_by.values()) < 2:
        able = [s for s in speakers if s != previous and left[s]]
        if not able:
            break
        fewest = min(turns_by[s] for s in able)
        speaker = rng.choice([s for s in able if turns_by[s] == fewest])
        if previous is not None:
            add(np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE), np.float32))
        target, spoken = rng.uniform(*turn_s), 0.0
        while left[speaker]:
            clip = left[speaker][0]
            if spoken and spoken + len(clip) / SAMPLE_RATE > target:
                break
            left[speaker].pop(0)
            if spoken:
                add(np.zeros(int(rng.uniform(0.1, 0.3) * SAMPLE_RATE), np.float32))
            reference.append(SpeakerTurn(round(t, 3), round(t + len(clip) / SAMPLE_RATE, 3), speaker))
            add(clip)
            spoken += len(clip) / SAMPLE_RATE
        turns_by[speaker] += 1
        previous = speaker
    add(np.zeros(int(0.5 * SAMPLE_RATE), np.float32))
    return Conversation(f"{len(speakers)}spk-seed{seed}", np.concatenate(pieces), tuple(reference))


def conversation_set(pools: dict[str, list[np.ndarray]], sizes: Sequence[int] = (2, 3, 4), per_size: int = 1,
                     min_total_s: float = 60.0, seed: int = 0) -> list[Conversation]:
    """``per_size`` conversations for each number of speakers; speakers drawn from all pools, so some meet two
    AN4 speakers of the same sex, some the long-form readers."""
    rng = random.Random(seed)
    names = sorted(pools)
    out = []
    for size in sizes:
        for k in range(per_size):
            chosen = rng.sample(names, size)
            out.append(build_conversation(pools, chosen, seed=rng.randrange(1 << 30), min_total_s=min_total_s))
    return out


def _annotation(turns: Sequence[SpeakerTurn]):
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for i, t in enumerate(turns):
        ann[Segment(t.start_s, t.end_s), i] = t.speaker
    return ann


@dataclass(frozen=True)
class Scores:
    """DER and its parts (shares of the scored reference speech), and the hypothesis -> reference label mapping
    that minimises the confusion."""

    der: float
    missed: float
    false_alarm: float
    confusion: float
    mapping: dict


def score(reference: Sequence[SpeakerTurn], hypothesis: Sequence[SpeakerTurn], collar_s: float = 0.25) -> Scores:
    """DER of ``hypothesis`` against ``reference`` with pyannote.metrics, ``DiarizationErrorRate(collar=collar_s)``:
    pyannote's collar is the total width, so 0.25 s forgives +-0.125 s around each reference boundary (stricter
    than NIST md-eval's +-0.25 s, which is pyannote's collar=0.5). Overlapping speech is scored."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=collar_s, skip_overlap=False)
    ref, hyp = _annotation(reference), _annotation(hypothesis)
    parts = metric(ref, hyp, detailed=True)
    total = parts["total"] or 1.0
    mapping = metric.optimal_mapping(ref, hyp)  # hypothesis label -> reference label
    return Scores(parts["diarization error rate"], parts["missed detection"] / total,
                  parts["false alarm"] / total, parts["confusion"] / total, dict(mapping))


def word_accuracy(words: Sequence[tuple[float, float, Optional[str]]], reference: Sequence[SpeakerTurn],
                  mapping: dict) -> tuple[float, int]:
    """Share of ``words`` (start, end, hypothesis speaker) whose speaker, mapped to a reference name by
    ``mapping``, is the reference speaker with most overlap of the word (nearest turn for a word in a pause).
    Returns (share, number of words)."""
    index = TurnIndex(reference)
    right = sum(1 for start, end, spk in words if spk is not None and mapping.get(spk) == index.speaker_of(start, end))
    return (right / len(words) if words else 1.0), len(words)


def evaluate(corpus: Path, per_size: int = 4, seed: int = 1, threads: Sequence[int] = (1, 2)) -> list[dict]:
    """Diarize and transcribe ``per_size`` conversations of 2, 3 and 4 speakers: one dict per conversation with its
    DER (count unknown and given), word-speaker accuracy, and the diarizer's and transcriber's times (s, wall and
    CPU, for each thread count) next to the audio's duration."""
    import tempfile
    import time
    import wave

    from pipelines.config import load_config
    from pipelines.core.diarization import DiarizationOptions, Diarizer
    from pipelines.core.engine import Engine, FileSpec, prepare
    from pipelines.core.speakers import assign_speakers

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "local.yaml")
    engine = Engine(cfg.model, cfg.decoding)
    diarizers = {n: Diarizer(DiarizationOptions(cpu_threads=n)) for n in threads}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for conv in conversation_set(speaker_pools(corpus), per_size=per_size, seed=seed):
            row: dict = {"name": conv.name, "speakers": len(conv.speakers), "duration_s": conv.duration_s}
            for n, diarizer in diarizers.items():
                w0, c0 = time.perf_counter(), time.process_time()
                result = diarizer.diarize_full(conv.samples)
                row[f"diarize_wall_s_{n}t"] = time.perf_counter() - w0
                row[f"diarize_cpu_s_{n}t"] = time.process_time() - c0
            scores = score(conv.reference, result.turns)
            row.update(der=scores.der, missed=scores.missed, false_alarm=scores.false_alarm,
                       confusion=scores.confusion, found=len({t.speaker for t in result.turns}))
            row["der_known"] = score(conv.reference, diarizers[threads[0]].diarize(
                conv.samples, num_speakers=len(conv.speakers))).der
            path = Path(tmp) / f"{conv.name}.wav"
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
                w.writeframes((np.clip(conv.samples, -1, 1) * 32767).astype("<i2").tobytes())
            w0, c0 = time.perf_counter(), time.process_time()
            prepared = prepare(str(path), FileSpec(conv.name, conv.name), cfg.chunking)
            (outcome,) = engine.transcribe_isolated([prepared])
            row["transcribe_wall_s"] = time.perf_counter() - w0
            row["transcribe_cpu_s"] = time.process_time() - c0
            segments = outcome.transcript.segments
            words = [(w.start, w.end, s) for seg, sp in zip(segments, assign_speakers(segments, result.turns))
                     for w, s in zip(seg.words, sp.words)]
            row["word_accuracy"], row["words"] = word_accuracy(words, conv.reference, scores.mapping)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def _table(rows: list[dict], threads: Sequence[int]) -> str:
    lines = ["| speakers | conversations | audio (s) | DER | DER, count given | missed / FA / confusion | "
             "words right | diarizer RTF, " + ", ".join(f"{n} thread{'s' if n > 1 else ''}" for n in threads)
             + " (wall; CPU) | transcription RTF (wall) | diarization / transcription (1 thread, wall) |",
             "|---" * 10 + "|"]
    for size in sorted({r["speakers"] for r in rows}) + [0]:
        sel = [r for r in rows if r["speakers"] == size or size == 0]
        audio = sum(r["duration_s"] for r in sel)
        mean = lambda key: float(np.mean([r[key] for r in sel]))  # noqa: E731
        rtf = "; ".join(f"{sum(r[f'diarize_wall_s_{n}t'] for r in sel) / audio:.3f} / "
                        f"{sum(r[f'diarize_cpu_s_{n}t'] for r in sel) / audio:.3f}" for n in threads)
        words = sum(r["words"] for r in sel)
        right = sum(r["word_accuracy"] * r["words"] for r in sel) / words
        trans = sum(r["transcribe_wall_s"] for r in sel) / audio
        ratio = sum(r[f"diarize_wall_s_{threads[0]}t"] for r in sel) / sum(r["transcribe_wall_s"] for r in sel)
        lines.append(f"| {size or 'all'} | {len(sel)} | {audio:.0f} | {mean('der'):.1%} | {mean('der_known'):.1%} | "
                     f"{mean('missed'):.1%} / {mean('false_alarm'):.1%} / {mean('confusion'):.1%} | "
                     f"{right:.1%} of {words} | {rtf} | {trans:.3f} | {ratio:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "corpus" / "dev")
    parser.add_argument("--per-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(_table(evaluate(args.corpus, args.per_size, args.seed, args.threads), args.threads))
