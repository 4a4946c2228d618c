"""Speakers on a transcript: who said each word and segment, given the diarizer's speaker turns. Pure Python and
numpy (no torch, no diarization package), so the job, the endpoint and the tests use it without the ``diarize``
extra.

Assignment follows WhisperX's ``assign_word_speakers`` (m-bain/whisperX, ``whisperx/diarize.py``): a word or a
segment gets the speaker whose turns overlap its time span the most (overlaps of one speaker's turns are summed).
Where a span overlaps no turn (a word in a pause between turns, or outside any turn), it gets the speaker of the
*nearest* turn, measured as the gap in seconds between the span and the turn; a tie goes to the earlier turn (the
one that was speaking). WhisperX offers the same fallback behind ``fill_nearest`` (default off) and measures it
to the turn's midpoint instead; the gap is used here because a long turn's midpoint can be far from a word that
sits right at its edge. ``fill_nearest=False`` leaves such spans without a speaker (``None``).

Spans and turns are in seconds of file time. Segments and words are read by attribute (the core's
:class:`~pipelines.core.schema.Segment` / :class:`~pipelines.core.schema.Word`) or by key (``dict``), with
``start``, ``end`` and, for segments, ``words``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

#: The label of the ``i``-th speaker of a file in order of first appearance: ``SPEAKER_00``, ``SPEAKER_01``...
LABEL_FORMAT = "SPEAKER_{:02d}"


def speaker_label(index: int) -> str:
    """``SPEAKER_00`` for ``index`` 0 (two digits at least, as pyannote and WhisperX write them)."""
    return LABEL_FORMAT.format(index)


@dataclass(frozen=True)
class SpeakerTurn:
    """One stretch of speech by one speaker: ``start_s`` to ``end_s`` (seconds of file time), ``speaker`` a label
    such as ``SPEAKER_00`` (stable within a file, in order of first appearance)."""

    start_s: float
    end_s: float
    speaker: str

    @property
    def duration_s(self) -> float:
        """``end_s - start_s`` (s)."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SpeakerTime:
    """One speaker of a file and how long it speaks (s, the union of its turns)."""

    speaker: str
    speech_s: float


@dataclass(frozen=True)
class SegmentSpeakers:
    """The speakers of one transcript segment: the segment's own (``None`` when it has none) and one per word, in
    the segment's word order."""

    speaker: Optional[str]
    words: tuple[Optional[str], ...] = ()


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _ordered(turns: Iterable[SpeakerTurn]) -> list[SpeakerTurn]:
    return sorted((t for t in turns if t.end_s > t.start_s), key=lambda t: (t.start_s, t.end_s, t.speaker))


def first_appearance_names(turns: Iterable[SpeakerTurn]) -> dict[str, str]:
    """Old label -> ``SPEAKER_00``, ``SPEAKER_01``... in order of first appearance (turns sorted by start, then
    end; turns of zero or negative length ignored)."""
    names: dict[str, str] = {}
    for turn in _ordered(turns):
        names.setdefault(turn.speaker, speaker_label(len(names)))
    return names


def relabel_by_first_appearance(turns: Iterable[SpeakerTurn]) -> tuple[SpeakerTurn, ...]:
    """The turns sorted by start (then end), with labels renamed by :func:`first_appearance_names`. Turns of zero
    or negative length are dropped. The same input always gives the same labels."""
    ordered = _ordered(turns)
    names = first_appearance_names(ordered)
    return tuple(SpeakerTurn(float(t.start_s), float(t.end_s), names[t.speaker]) for t in ordered)


def speaker_times(turns: Sequence[SpeakerTurn]) -> tuple[SpeakerTime, ...]:
    """Speech seconds per speaker (overlapping turns of one speaker counted once), in order of first appearance.
    ``len()`` of the result is the file's ``num_speakers``."""
    by_speaker: dict[str, list[tuple[float, float]]] = {}
    for turn in sorted(turns, key=lambda t: (t.start_s, t.end_s)):
        if turn.end_s > turn.start_s:
            by_speaker.setdefault(turn.speaker, []).append((turn.start_s, turn.end_s))
    result = []
    for speaker, spans in by_speaker.items():
        total, cur_start, cur_end = 0.0, spans[0][0], spans[0][1]
        for start, end in spans[1:]:
            if start > cur_end:
                total += cur_end - cur_start
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        result.append(SpeakerTime(speaker, round(total + cur_end - cur_start, 3)))
    return tuple(result)


