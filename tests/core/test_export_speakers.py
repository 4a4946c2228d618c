"""Exports of diarized transcripts (issue 17): SRT speaker prefixes, WebVTT voice tags, text by speaker turn,
``diarized_json``, ``verbose_json``'s speakers; and rows without speakers render exactly as before."""

from __future__ import annotations

import srt
import webvtt

from pipelines.core.export import diarized_json, export_text, speaker_turns, verbose_json
from pipelines.core.schema import Segment, Transcript, Word
from pipelines.core.speakers import SpeakerTime


def _w(word, start, end, speaker=None):
    return Word(word, start, end, 0.9, speaker)


def _transcript(diarized: bool) -> Transcript:
    s0, s1 = ("SPEAKER_00", "SPEAKER_01") if diarized else (None, None)
    seg1 = Segment(0, 0.0, 3.0, " Hello there. Hi", -0.1, 1.2, 0.01, 0.0,
                   (_w(" Hello", 0.0, 0.5, s0), _w(" there.", 0.5, 1.0, s0), _w(" Hi", 2.0, 3.0, s1)), s0)
    seg2 = Segment(1, 3.2, 5.0, " a <b> & c", -0.1, 1.2, 0.01, 0.0,
                   (_w(" a", 3.2, 3.5, s1), _w(" <b>", 3.5, 4.0, s1), _w(" &", 4.0, 4.2, s1), _w(" c", 4.2, 5.0, s1)),
                   s1)
    speakers = (SpeakerTime("SPEAKER_00", 1.0), SpeakerTime("SPEAKER_01", 2.8)) if diarized else None
    return Transcript("Hello there. Hi a <b> & c", "en", 1.0, 5.0, (seg1, seg2), speakers=speakers)


def test_srt_vtt_text_carry_speakers_cut_at_word_boundaries():
    t = _transcript(True)
    subs = list(srt.parse(export_text(t, "srt")))
    assert [s.content for s in subs] == ["[SPEAKER_00] Hello there.", "[SPEAKER_01] Hi", "[SPEAKER_01] a <b> & c"]
    assert subs[1].start.total_seconds() == 2.0 and subs[0].end.total_seconds() == 1.0
    vtt = export_text(t, "vtt")
    assert "<v SPEAKER_00>Hello there." in vtt and "<v SPEAKER_01>a &lt;b&gt; &amp; c" in vtt
    assert len(webvtt.from_string(vtt).captions) == 3
    assert export_text(t, "text") == "SPEAKER_00: Hello there.\n\nSPEAKER_01: Hi a <b> & c\n"
    assert [(s, a, b) for s, a, b, _ in speaker_turns(t)] == [("SPEAKER_00", 0.0, 1.0), ("SPEAKER_01", 2.0, 5.0)]


def test_diarized_and_verbose_json():
    t = _transcript(True)
    body = diarized_json(t)
    assert body["task"] == "transcribe" and body["duration"] == 5.0 and body["usage"]["seconds"] == 5.0
    assert [(s["id"], s["speaker"], s["text"]) for s in body["segments"]] == [
        ("seg_0", "SPEAKER_00", "Hello there."), ("seg_1", "SPEAKER_01", "Hi a <b> & c")]
    assert all(s["type"] == "transcript.text.segment" for s in body["segments"])
    v = verbose_json(t, ("segment", "word"))
    assert v["num_speakers"] == 2 and v["speakers"][1] == {"speaker": "SPEAKER_01", "speech_s": 2.8}
    assert v["segments"][1]["speaker"] == "SPEAKER_01" and v["words"][2]["speaker"] == "SPEAKER_01"


def test_without_speakers_nothing_changes():
    t = _transcript(False)
    assert [s.content for s in srt.parse(export_text(t, "srt"))] == ["Hello there. Hi", "a <b> & c"]
    assert "<v " not in export_text(t, "vtt")
    assert export_text(t, "text") == "Hello there. Hi a <b> & c\n"
    v = verbose_json(t, ("segment", "word"))
    assert "speakers" not in v and "num_speakers" not in v
    # the segments are the Parquet struct field for field: speaker null
    assert all(s["speaker"] is None for s in v["segments"]) and all(w["speaker"] is None for w in v["words"])
    # a Parquet row of schema 1.1 (no speaker fields at all) and one of 1.3 with diarization off
    row = {"id": "a", "audio_filepath": "a.wav", "status": "ok", "text": "Hello there.", "duration_s": 1.0,
           "segments": [{"id": 0, "start": 0.0, "end": 1.0, "text": " Hello there.", "words": []}]}
    for r in (row, row | {"speakers": None, "segments": [row["segments"][0] | {"speaker": None}]}):
        assert export_text(r, "srt").splitlines()[2] == "Hello there."
        assert verbose_json(r)["segments"][0].get("speaker") is None and "speakers" not in verbose_json(r)
