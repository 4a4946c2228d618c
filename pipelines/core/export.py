"""The one module that renders a transcript: SRT (``srt`` library), WebVTT (``webvtt-py``), text and JSON.

Ray-free; used by the Serve endpoint's ``response_format`` and by the export CLI (``python -m pipelines.export``).
Each format name has one meaning, OpenAI's where OpenAI has the name (:data:`FORMATS`):

- ``text``: the transcript's ``text``, stripped, with one trailing newline (the CLI also accepts ``txt``);
- ``srt`` / ``vtt``: one cue per segment with text, in file time (seconds, rounded to the millisecond);
- ``json``: ``{"text": ...}``;
- ``verbose_json``: language, duration, text and the segments with their words (see :func:`verbose_json`).

Every function takes a :class:`~pipelines.core.schema.Transcript` or a Parquet row (a mapping with the row's
columns; its ``segments`` are dicts with the same field names as :class:`~pipelines.core.schema.Segment`,
docs/architecture.md, invariant 4).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import srt
import webvtt

from pipelines.core.schema import SCHEMA_VERSION, Segment, Transcript

SegmentLike = Union[Segment, Mapping[str, Any]]
#: A transcript, or one Parquet row (a mapping of the row's columns).
TranscriptLike = Union[Transcript, Mapping[str, Any]]

#: Every format this module renders (one meaning each; see the module doc).
FORMATS = ("text", "srt", "vtt", "json", "verbose_json")
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


def _get(transcript: TranscriptLike, name: str) -> Any:
    return getattr(transcript, name) if isinstance(transcript, Transcript) else transcript.get(name)


def _segments(transcript: TranscriptLike) -> list:
    segments = _get(transcript, "segments")
    return [] if segments is None else list(segments)


def to_text(transcript: TranscriptLike) -> str:
    """``text``: the transcript's whole text, stripped, with one trailing newline ("" for an empty transcript)."""
    text = (_get(transcript, "text") or "").strip()
    return text + "\n" if text else ""


def export_text(transcript: TranscriptLike, fmt: str) -> str:
    """``transcript`` as ``fmt``: one of the text formats of :data:`MEDIA_TYPES` (``text``, ``srt``, ``vtt``).

    Raises:
        ValueError: an unknown format.
    """
    if fmt == "text":
        return to_text(transcript)
    if fmt == "srt":
        return to_srt(_segments(transcript))
    if fmt == "vtt":
        return to_vtt(_segments(transcript))
    raise ValueError(f"unknown export format {fmt!r}; expected one of {sorted(MEDIA_TYPES)}")


def plain(value: Any) -> Any:
    """Parquet values (numpy arrays and scalars, NaN) -> JSON-ready Python values (lists, dicts, None)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(transcript: TranscriptLike) -> dict:
    """``json``: ``{"text": ...}`` (OpenAI's)."""
    return {"text": _get(transcript, "text") or ""}


#: The columns of a row that :func:`verbose_json` names it by.
ROW_IDENTITY = ("id", "audio_filepath", "status")


def verbose_json(transcript: TranscriptLike, granularities: Sequence[str] = ("segment",),
                 task: Optional[str] = None) -> dict:
    """``verbose_json``: OpenAI's fields (``task`` when given, ``language``, ``duration``, ``text``, ``segments``,
    ``words`` when ``"word"`` is among ``granularities``) plus ``language_probability``, ``schema_version`` and
    ``usage``; a row also gets its ``id``, ``audio_filepath`` and ``status`` first.

    Each segment is ``Segment.to_dict()``, the Parquet ``segments`` struct field for field (its ``words`` too);
    top-level ``words`` are every segment's words in order. Times are seconds of file time; ``duration`` is
    rounded to the millisecond.
    """
    is_row = not isinstance(transcript, Transcript)
    segments = [plain(s) if isinstance(s, Mapping) else s.to_dict() for s in _segments(transcript)]
    duration = plain(_get(transcript, "duration_s"))
    duration = round(duration, 3) if duration is not None else None
    body: dict[str, Any] = {k: transcript.get(k) for k in ROW_IDENTITY} if is_row else {}
    if task is not None:
        body["task"] = task
    body.update(
        language=_get(transcript, "language") or "",
        language_probability=plain(_get(transcript, "language_probability")),
        duration=duration,
        text=_get(transcript, "text") or "",
        segments=segments,
        schema_version=(transcript.get("schema_version") if is_row else None) or SCHEMA_VERSION,
        usage={"type": "duration", "seconds": duration},
    )
    if "word" in granularities:
        body["words"] = [word for seg in segments for word in seg["words"]]
    return body