class TurnIndex:
    """The turns of one file, indexed for span queries: :meth:`speaker_of` costs O(log n + k) for k overlapping
    turns, so a 4-hour file's words are labelled in well under a second.

    Args:
        turns: any order; overlapping turns (of one or several speakers) are allowed.
    """

    def __init__(self, turns: Sequence[SpeakerTurn]):
        kept = sorted((t for t in turns if t.end_s > t.start_s), key=lambda t: (t.start_s, t.end_s))
        self.turns = tuple(kept)
        self.starts = np.array([t.start_s for t in kept], dtype=np.float64)
        self.ends = np.array([t.end_s for t in kept], dtype=np.float64)
        # running maximum of the ends, and which turn holds it: turns[:i] all end by max_end[i - 1]
        self.max_end = np.maximum.accumulate(self.ends) if kept else self.ends
        self.max_end_at = np.zeros(len(kept), dtype=np.int64)
        best = 0
        for i in range(len(kept)):
            if self.ends[i] >= self.ends[best]:
                best = i
            self.max_end_at[i] = best

    def __len__(self) -> int:
        return len(self.turns)

    def speaker_of(self, start_s: float, end_s: float, fill_nearest: bool = True) -> Optional[str]:
        """The speaker whose turns overlap ``[start_s, end_s]`` the most (seconds summed per speaker; a tie goes to
        the speaker whose overlapping turn comes first); if none overlaps and ``fill_nearest``, the speaker of the
        nearest turn (smallest gap, the earlier turn on a tie); else ``None``. ``None`` also when there are no
        turns. A zero-length span (``start_s == end_s``) inside a turn takes that turn's speaker."""
        if not self.turns:
            return None
        start_s, end_s = float(start_s), float(max(start_s, end_s))
        hi = int(np.searchsorted(self.starts, end_s, side="right"))  # turns starting at or before end_s
        lo = int(np.searchsorted(self.max_end, start_s, side="right"))  # turns before lo all end by start_s
        overlap: dict[str, float] = {}
        for i in range(lo, hi):
            seconds = min(end_s, self.ends[i]) - max(start_s, self.starts[i])
            if seconds > 0:
                speaker = self.turns[i].speaker
                overlap[speaker] = overlap.get(speaker, 0.0) + seconds
        if overlap:
            return max(overlap.items(), key=lambda item: item[1])[0]  # max keeps the first of equal values
        if not fill_nearest:
            return None
        candidates = list(range(lo, min(hi + 1, len(self.turns))))
        if lo > 0:
            candidates.append(int(self.max_end_at[lo - 1]))
        gaps = [(max(self.starts[i] - end_s, start_s - self.ends[i], 0.0), self.starts[i], i) for i in candidates]
        return self.turns[min(gaps)[2]].speaker


def assign_speakers(segments: Sequence[Any], turns: Sequence[SpeakerTurn],
                    fill_nearest: bool = True) -> tuple[SegmentSpeakers, ...]:
    """The speaker of each segment (over the segment's span) and of each of its words (over the word's span).

    Args:
        segments: transcript segments in file time (:class:`~pipelines.core.schema.Segment` or dicts with
            ``start``, ``end`` and ``words``: each word with ``start`` and ``end``).
        turns: the file's speaker turns (:class:`SpeakerTurn`, any order).
        fill_nearest: give spans that overlap no turn the nearest turn's speaker (module docstring).

    Returns:
        one :class:`SegmentSpeakers` per segment, in order; all ``None`` when ``turns`` is empty.
    """
    index = TurnIndex(turns)
    result = []
    for seg in segments:
        words = tuple(index.speaker_of(_get(w, "start"), _get(w, "end"), fill_nearest)
                      for w in (_get(seg, "words") or ()))
        result.append(SegmentSpeakers(index.speaker_of(_get(seg, "start"), _get(seg, "end"), fill_nearest), words))
    return tuple(result)


def _with_speaker(item: Any, speaker: Optional[str], **changes: Any) -> Any:
    if isinstance(item, Mapping):
        return {**item, **changes, "speaker": speaker}
    if dataclasses.is_dataclass(item) and "speaker" in {f.name for f in dataclasses.fields(item)}:
        return dataclasses.replace(item, speaker=speaker, **changes)
    raise TypeError(f"{type(item).__name__} has no 'speaker' field to fill")


