"""How much of the speech the VAD found got words: the measures behind the dropped-speech guard and the quality
columns of a row (``speech_s``, ``covered_speech_s``, ``uncovered_spans``, ``words_outside_speech``...).

Whisper sometimes closes a window early: it ends its last segment with a timestamp and then end-of-text while
seconds of speech remain, and the decode counts as finished (``WhisperModel.transcribe`` skips the rest of that
window the same way). Nothing downstream sees the loss, since the text reads well. The VAD does know there was
speech there: a stretch between two words (or between a chunk edge and a word) that holds more than
``decoding.uncovered_speech_s`` seconds of VAD speech is *uncovered*. The transcriber decodes each such stretch
again on its own (:meth:`pipelines.core.transcriber.Transcriber.transcribe_chunks`) and reports what is still
uncovered afterwards. See docs/architecture.md.

All functions here are pure: spans are ``(start, end)`` pairs of seconds, in one time base (a chunk's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from pipelines.core.schema import Segment

Span = tuple[float, float]

#: Seconds either side of a word that still count as covered by it: Silero pads every speech run by 0.2 s
#: (``chunking.speech_pad_ms``) and word times from cross-attention are a few tenths of a second off, so speech
#: within this distance of a word is not counted as uncovered.
COVER_PAD_S = 0.5


def merge(spans: Iterable[Span]) -> list[Span]:
    """``spans`` sorted, with overlapping or touching ones merged (a zero-length span, such as a word DTW gave no
    duration, is kept: it still marks where a word is); reversed spans dropped."""
    out: list[list[float]] = []
    for start, end in sorted(s for s in spans if s[1] >= s[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def length(spans: Iterable[Span]) -> float:
    """Total seconds of ``spans`` (assumed disjoint)."""
    return sum(end - start for start, end in spans)


def intersect(spans: Sequence[Span], start: float, end: float) -> list[Span]:
    """The parts of ``spans`` inside ``[start, end]``."""
    return [(max(a, start), min(b, end)) for a, b in spans if min(b, end) > max(a, start)]


def word_spans(segments: Iterable[Segment]) -> list[Span]:
    """Where the transcript put words: each word's span, or a segment's own span when it has no words (decoded
    without word timestamps)."""
    spans: list[Span] = []
    for seg in segments:
        if seg.words:
            spans.extend((w.start, w.end) for w in seg.words)
        else:
            spans.append((seg.start, seg.end))
    return spans


@dataclass(frozen=True)
class Gap:
    """A stretch without words: ``start``/``end`` are the word edges around it (or the chunk's edges), ``speech``
    the VAD speech inside it farther than :data:`COVER_PAD_S` from any word."""

    start: float
    end: float
    speech: tuple[Span, ...]

    @property
    def speech_s(self) -> float:
        """Seconds of uncovered speech in the gap."""
        return length(self.speech)

    @property
    def span(self) -> Span:
        """From the first to the last uncovered speech of the gap (what a row's ``uncovered_spans`` lists)."""
        return self.speech[0][0], self.speech[-1][1]


def gaps(speech: Sequence[Span], words: Sequence[Span], duration_s: float, pad_s: float = COVER_PAD_S) -> list[Gap]:
    """The stretches of ``[0, duration_s]`` between words (``words``, any order) that hold speech (``speech``:
    VAD runs) farther than ``pad_s`` from a word; in time order."""
    covered = merge(words)
    edges = [0.0] + [x for span in covered for x in span] + [duration_s]
    out: list[Gap] = []
    for k in range(0, len(edges), 2):
        start, end = edges[k], edges[k + 1]
        low = start + pad_s if k > 0 else start
        high = end - pad_s if k + 2 < len(edges) else end
        inside = intersect(merge(speech), low, high) if high > low else []
        if inside:
            out.append(Gap(start, end, tuple(inside)))
    return out


@dataclass(frozen=True)
class Coverage:
    """One chunk's coverage (seconds, chunk time): its VAD ``speech_s``, the part within :data:`COVER_PAD_S` of a
    word (``covered_speech_s``), the ``uncovered`` spans holding at least the reporting threshold of speech, and
    how many words lie farther than :data:`COVER_PAD_S` from any speech (``words_outside_speech``: words placed in
    silence, a hallucination signal)."""

    speech_s: float
    covered_speech_s: float
    uncovered: tuple[Span, ...]
    words_outside_speech: int


def chunk_coverage(speech: Sequence[Span], segments: Sequence[Segment], duration_s: float,
                   min_uncovered_s: float) -> Coverage:
    """The :class:`Coverage` of a chunk ``duration_s`` long with VAD ``speech`` runs and these ``segments`` (both in
    chunk time); a gap is listed in ``uncovered`` when it holds at least ``min_uncovered_s`` of speech."""
    runs = merge(intersect(speech, 0.0, duration_s))
    spans = word_spans(segments)
    found = gaps(runs, spans, duration_s)
    speech_s = length(runs)
    outside = sum(1 for seg in segments for w in seg.words
                  if not intersect(runs, w.start - COVER_PAD_S, w.end + COVER_PAD_S))
    return Coverage(round(speech_s, 3), round(max(0.0, speech_s - sum(g.speech_s for g in found)), 3),
                    tuple(g.span for g in found if g.speech_s >= min_uncovered_s), outside)


@dataclass(frozen=True)
class Quality:
    """A file's quality measures (the row's quality columns; seconds, file time).

    ``speech_s``: VAD speech in the file's chunks; ``covered_speech_s``: the part of it within
    :data:`COVER_PAD_S` of a word; ``uncovered_spans``: stretches still holding at least
    ``decoding.uncovered_speech_s`` of speech without words after the guard; ``redecoded_spans``: stretches the
    guard decoded again; ``max_compression_ratio``: the highest gzip ratio of a segment's text (above 2.4 it
    repeats itself); ``words_outside_speech``: words farther than :data:`COVER_PAD_S` from any VAD speech. The speech measures are None when
    the VAD did not run (``chunking.vad_filter`` off), ``max_compression_ratio`` when there are no segments.
    """

    speech_s: Optional[float] = None
    covered_speech_s: Optional[float] = None
    uncovered_spans: tuple[Span, ...] = ()
    redecoded_spans: int = 0
    max_compression_ratio: Optional[float] = None
    words_outside_speech: Optional[int] = None

    def to_dict(self) -> dict:
        """The row columns: the fields, with ``uncovered_spans`` as a list of ``{"start", "end"}`` dicts."""
        return dict(speech_s=self.speech_s, covered_speech_s=self.covered_speech_s,
                    uncovered_spans=[{"start": a, "end": b} for a, b in self.uncovered_spans],
                    redecoded_spans=self.redecoded_spans, max_compression_ratio=self.max_compression_ratio,
                    words_outside_speech=self.words_outside_speech)


def file_quality(chunks: Sequence[tuple[float, Optional[Coverage], int]], segments: Sequence[Segment]) -> Quality:
    """A file's :class:`Quality` from its chunks' ``(offset_s, coverage or None, spans re-decoded)`` and its
    stitched ``segments``. A file without chunks (no speech found) has 0 s of speech."""
    ratio = max((seg.compression_ratio for seg in segments), default=None)
    redecoded = sum(n for _, _, n in chunks)
    if any(cov is None for _, cov, _ in chunks):
        return Quality(redecoded_spans=redecoded, max_compression_ratio=ratio)
    covs = [(offset, cov) for offset, cov, _ in chunks]
    uncovered = tuple((round(offset + a, 3), round(offset + b, 3)) for offset, cov in covs for a, b in cov.uncovered)
    return Quality(round(sum(c.speech_s for _, c in covs), 3), round(sum(c.covered_speech_s for _, c in covs), 3),
                   uncovered, redecoded, ratio, sum(c.words_outside_speech for _, c in covs))
