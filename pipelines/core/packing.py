"""Pack short chunks into shared 30 s windows, and split the window's transcript back per chunk.

Whisper's encoder always runs on a 30 s window, so a 3 s clip costs as much as a 30 s one: on a CPU the encoder is
most of the work (tiny.en int8, 2 threads: 0.26-0.30 s a window at batch 1 or 4, a little more at 8). Packing
several short chunks, separated by ``gap_s`` of silence, into one window divides that cost by the number packed.

The window's words (from cross-attention alignment) are assigned back to the chunk whose span they overlap most; each window segment is split where its words change chunk, and times are shifted to chunk time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.schema import Segment, Word


@dataclass(frozen=True)
class PackedWindow:
    """Chunk indices packed into one window and where each starts in it (seconds).

    ``samples`` is the window audio: float32, shape (n,), the chunks in order with ``gap_s`` of silence between.
    """

    members: tuple[int, ...]
    starts_s: tuple[float, ...]
    durations_s: tuple[float, ...]
    samples: np.ndarray


def plan_windows(durations_s: Sequence[float], max_window_s: float, gap_s: float) -> list[list[int]]:
    """Group chunk indices into windows of at most ``max_window_s`` (chunks plus gaps), first-fit decreasing.

    Returns:
        Lists of indices; each chunk appears in exactly one list; a chunk longer than the window is alone.
    """
    order = sorted(range(len(durations_s)), key=lambda i: -durations_s[i])
    windows: list[list[int]] = []
    loads: list[float] = []
    for i in order:
        need = durations_s[i]
        for w, load in enumerate(loads):
            if load + gap_s + need <= max_window_s:
                windows[w].append(i)
                loads[w] = load + gap_s + need
                break
        else:
            windows.append([i])
            loads.append(need)
    return [sorted(w) for w in windows]


def build_window(members: Sequence[int], pieces: Sequence[np.ndarray], gap_s: float) -> PackedWindow:
    """Concatenate ``pieces[m]`` for ``m in members`` with ``gap_s`` seconds of silence between (16 kHz)."""
    gap = np.zeros(int(round(gap_s * SAMPLE_RATE)), np.float32)
    parts, starts, durations, t = [], [], [], 0.0
    for k, m in enumerate(members):
        if k:
            parts.append(gap)
            t += gap.shape[0] / SAMPLE_RATE
        starts.append(t)
        durations.append(pieces[m].shape[0] / SAMPLE_RATE)
        parts.append(pieces[m].astype(np.float32, copy=False))
        t += pieces[m].shape[0] / SAMPLE_RATE
    return PackedWindow(tuple(members), tuple(starts), tuple(durations), np.concatenate(parts))


def _owner(start: float, end: float, window: PackedWindow) -> int:
    """Position in ``window.members`` of the chunk that a span ``[start, end]`` (window time) belongs to: the one it
    overlaps most; a span that lies wholly in a gap goes to the chunk whose edge is nearest its midpoint.

    Overlap, not the midpoint, decides because cross-attention timing tends to stretch a chunk's first or last word
    into the silent gap beside it.
    """
    best, best_overlap = 0, 0.0
    for k, (s, d) in enumerate(zip(window.starts_s, window.durations_s)):
        overlap = min(end, s + d) - max(start, s)
        if overlap > best_overlap:
            best, best_overlap = k, overlap
    if best_overlap > 0:
        return best
    mid = (start + end) / 2
    distances = [0.0 if s <= mid <= s + d else min(abs(mid - s), abs(mid - s - d))
                 for s, d in zip(window.starts_s, window.durations_s)]
    return distances.index(min(distances))


def split_window(segments: Sequence[Segment], window: PackedWindow) -> list[list[Segment]]:
    """Split a window's segments (window time, with words) into per-member segments in member time.

    A segment whose words belong to several members is cut where the owner changes; each piece's text is the
    concatenation of its words (faster-whisper words carry their leading space). Segments without words are
    assigned by their midpoint. Times are clipped to the member's span.

    Returns:
        One list of segments per member, in ``window.members`` order; ids are 0.. within each list.
    """
    out: list[list[Segment]] = [[] for _ in window.members]

    def emit(k: int, seg: Segment, words: list[Word], text: str, start: float, end: float) -> None:
        offset, dur = window.starts_s[k], window.durations_s[k]
        clip = lambda v: round(min(max(v - offset, 0.0), dur), 3)  # noqa: E731
        moved = tuple(Word(w.word, clip(w.start), clip(w.end), w.probability) for w in words)
        s, e = clip(start), clip(end)
        out[k].append(replace(seg, id=len(out[k]), start=s, end=max(s, e), text=text, words=moved))

    for seg in segments:
        if not seg.words:
            k = _owner(seg.start, seg.end, window)
            emit(k, seg, [], seg.text, seg.start, seg.end)
            continue
        run: list[Word] = []
        run_owner = None
        for word in seg.words:
            k = _owner(word.start, word.end, window)
            if run and k != run_owner:
                emit(run_owner, seg, run, "".join(w.word for w in run), run[0].start, run[-1].end)
                run = []
            run.append(word)
            run_owner = k
        emit(run_owner, seg, run, "".join(w.word for w in run), run[0].start, run[-1].end)
    return out
