"""Long-form accuracy (issue 15): recordings joining dev clips of different speakers and sources
(:mod:`tests.joined`, about 4 minutes each), transcribed the way the job transcribes one folder: several files in
one :meth:`Engine.transcribe_isolated` call sharing a ``pack_group``, so a long file's short chunks are packed with
its folder-mates'. No stretch of more than 2 s of detected speech may be left without words, and the WER must stay
within 0.5 points of ``WhisperModel.transcribe`` on the same files."""

from __future__ import annotations

import pytest

from pipelines.core.coverage import COVER_PAD_S
from pipelines.core.engine import Engine, FileSpec, prepare
from pipelines.core.wer import word_error_rate
from tests.conftest import corpus_rows
from tests.joined import joined_recordings

GROUP = "joined"  # the folder all the files are in: their chunks are packed together


@pytest.fixture(scope="module")
def folder(tmp_path_factory, corpus, job_config):
    """The joined recordings written as WAV files, and their prepared files plus short clips of the same folder."""
    where = tmp_path_factory.mktemp("joined")
    recordings = joined_recordings()
    paths = [r.write_wav(where / f"{r.name}.wav") for r in recordings]
    prepared = [prepare(p, FileSpec(r.name, p.name, pack_group=GROUP), job_config.chunking)
                for r, p in zip(recordings, paths)]
    used = {c for r in recordings for c in r.clips}
    short = [r["path"] for r in corpus_rows() if r["path"] not in used and r["duration_s"] < 10][::10][:4]
    prepared += [prepare(corpus / c, FileSpec(c, c, pack_group=GROUP), job_config.chunking) for c in short]
    return recordings, paths, prepared


@pytest.fixture(scope="module")
def transcribed(folder, transcriber, job_config):
    """One engine call over the folder: the outcomes of the joined recordings, and the transcriber's stats."""
    recordings, _, prepared = folder
    outcomes = Engine(job_config.model, job_config.decoding, transcriber).transcribe_isolated(prepared)
    return outcomes[:len(recordings)], dict(transcriber.last_stats)


def uncovered_speech(prepared, transcript) -> list[tuple[float, float, float]]:
    """(from, to, seconds of speech) for each stretch between consecutive words of ``transcript`` (file time) whose
    VAD speech farther than COVER_PAD_S from a word adds up to more than 2 s; measured here, not by the engine."""
    speech = [(offset + a, offset + b) for offset, runs in zip(prepared.chunk_offsets_s, prepared.chunk_speech)
              for a, b in runs]
    words = sorted((w.start, w.end) for s in transcript.segments for w in s.words)
    edges = [(0.0, 0.0)] + words + [(prepared.duration_s, prepared.duration_s)]
    found = []
    for (_, left), (right, _) in zip(edges, edges[1:]):
        low, high = left + COVER_PAD_S, right - COVER_PAD_S
        inside = sum(max(0.0, min(b, high) - max(a, low)) for a, b in speech)
        if inside > 2.0:
            found.append((left, right, round(inside, 1)))
    return found


def test_recordings_are_long_and_mixed(folder):
    recordings, _, prepared = folder
    for rec, prep in zip(recordings, prepared):
        assert 180 <= rec.duration_s <= 360
        assert {c.split("/")[0] for c in rec.clips} == {"an4", "ljspeech", "jfk", "librispeech", "gentle"}
        assert prep.num_chunks >= 8
    assert len({rec.clips for rec in recordings}) == len(recordings)  # different clips and orders


def test_no_detected_speech_is_left_without_words(folder, transcribed):
    recordings, _, prepared = folder
    outcomes, stats = transcribed
    for rec, prep, out in zip(recordings, prepared, outcomes):
        t = out.transcript
        assert t is not None and t.status == "ok", rec.name
        assert uncovered_speech(prep, t) == [], rec.name
        q = t.quality
        assert q.uncovered_spans == () and q.speech_s == pytest.approx(prep.speech_s)
        assert q.covered_speech_s > 0.97 * q.speech_s, (rec.name, q)
        assert word_error_rate([rec.reference], [t.text]) < 0.15, rec.name
    assert stats["packed_windows"] >= 1  # short chunks of the long files were packed with their folder-mates'


@pytest.mark.slow
def test_wer_within_half_a_point_of_sequential_faster_whisper(folder, transcribed, job_config):
    """Corpus WER over the recordings (the words of all of them together): the engine's is at most 0.5 points above
    ``WhisperModel.transcribe``'s (same model, int8, beam 5, no VAD: a user's first try)."""
    from pipelines.core.whisper import Baseline

    recordings, paths, _ = folder
    outcomes, _ = transcribed
    baseline = Baseline(job_config.model, cpu_threads=2)
    sequential = [baseline.transcribe(str(p), job_config.decoding.beam_size)[0] for p in paths]
    refs = [r.reference for r in recordings]
    ours = word_error_rate(refs, [o.transcript.text for o in outcomes])
    theirs = word_error_rate(refs, sequential)
    assert ours <= theirs + 0.005, (ours, theirs)
