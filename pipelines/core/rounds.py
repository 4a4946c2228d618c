"""The transcriber's rounds, planned: which pending pieces one round decodes together (packed windows or pieces
alone), how they are cut into model batches, and what of each piece is left for the next round.

Pure bookkeeping on numpy arrays and segments; the decoding itself is :func:`pipelines.core.decoding.decode_pieces`
and the loop :meth:`pipelines.core.transcriber.Transcriber.transcribe_chunks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.decoding import Piece
from pipelines.core.options import DecodingConfig
from pipelines.core.packing import PackedWindow, build_window, plan_windows
from pipelines.core.schema import Segment, Word

MIN_REMAINDER_SAMPLES = SAMPLE_RATE // 10  # 1600 (0.1 s): a shorter rest after the last timestamp is not decoded again

#: Words that end a sentence end with one of these; a decode without timestamp tokens is cut after them.
SENTENCE_ENDS = (".", "?", "!", "。", "？", "！")
#: A pause between two words at least this long (s) also cuts a decode without timestamp tokens: Whisper's own
#: segments break at such pauses, and subtitles should too.
SEGMENT_PAUSE_S = 1.0
#: A sentence longer than this (s) is cut again at its widest pause between words (the longest segment tiny.en
#: made with timestamp tokens on the dev corpus was 10.0 s).
MAX_SEGMENT_S = 10.0


@dataclass(frozen=True)
class Pending:
    """A piece still to decode: ``samples`` of input chunk ``origin`` starting ``start_s`` into it; ``solo`` keeps it
    out of packed windows; ``context`` is its prompt (token ids) in a packed window (where pieces sharing one
    prompt are packed together); ``alone_context``, when set, replaces it when the piece is decoded alone (the text
    decoded so far, for a resumed piece)."""

    origin: int
    start_s: float
    samples: np.ndarray
    solo: bool
    context: list[int]
    alone_context: Optional[list[int]] = None

    @property
    def prompt_alone(self) -> list[int]:
        """The prompt (token ids) when this piece is decoded alone."""
        return self.context if self.alone_context is None else self.alone_context


class Item(NamedTuple):
    """One thing a round decodes: ``samples`` (float32, shape (n,), at most 30 s: a piece alone, or a packed
    ``window`` of several) in ``language``, holding the pending pieces ``members`` (indices, in window order)."""

    samples: np.ndarray
    language: str
    window: Optional[PackedWindow]
    members: list[int]

    @property
    def duration_s(self) -> float:
        """Seconds of audio."""
        return self.samples.shape[0] / SAMPLE_RATE

    def prompt(self, pending: Sequence[Pending]) -> list[int]:
        """The prompt (token ids) it is decoded with: the shared packing prompt of a window, else the piece's own."""
        first = pending[self.members[0]]
        return first.context if self.window is not None else first.prompt_alone


def plan_items(pending: Sequence[Pending], languages: Sequence[str], groups: Sequence[Optional[str]],
               opts: DecodingConfig) -> list[Item]:
    """Group the pending pieces (``languages[k]`` and pack group ``groups[k]`` of ``pending[k]``) into what a round
    decodes: with ``opts.pack_short_chunks``, pieces of at most ``pack_max_chunk_s`` sharing a language, prompt and
    group are packed first-fit into windows (:func:`pipelines.core.packing.plan_windows`); the rest go alone."""
    items: list[Item] = []
    packable: dict[tuple, list[int]] = {}
    for k, p in enumerate(pending):
        if opts.pack_short_chunks and not p.solo and p.samples.shape[0] <= opts.pack_max_chunk_s * SAMPLE_RATE:
            packable.setdefault((languages[k], tuple(p.context), groups[k]), []).append(k)
        else:
            items.append(Item(p.samples, languages[k], None, [k]))
    for (language, _, _), members in packable.items():
        for plan in plan_windows([pending[k].samples.shape[0] / SAMPLE_RATE for k in members], opts.pack_window_s,
                                 opts.pack_gap_s):
            idx = [members[j] for j in plan]
            if len(idx) == 1:
                items.append(Item(pending[idx[0]].samples, language, None, idx))
                continue
            window = build_window(list(range(len(idx))), [pending[k].samples for k in idx], opts.pack_gap_s)
            items.append(Item(window.samples, language, window, idx))
    return items


def batch_sizes(n: int, batch_size: int, workers: int = 1) -> list[int]:
    """Sizes of the batches that ``n`` items are cut into: at most ``batch_size`` each, as few as that allows, but a
    multiple of ``workers`` batches (as far as ``n`` allows) of near-equal size, so that every worker gets work.

    On a CPU the encoder's cost per 30 s window does not grow when a batch is split (tiny.en int8 with 2 threads:
    0.26-0.30 s a window at batch 1 or 4, a little more at 8), so splitting a batch over workers costs nothing and
    keeps every core busy. Example: ``batch_sizes(10, 8, 2) == [5, 5]``; ``batch_sizes(3, 8, 2) == [2, 1]``.
    """
    if n <= 0:
        return []
    n_batches = math.ceil(n / batch_size)
    if workers > 1:
        n_batches = min(n, math.ceil(n_batches / workers) * workers)
    size, extra = divmod(n, n_batches)
    return [size + (1 if b < extra else 0) for b in range(n_batches)]


