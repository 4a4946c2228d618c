"""Subtitles and plain text from a transcript: SRT (``srt`` library), WebVTT (``webvtt-py``) and text.

Ray-free, used by the Serve endpoint's ``response_format`` and by anything that exports Parquet rows. Cues are the
transcript's segments, in file time (seconds). Segments may be :class:`~pipelines.core.schema.Segment` objects or
the dicts of a Parquet row's ``segments`` column (same field names, docs/architecture.md, invariant 4).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import srt
import webvtt

from pipelines.core.schema import Segment, Transcript

SegmentLike = Union[Segment, Mapping[str, Any]]

#: The text formats :func:`export_text` writes, with the media type an HTTP response should carry.
MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: ``start_ms``/``end_ms`` in whole milliseconds of file time, one line of ``text``."""

    start_ms: int
    end_ms: int
    text: str


_SPACES = re.compile(r"\s+")


def _fields(segment: SegmentLike) -> tuple[float, float, str]:
    if isinstance(segment, Segment):
        return segment.start, segment.end, segment.text
    return float(segment["start"]), float(segment["end"]), str(segment["text"] or "")


def to_ms(seconds: float) -> int:
    """Seconds -> whole milliseconds, rounded to nearest (negative or non-finite -> 0)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return 0
    return int(round(seconds * 1000))


def cues(segments: Iterable[SegmentLike]) -> list[Cue]:
    """The cues of ``segments`` (``Segment`` objects or Parquet dicts with ``start``/``end`` in seconds and
    ``text``): blank segments left out, whitespace (newlines too: a blank line would end a cue in both formats)
    collapsed to single spaces, times rounded to the millisecond, and every cue at least 1 ms long."""
    out = []
    for segment in segments:
        start_s, end_s, text = _fields(segment)
        text = _SPACES.sub(" ", text).strip()
        if text:
            start = to_ms(start_s)
            out.append(Cue(start, max(to_ms(end_s), start + 1), text))
    return out


def to_srt(segments: Iterable[SegmentLike]) -> str:
    """SubRip subtitles (the ``srt`` library): one numbered cue per segment with text, ``HH:MM:SS,mmm`` times.

    Returns:
        The SRT document (empty string when no segment has text).
    """
    subtitles = [
        srt.Subtitle(index=i, start=dt.timedelta(milliseconds=c.start_ms), end=dt.timedelta(milliseconds=c.end_ms),
                     content=c.text)
        for i, c in enumerate(cues(segments), start=1)
    ]
    return srt.compose(subtitles, reindex=False) if subtitles else ""


def _vtt_escape(text: str) -> str:
    # WebVTT cue text: '&' and '<' start entities and tags, and '-->' may not appear (escaping '>' avoids it).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_timestamp(ms: int) -> str:
    """``HH:MM:SS.mmm`` for a time in whole milliseconds."""
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def to_vtt(segments: Iterable[SegmentLike]) -> str:
    """WebVTT subtitles (``webvtt-py``): a ``WEBVTT`` header and one cue per segment with text, ``HH:MM:SS.mmm``
    times; ``&``, ``<`` and ``>`` in the text are written as character references.

    Returns:
        The WebVTT document (just the header when no segment has text).
    """
    captions = [webvtt.Caption(start=vtt_timestamp(c.start_ms), end=vtt_timestamp(c.end_ms),
                               text=_vtt_escape(c.text))
                for c in cues(segments)]
    return webvtt.WebVTT(captions=captions).content


def to_text(transcript: Union[Transcript, Mapping[str, Any]]) -> str:
    """The transcript's whole text, stripped, with one trailing newline ("" for an empty transcript)."""
    text = transcript.text if isinstance(transcript, Transcript) else (transcript.get("text") or "")
    text = text.strip()
    return text + "\n" if text else ""


def export_text(transcript: Union[Transcript, Mapping[str, Any]], fmt: str) -> str:
    """``transcript`` (a :class:`Transcript` or a Parquet row dict) as ``fmt``: one of :data:`MEDIA_TYPES`.

    Raises:
        ValueError: an unknown format.
    """
    if fmt == "text":
        return to_text(transcript)
    segments = transcript.segments if isinstance(transcript, Transcript) else (transcript.get("segments") or [])
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {sorted(MEDIA_TYPES)}")
