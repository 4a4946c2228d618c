"""python -m pipelines.export: SRT and VTT that parse back with their libraries, cue times equal to the segments."""

from __future__ import annotations

import datetime as dt
import html
import json
import subprocess
import sys

import pytest
import srt
import webvtt

from pipelines import analysis as an
from pipelines.core.schema import Segment, Word
from pipelines.export import NameAllocator, main, safe_filename, to_srt, to_text, to_vtt, verbose_json
from tests.conftest import JFK_PHRASE, ROOT
from tests.transcripts_output import CLIPS, MISSING_ID, SILENT_ID, build_output


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory, job_config, transcriber):
    return build_output(tmp_path_factory.getbasetemp() / "transcripts", job_config, transcriber)


@pytest.fixture(scope="module")
def rows(output_dir):
    """The transcript rows by id (plain Python values)."""
    return {row["id"]: row for row in an.load_table(str(output_dir)).to_pylist()}


MS = dt.timedelta(milliseconds=1)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def export(output_dir, tmp_path, fmt, capsys):
    out = tmp_path / fmt
    assert main(["--input", str(output_dir), "--format", fmt, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {MISSING_ID}: error row (AudioDecodeError" in captured.err
    assert f"wrote {len(CLIPS) + 1} .{fmt} files" in captured.out
    return out


def test_srt_parses_back_with_segment_times(output_dir, rows, tmp_path, capsys):
    out = export(output_dir, tmp_path, "srt", capsys)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{safe_filename(i)}.srt" for i in [*CLIPS, SILENT_ID])
    for clip in CLIPS:
        segments = rows[clip]["segments"]
        subs = list(srt.parse((out / f"{safe_filename(clip)}.srt").read_text(encoding="utf-8")))
        assert len(subs) == len(segments) >= 1
        for sub, seg in zip(subs, segments):
            assert sub.start // MS == ms(seg["start"])
            assert sub.end // MS == ms(seg["end"])
            assert sub.content == seg["text"].strip()
    jfk = (out / "jfk__jfk.flac.srt").read_text()
    assert JFK_PHRASE in jfk.lower()
    assert (out / f"{safe_filename(SILENT_ID)}.srt").read_text() == ""  # no speech: a file with no cues


def test_vtt_parses_back_with_segment_times(output_dir, rows, tmp_path, capsys):
    out = export(output_dir, tmp_path, "vtt", capsys)
    for clip in CLIPS:
        segments = rows[clip]["segments"]
        captions = webvtt.read(str(out / f"{safe_filename(clip)}.vtt")).captions
        assert len(captions) == len(segments) >= 1
        for cap, seg in zip(captions, segments):
            h, m, s, milli = cap.start_time.to_tuple()
            assert ((h * 60 + m) * 60 + s) * 1000 + milli == ms(seg["start"])
            h, m, s, milli = cap.end_time.to_tuple()
            assert ((h * 60 + m) * 60 + s) * 1000 + milli == ms(seg["end"])
            assert html.unescape(cap.text) == seg["text"].strip()
    silent = webvtt.read(str(out / f"{safe_filename(SILENT_ID)}.vtt"))
    assert silent.captions == []


def test_txt_and_json(output_dir, rows, tmp_path, capsys):
    txt = export(output_dir, tmp_path, "txt", capsys)  # "txt": another name for "text", the endpoint's meaning
    jfk_text = (txt / "jfk__jfk.flac.txt").read_text()
    assert jfk_text == rows["jfk/jfk.flac"]["text"].strip() + "\n" and JFK_PHRASE in jfk_text.lower()
    assert (txt / f"{safe_filename(SILENT_ID)}.txt").read_text() == ""
    assert main(["--input", str(output_dir), "--format", "text", "--output", str(tmp_path / "text")]) == 0
    assert "files" in capsys.readouterr().out and (tmp_path / "text" / "jfk__jfk.flac.txt").read_text() == jfk_text
    js = export(output_dir, tmp_path, "json", capsys)
    doc = json.loads((js / "jfk__jfk.flac.json").read_text())
    assert doc["id"] == "jfk/jfk.flac" and doc["status"] == "ok" and doc["language"] == "en"
    assert doc["duration"] == pytest.approx(11.0, abs=0.01)
    assert doc["segments"] == rows["jfk/jfk.flac"]["segments"]
    assert doc["segments"][0]["words"][0].keys() == {"word", "start", "end", "probability", "speaker"}  # 1.3
    endpoint_fields = set(verbose_json(rows["jfk/jfk.flac"])) - {"id", "audio_filepath", "status"}
    assert endpoint_fields <= set(doc)  # the endpoint's verbose_json fields, rendered by the same function
    silent = json.loads((js / f"{safe_filename(SILENT_ID)}.json").read_text())
    assert silent["status"] == "empty" and silent["segments"] == [] and silent["text"] == ""


def test_cli_as_module(output_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.export", "--input", str(output_dir), "--format", "srt",
                           "--output", str(tmp_path / "srt")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "srt" / "jfk__jfk.flac.srt").exists()
    missing = subprocess.run([sys.executable, "-m", "pipelines.export", "--input", str(tmp_path / "none"),
                              "--format", "srt", "--output", str(tmp_path / "x")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such output folder" in missing.stderr
    bad = subprocess.run([sys.executable, "-m", "pipelines.export", "--input", str(output_dir), "--format", "doc",
                          "--output", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


TRICKY = [
    {"start": 0.0, "end": 1.2344, "text": " Tom & Jerry <3 -->\n\nthe end"},
    {"start": 1.2346, "end": 1.2346, "text": " zero length"},  # must still be a cue: ends 1 ms later
    {"start": 2.0, "end": 3.0, "text": "   "},  # blank: no cue
    {"start": 3600 + 62.5, "end": 3600 + 63.0, "text": " past an hour"},
]


def test_tricky_segments_round_trip():
    subs = list(srt.parse(to_srt(TRICKY)))
    assert [s.content for s in subs] == ["Tom & Jerry <3 --> the end", "zero length", "past an hour"]
    assert [(s.start // MS, s.end // MS) for s in subs] == [(0, 1234), (1235, 1236), (3662500, 3663000)]
    caps = webvtt.from_string(to_vtt(TRICKY)).captions
    assert [html.unescape(c.text) for c in caps] == ["Tom & Jerry <3 --> the end", "zero length", "past an hour"]
    assert "&lt;3 --&gt;" in caps[0].text  # escaped as WebVTT requires
    assert [c.start for c in caps] == ["00:00:00.000", "00:00:01.235", "01:01:02.500"]
    assert to_text({"text": " Tom & Jerry  ", "segments": TRICKY}) == "Tom & Jerry\n"  # text: the row's text


def test_formats_take_segment_objects_and_nothing():
    seg = Segment(0, 0.5, 1.5, " hello", -0.2, 1.0, 0.01, 0.0, (Word(" hello", 0.5, 1.5, 0.9),))
    assert list(srt.parse(to_srt([seg])))[0].content == "hello"
    assert webvtt.from_string(to_vtt([seg])).captions[0].end == "00:00:01.500"
    assert to_srt([]) == "" and to_text({"text": ""}) == "" and webvtt.from_string(to_vtt([])).captions == []
    assert to_text({"text": " whole text ", "segments": []}) == "whole text\n"


def test_safe_filenames():
    assert safe_filename("jfk.flac") == "jfk.flac"
    assert safe_filename("an4/fjlp/cen7-fjlp-b.flac") == "an4__fjlp__cen7-fjlp-b.flac"
    assert safe_filename("C:\\calls\\a.wav") != safe_filename("C:/calls/a.wav")  # ':' replaced: hashed, apart
    for bad in ["../../etc/passwd", ".hidden", "a b?*.wav", "", "x" * 400, "naïve.wav"]:
        name = safe_filename(bad)
        assert name and len(name) <= 160 and not name.startswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name), name
    assert safe_filename("a b.wav") != safe_filename("a?b.wav")  # both become a_b.wav, told apart by the hash
    names = NameAllocator()
    got = [names.name_for(i) for i in ["a/b", "a__b", "A__B", "a/b"]]
    assert got[0] == got[3] == "a__b" and len({n.casefold() for n in got[:3]}) == 3