def label_segments(segments: Sequence[Any], turns: Sequence[SpeakerTurn], fill_nearest: bool = True) -> list:
    """Copies of ``segments`` with ``speaker`` filled on each segment and each word (:func:`assign_speakers`).

    Dicts are copied with a ``speaker`` key; dataclasses are copied with :func:`dataclasses.replace` (``words``
    as a tuple) and must have a ``speaker`` field.

    Raises:
        TypeError: a segment or word is a dataclass without a ``speaker`` field.
    """
    out = []
    for seg, speakers in zip(segments, assign_speakers(segments, turns, fill_nearest)):
        words = [_with_speaker(w, s) for w, s in zip(_get(seg, "words") or (), speakers.words)]
        out.append(_with_speaker(seg, speakers.speaker,
                                 words=words if isinstance(seg, Mapping) else tuple(words)))
    return out


@dataclass(frozen=True)
class SpeakerRun:
    """Consecutive words of one speaker (across segment boundaries): the unit of ``diarized_json`` segments, of a
    subtitle's speaker prefix and of a text transcript's speaker turns. ``start``/``end`` in seconds."""

    speaker: Optional[str]
    start: float
    end: float
    text: str


def speaker_runs(segments: Sequence[Any], speakers: Sequence[SegmentSpeakers]) -> tuple[SpeakerRun, ...]:
    """Cut the transcript where the speaker changes, at word boundaries.

    Args:
        segments: transcript segments (as for :func:`assign_speakers`); a segment without words counts as one word
            (its ``text`` over its span).
        speakers: :func:`assign_speakers`'s result for ``segments``.

    Returns:
        the runs in time order; a run's ``text`` is its words joined as Whisper spells them (leading spaces kept
        between words, the whole stripped).
    """
    runs: list[list] = []  # [speaker, start, end, pieces]
    for seg, seg_speakers in zip(segments, speakers):
        words = _get(seg, "words") or ()
        items = ([(w, s) for w, s in zip(words, seg_speakers.words)] if words
                 else [({"word": _get(seg, "text", ""), "start": _get(seg, "start"), "end": _get(seg, "end")},
                        seg_speakers.speaker)])
        for word, speaker in items:
            text = _get(word, "word", "")
            if runs and runs[-1][0] == speaker:
                runs[-1][2] = max(runs[-1][2], float(_get(word, "end")))
                runs[-1][3].append(text)
            else:
                runs.append([speaker, float(_get(word, "start")), float(_get(word, "end")), [text]])
    return tuple(SpeakerRun(s, start, end, re.sub(r"\s+", " ", "".join(pieces)).strip())
                 for s, start, end, pieces in runs)


def match_known_speakers(centroids: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray],
                         min_similarity: float) -> dict[str, str]:
    """Name the diarized speakers from reference voices (OpenAI's ``known_speaker_names[]`` /
    ``known_speaker_references[]``): each name goes to at most one speaker and each speaker gets at most one name,
    the most similar pairs first (greedy on cosine similarity), and only pairs at or above ``min_similarity``.

    Args:
        centroids: speaker label -> its mean embedding in this file (shape (d,)).
        references: name -> the embedding of its reference clip (shape (d,), the same model).
        min_similarity: cosine similarity below which a pair is not a match (-1..1).

    Returns:
        label -> name for the matched speakers; unmatched speakers keep their label (absent from the dict).

    Raises:
        ValueError: embeddings of different sizes.
    """
    pairs = []
    for label, c in centroids.items():
        for name, r in references.items():
            c, r = np.asarray(c, dtype=np.float64).ravel(), np.asarray(r, dtype=np.float64).ravel()
            if c.shape != r.shape:
                raise ValueError(f"embedding sizes differ: speaker {label} has {c.size}, reference {name!r} {r.size}")
            norm = float(np.linalg.norm(c) * np.linalg.norm(r))
            similarity = float(c @ r) / norm if norm > 0 else -1.0
            if similarity >= min_similarity:
                pairs.append((-similarity, label, name))
    named: dict[str, str] = {}
    for _, label, name in sorted(pairs):
        if label not in named and name not in named.values():
            named[label] = name
    return named
