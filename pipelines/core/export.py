"""Subtitles and plain text from a transcript: SRT (``srt`` library), WebVTT (``webvtt-py``) and text.

Ray-free, used by the Serve endpoint's ``response_format`` and by anything that exports Parquet rows. Cues are the
transcript's segments, in file time (seconds). Segments may be :class:`~pipelines.core.schema.Segment` objects or
the dicts of a Parquet row's ``segments`` column (same field names, DESIGN.md invariant 4).
"""

from __future__ import annotations

import datetime as dt
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


def _fields(segment: SegmentLike) -> tuple[float, float, str]:
    if isinstance(segment, Segment):
        return segment.start, segment.end, segment.text
    return float(segment["start"]), float(segment["end"]), str(segment["text"])


def _cues(segments: Iterable[SegmentLike]) -> list[tuple[float, float, str]]:
    """(start_s, end_s, one-paragraph text) per segment with text; end is never before start."""
    cues = []
    for segment in segments:
        start, end, text = _fields(segment)
        lines = [line.strip() for line in text.strip().splitlines()]
        text = "\n".join(line for line in lines if line)  # no blank lines: they end a cue in both formats
        if text:
            start = max(0.0, start)
            cues.append((start, max(start, end), text))
    return cues


def to_srt(segments: Iterable[SegmentLike]) -> str:
    """SubRip subtitles: one numbered cue per segment with text, ``HH:MM:SS,mmm`` times.

    Returns:
        The SRT document (empty string when no segment has text).
    """
    subtitles = [
        srt.Subtitle(index=i, start=dt.timedelta(seconds=start), end=dt.timedelta(seconds=end), content=text)
        for i, (start, end, text) in enumerate(_cues(segments), start=1)
    ]
    return srt.compose(subtitles)


def _vtt_escape(text: str) -> str:
    # WebVTT cue text: '&' and '<' start entities and tags, and '-->' may not appear (escaping '>' avoids it).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_timestamp(seconds: float) -> str:
    """``HH:MM:SS.mmm`` for a time in seconds (rounded to the millisecond)."""
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def to_vtt(segments: Iterable[SegmentLike]) -> str:
    """WebVTT subtitles: a ``WEBVTT`` header and one cue per segment with text, ``HH:MM:SS.mmm`` times; ``&``,
    ``<`` and ``>`` in the text are written as character references.

    Returns:
        The WebVTT document (just the header when no segment has text).
    """
    captions = [
        webvtt.Caption(start=vtt_timestamp(start), end=vtt_timestamp(end), text=_vtt_escape(text))
        for start, end, text in _cues(segments)
    ]
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
