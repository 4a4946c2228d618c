"""pipelines.core.export: SRT, WebVTT and text, read back with real parsers (srt, webvtt-py). No Ray."""

from __future__ import annotations

import datetime as dt

import pytest
import srt
import webvtt

from pipelines.core.audio import decode_audio
from pipelines.core.export import MEDIA_TYPES, export_text, to_srt, to_text, to_vtt
from pipelines.core.schema import Segment, Transcript, Word
from pipelines.core.stitch import stitch_file
from pipelines.core.transcriber import Chunk
from tests.conftest import JFK, JFK_PHRASE


def seg(i: int, start: float, end: float, text: str) -> Segment:
    return Segment(id=i, start=start, end=end, text=text, avg_logprob=-0.2, compression_ratio=1.2,
                   no_speech_prob=0.01, temperature=0.0, words=(Word(text.strip(), start, end, 0.9),))


SEGMENTS = (
    seg(0, 0.0, 2.5, " And so, my fellow Americans"),
    seg(1, 2.5, 3723.456, " ask not what your country can do for you"),  # past one hour
    seg(2, 3723.456, 3724.0, "   "),  # no text: no cue
)
TRANSCRIPT = Transcript(text="And so, my fellow Americans ask not what your country can do for you", language="en",
                        language_probability=1.0, duration_s=3724.0, segments=SEGMENTS)


def test_srt_parses_with_times_and_text():
    subs = list(srt.parse(to_srt(SEGMENTS)))
    assert [s.index for s in subs] == [1, 2]
    assert subs[0].start == dt.timedelta(0) and subs[0].end == dt.timedelta(seconds=2.5)
    assert subs[1].end == dt.timedelta(hours=1, minutes=2, seconds=3, milliseconds=456)
    assert subs[1].content == "ask not what your country can do for you"


def test_vtt_parses_with_times_and_text():
    text = to_vtt(SEGMENTS)
    assert text.startswith("WEBVTT")
    captions = webvtt.from_string(text).captions
    assert [(c.start, c.end) for c in captions] == [("00:00:00.000", "00:00:02.500"), ("00:00:02.500", "01:02:03.456")]
    assert captions[0].text == "And so, my fellow Americans"


def test_cue_text_that_would_break_the_formats_is_made_safe():
    tricky = [seg(0, 0.0, 1.0, " a <b> & c --> d\n\n second line ")]
    vtt = webvtt.from_string(to_vtt(tricky))
    assert len(vtt.captions) == 1
    assert vtt.captions[0].raw_text == "a &lt;b&gt; &amp; c --&gt; d second line"  # one line: no blank line
    subs = list(srt.parse(to_srt(tricky)))
    assert len(subs) == 1 and subs[0].content == "a <b> & c --> d second line"


def test_text_and_empty_transcripts():
    assert to_text(TRANSCRIPT) == TRANSCRIPT.text + "\n"
    empty = Transcript(text="", language="en", language_probability=1.0, duration_s=2.0)
    assert to_text(empty) == ""
    assert to_srt(empty.segments) == ""
    assert webvtt.from_string(to_vtt(empty.segments)).captions == []


def test_parquet_row_dicts_export_like_segments():
    row = {"text": TRANSCRIPT.text, "segments": [s.to_dict() for s in SEGMENTS]}
    for fmt in MEDIA_TYPES:
        assert export_text(row, fmt) == export_text(TRANSCRIPT, fmt)
    with pytest.raises(ValueError, match="unknown export format"):
        export_text(row, "docx")


def test_real_transcript_round_trips(transcriber, corpus):
    audio = decode_audio(JFK)
    transcript = stitch_file(transcriber.transcribe_chunks([Chunk("jfk", 0, 0.0, audio.samples)]), audio.duration_s)
    subs = list(srt.parse(to_srt(transcript.segments)))
    assert JFK_PHRASE in " ".join(s.content for s in subs).lower().replace(",", "")
    captions = webvtt.from_string(to_vtt(transcript.segments)).captions
    assert len(captions) == len(subs) >= 1
    assert captions[-1].end_in_seconds <= audio.duration_s
