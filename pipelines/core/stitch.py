"""Stitch chunk results back into one transcript per file, with every time in file time.

Chunk results may arrive in any order and interleaved with other files' (a cross-file batch); each file's chunks
are put back in ``index`` order, their segment and word times shifted by the chunk's ``offset_s`` and clipped to
the chunk and file, and segment ids renumbered from 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Iterable

from pipelines.core.coverage import file_quality
from pipelines.core.schema import Segment, Transcript, Word
from pipelines.core.transcriber import ChunkResult


def _clip(value: float, low: float, high: float) -> float:
    return min(max(round(value, 3), low), high)


def stitch_file(results: Iterable[ChunkResult], duration_s: float, language: str | None = None,
                language_probability: float | None = None) -> Transcript:
    """One file's transcript from its chunk results (any order).

    Args:
        results: the file's :class:`ChunkResult` objects; times in chunk time.
        duration_s: the file's duration in seconds (times are clipped to it).
        language, language_probability: used when there are no chunks (a file with no speech);
            None means unknown.

    Returns:
        A :class:`Transcript` whose segments are in file time and order, ids 0..n-1, with its
        :class:`~pipelines.core.coverage.Quality` from the chunks' coverage (uncovered spans in file time).
    """
    ordered = sorted(results, key=lambda r: r.index)
    segments: list[Segment] = []
    for res in ordered:
        low = res.offset_s
        high = min(duration_s, res.offset_s + res.duration_s)
        for seg in res.segments:
            words = tuple(
                Word(w.word, _clip(w.start + low, low, high), _clip(w.end + low, low, high), w.probability)
                for w in seg.words
            )
            start = _clip(seg.start + low, low, high)
            end = max(start, _clip(seg.end + low, low, high))
            segments.append(replace(seg, id=len(segments), start=start, end=end, words=words))
    if ordered:
        language, language_probability = ordered[0].language, ordered[0].language_probability
    text = "".join(seg.text for seg in segments).strip()
    quality = file_quality([(r.offset_s, r.coverage, r.redecoded) for r in ordered], segments)
    return Transcript(text, language, language_probability, duration_s, tuple(segments), quality)


def stitch(results: Iterable[ChunkResult], durations_s: dict[str, float]) -> dict[str, Transcript]:
    """Group chunk results of many files by ``key`` and stitch each (see :func:`stitch_file`).

    Args:
        results: chunk results of any files, in any order.
        durations_s: duration in seconds of every file to stitch, by key; a key with no results gets an empty
            transcript.

    Returns:
        ``{key: Transcript}`` for every key of ``durations_s``.
    """
    by_key: dict[str, list[ChunkResult]] = defaultdict(list)
    for res in results:
        by_key[res.key].append(res)
    return {key: stitch_file(by_key.get(key, []), dur) for key, dur in durations_s.items()}
