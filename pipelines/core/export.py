"""The one module that renders a transcript: SRT (``srt`` library), WebVTT (``webvtt-py``), text and JSON.

Ray-free; used by the Serve endpoint's ``response_format`` and by the export CLI (``python -m pipelines.export``).
Each format name has one meaning, OpenAI's where OpenAI has the name (:data:`FORMATS`):

- ``text``: the transcript's ``text``, stripped, with one trailing newline (the CLI also accepts ``txt``);
- ``srt`` / ``vtt``: one cue per segment with text, in file time (seconds, rounded to the millisecond);
- ``json``: ``{"text": ...}``;
- ``verbose_json``: language, duration, text and the segments with their words (see :func:`verbose_json`);
- ``diarized_json``: OpenAI's diarized transcription (:func:`diarized_json`).

With speakers (a transcript or row that was diarized: its ``speakers`` is not None), ``srt`` cues start with the
speaker (``[SPEAKER_00] ...``), ``vtt`` cues carry a voice tag (``<v SPEAKER_00>...``), ``text`` is one paragraph
per speaker turn (``SPEAKER_00: ...``), and a cue is cut where the speaker changes inside a segment (at a word).
Without speakers every format is exactly what it was before diarization existed.

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
FORMATS = ("text", "srt", "vtt", "json", "verbose_json", "diarized_json")
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
    speaker: Optional[str] = None


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


def _attr(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


def _speaker_pieces(segment: SegmentLike) -> list[tuple[float, float, str, Optional[str]]]:
    """A segment cut where its words' speaker changes: (start, end, text, speaker) pieces in order; the whole
    segment with its own speaker when it has no words."""
    start_s, end_s, text = _fields(segment)
    words = list(_attr(segment, "words") or ())
    if not words:
        return [(start_s, end_s, text, _attr(segment, "speaker"))]
    pieces: list[list] = []
    for w in words:
        who = _attr(w, "speaker")
        if pieces and pieces[-1][3] == who:
            pieces[-1][1], pieces[-1][2] = float(_attr(w, "end")), pieces[-1][2] + str(_attr(w, "word"))
        else:
            pieces.append([float(_attr(w, "start")), float(_attr(w, "end")), str(_attr(w, "word")), who])
    pieces[0][0], pieces[-1][1] = min(start_s, pieces[0][0]), max(end_s, pieces[-1][1])
    return [tuple(p) for p in pieces]


def cues(segments: Iterable[SegmentLike], speakers: bool = False) -> list[Cue]:
    """The cues of ``segments`` (``Segment`` objects or Parquet dicts with ``start``/``end`` in seconds and
    ``text``): blank segments left out, whitespace (newlines too: a blank line would end a cue in both formats)
    collapsed to single spaces, times rounded to the millisecond, and every cue at least 1 ms long. With
    ``speakers``, a segment is cut where its words' speaker changes and each cue has its ``speaker``."""
    out = []
    for segment in segments:
        pieces = _speaker_pieces(segment) if speakers else [(*_fields(segment), None)]
        for start_s, end_s, text, speaker in pieces:
            text = _SPACES.sub(" ", text).strip()
            if text:
                start = to_ms(start_s)
                out.append(Cue(start, max(to_ms(end_s), start + 1), text, speaker))
    return out


def to_srt(segments: Iterable[SegmentLike], speakers: bool = False) -> str:
    """SubRip subtitles (the ``srt`` library): one numbered cue per segment with text, ``HH:MM:SS,mmm`` times;
    with ``speakers``, one per speaker piece of a segment, its text prefixed ``[SPEAKER_00] ``.

    Returns:
        The SRT document (empty string when no segment has text).
    """
    subtitles = [
        srt.Subtitle(index=i, start=dt.timedelta(milliseconds=c.start_ms), end=dt.timedelta(milliseconds=c.end_ms),
                     content=f"[{c.speaker}] {c.text}" if c.speaker else c.text)
        for i, c in enumerate(cues(segments, speakers), start=1)
    ]
    return srt.compose(subtitles, reindex=False) if subtitles else ""