def batches(work: list[Piece], languages: Sequence[str], batch_size: int, workers: int) -> Iterable[list[Piece]]:
    """Consecutive runs of ``work`` sharing a language (``languages[piece.item]``), each cut by
    :func:`batch_sizes`: with several workers a run becomes a multiple of ``workers`` batches of near-equal size (on
    a CPU the cost per window does not grow with smaller batches, so keeping every worker busy pays more than full
    batches)."""
    runs: list[list[Piece]] = []
    for piece in work:
        if runs and languages[piece.item] == languages[runs[-1][0].item]:
            runs[-1].append(piece)
        else:
            runs.append([piece])
    for run in runs:
        start = 0
        for size in batch_sizes(len(run), batch_size, workers):
            yield run[start:start + size]
            start += size


def shift(seg: Segment, offset_s: float) -> Segment:
    """``seg`` with its and its words' times moved by ``offset_s`` seconds."""
    if not offset_s:
        return seg
    words = tuple(Word(w.word, round(w.start + offset_s, 3), round(w.end + offset_s, 3), w.probability)
                  for w in seg.words)
    return replace(seg, start=round(seg.start + offset_s, 3), end=round(seg.end + offset_s, 3), words=words)


def settle(p: Pending, segs: list[Segment], start: float, dur: float, seek_s: Optional[float],
           follow: Optional[Piece], window: Optional[PackedWindow], position: int, opts: DecodingConfig,
           collected: list[list[Segment]], stats: dict[str, int]) -> list[Pending]:
    """Keep the segments one decode gave piece ``p`` (``position`` in its item, at ``start`` s into the item's
    audio, ``dur`` s long; the decode stopped at ``seek_s``, None when it finished, and continues as ``follow``) in
    ``collected[p.origin]`` (chunk time), and return what of ``p`` is left for the next round."""
    unfinished = seek_s is not None and seek_s < start + dur
    if window is not None and unfinished:
        # The window's decode stopped before this piece's end: decode the whole piece again in the next round
        # rather than resume mid-sentence without the text before it (which makes tiny models invent a first
        # word). Alone if nothing of the window finished before it.
        return [replace(p, solo=p.solo or position == 0)]
    collected[p.origin].extend(shift(s, p.start_s) for s in segs)
    if unfinished:
        # a piece decoded alone resumes at the stop, conditioned on its text so far
        # (WhisperModel.transcribe's condition_on_previous_text)
        done_s = max(0.0, seek_s - start)
        rest = p.samples[int(round(done_s * SAMPLE_RATE)):]
        if rest.shape[0] < MIN_REMAINDER_SAMPLES:
            return []
        stats["resumed"] += 1
        if opts.pack_short_chunks:
            # the rest is short (it began inside a <= 30 s piece): pack it with others under the chunk's own
            # prompt (p.context: with packing on, a piece's packing prompt is always its chunk's); alone, it is
            # conditioned on its text so far
            return [Pending(p.origin, p.start_s + done_s, rest, False, p.context, follow.context)]
        return [Pending(p.origin, p.start_s + done_s, rest, True, follow.context)]
    if window is not None and not segs:
        return [replace(p, solo=True)]
    return []


def split_sentences(seg: Segment, pause_s: float = SEGMENT_PAUSE_S, max_s: float = MAX_SEGMENT_S) -> list[Segment]:
    """``seg`` cut into sentences by its words: after a word ending in :data:`SENTENCE_ENDS` and between two words
    at least ``pause_s`` seconds apart; a piece still longer than ``max_s`` seconds is cut at its widest pause until
    none is. Each piece's times are its first word's start and last word's end, its text its words joined
    (faster-whisper words carry their leading space); the decode's scores are kept. A segment without words comes
    back as it is.

    A decode without timestamp tokens (``decoding.without_timestamps``) is one segment per 30 s window; this gives
    it segment times from word alignment instead.
    """
    if not seg.words:
        return [seg]
    runs: list[list[Word]] = [[]]
    for word in seg.words:
        if runs[-1] and word.start - runs[-1][-1].end >= pause_s:
            runs.append([])
        runs[-1].append(word)
        if word.word.strip().endswith(SENTENCE_ENDS):
            runs.append([])
    pieces = [piece for run in runs if run for piece in _cut_long(run, max_s)]
    return [replace(seg, start=piece[0].start, end=max(piece[0].start, piece[-1].end),
                    text="".join(w.word for w in piece), words=tuple(piece)) for piece in pieces]


def _cut_long(run: list[Word], max_s: float) -> list[list[Word]]:
    """``run`` (words in order) cut at its widest pause between words (of equal pauses, the one nearest the middle)
    until no piece spans more than ``max_s`` seconds (a single word stays whole)."""
    if len(run) < 2 or run[-1].end - run[0].start <= max_s:
        return [run]
    cut = max(range(1, len(run)), key=lambda i: (round(run[i].start - run[i - 1].end, 3), -abs(2 * i - len(run))))
    return _cut_long(run[:cut], max_s) + _cut_long(run[cut:], max_s)