def _vtt_escape(text: str) -> str:
    # WebVTT cue text: '&' and '<' start entities and tags, and '-->' may not appear (escaping '>' avoids it).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_timestamp(ms: int) -> str:
    """``HH:MM:SS.mmm`` for a time in whole milliseconds."""
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def to_vtt(segments: Iterable[SegmentLike], speakers: bool = False) -> str:
    """WebVTT subtitles (``webvtt-py``): a ``WEBVTT`` header and one cue per segment with text, ``HH:MM:SS.mmm``
    times; ``&``, ``<`` and ``>`` in the text are written as character references. With ``speakers``, one cue per
    speaker piece of a segment, in a voice tag (``<v SPEAKER_00>text``).

    Returns:
        The WebVTT document (just the header when no segment has text).
    """
    captions = [webvtt.Caption(start=vtt_timestamp(c.start_ms), end=vtt_timestamp(c.end_ms),
                               text=(f"<v {_vtt_escape(c.speaker)}>" if c.speaker else "") + _vtt_escape(c.text))
                for c in cues(segments, speakers)]
    return webvtt.WebVTT(captions=captions).content


def _get(transcript: TranscriptLike, name: str) -> Any:
    return getattr(transcript, name) if isinstance(transcript, Transcript) else transcript.get(name)


def _segments(transcript: TranscriptLike) -> list:
    segments = _get(transcript, "segments")
    return [] if segments is None else list(segments)


def has_speakers(transcript: TranscriptLike) -> bool:
    """Whether ``transcript`` (or a row) was diarized: its ``speakers`` is not None."""
    return _get(transcript, "speakers") is not None


def speaker_turns(transcript: TranscriptLike) -> list[tuple[Optional[str], float, float, str]]:
    """The transcript's words grouped into speaker turns across segments: (speaker, start, end, text) in order
    (a segment without words counts as one word with its own speaker)."""
    turns: list[list] = []
    for segment in _segments(transcript):
        for start, end, text, speaker in _speaker_pieces(segment):
            if turns and turns[-1][0] == speaker:
                turns[-1][2], turns[-1][3] = end, turns[-1][3] + text
            else:
                turns.append([speaker, start, end, text])
    return [(s, a, b, _SPACES.sub(" ", t).strip()) for s, a, b, t in turns if t.strip()]


def to_text(transcript: TranscriptLike) -> str:
    """``text``: the transcript's whole text, stripped, with one trailing newline ("" for an empty transcript).
    With speakers: one paragraph per speaker turn, ``SPEAKER_00: ...``, separated by a blank line."""
    if has_speakers(transcript):
        turns = speaker_turns(transcript)
        return "\n\n".join(f"{s}: {t}" if s else t for s, _, _, t in turns) + "\n" if turns else ""
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
        return to_srt(_segments(transcript), has_speakers(transcript))
    if fmt == "vtt":
        return to_vtt(_segments(transcript), has_speakers(transcript))
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
    rounded to the millisecond. Segments and words carry ``speaker`` (null without diarization, as in the Parquet
    struct); with speakers (diarized), the body also gets ``speakers`` (label and ``speech_s`` each) and
    ``num_speakers``.
    """
    is_row = not isinstance(transcript, Transcript)
    segments = [plain(s) if isinstance(s, Mapping) else s.to_dict() for s in _segments(transcript)]
    diarized = has_speakers(transcript)
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
    if diarized:
        speakers = [plain(s) if isinstance(s, Mapping) else {"speaker": s.speaker, "speech_s": s.speech_s}
                    for s in _get(transcript, "speakers")]
        body.update(speakers=speakers, num_speakers=len(speakers))
    if "word" in granularities:
        body["words"] = [word for seg in segments for word in seg["words"]]
    return body


def diarized_json(transcript: TranscriptLike, task: str = "transcribe") -> dict:
    """``diarized_json``, OpenAI's diarized transcription (the ``openai`` client's ``TranscriptionDiarized``):
    ``task``, ``duration``, ``text``, ``segments`` — one per speaker turn (:func:`speaker_turns`, cut at words),
    each ``{"type": "transcript.text.segment", "id": "seg_0", "start", "end", "text", "speaker"}`` — and
    ``usage`` in seconds. Speakers are ``SPEAKER_00``... (OpenAI's own are ``A``, ``B``...; any string parses).
    A transcript without speakers gets ``speaker`` ``"SPEAKER_00"`` on every segment (one voice assumed)."""
    duration = plain(_get(transcript, "duration_s"))
    duration = round(duration, 3) if duration is not None else 0.0
    segments = [{"type": "transcript.text.segment", "id": f"seg_{i}", "start": round(a, 3), "end": round(b, 3),
                 "text": t, "speaker": s or "SPEAKER_00"}
                for i, (s, a, b, t) in enumerate(speaker_turns(transcript))]
    return {"task": task, "duration": duration, "text": (_get(transcript, "text") or "").strip(),
            "segments": segments, "usage": {"type": "duration", "seconds": duration}}
