"""The Ray Data job end to end on the real dev corpus plus bad inputs; the CLI's refusals before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from pipelines.core.schema import SCHEMA_VERSION, TRANSCRIPT_SCHEMA
from pipelines.core.wer import word_error_rate
from pipelines.job.run import run_job
from tests.conftest import JFK_PHRASE, ROOT, corpus_rows
from tests.helpers import write_audio


@pytest.fixture(scope="module")
def job_output(tmp_path_factory, corpus, job_config, ray_local):
    """One job over all 172 dev-corpus files plus four bad inputs."""
    tmp = tmp_path_factory.mktemp("job")
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.wav").write_text("this is a text file, not a wav\n" * 40)
    mp3 = (corpus / "ljspeech" / "LJ001-0003.mp3").read_bytes()
    (bad / "truncated.mp3").write_bytes(mp3[: len(mp3) // 3])
    rows = [{"audio_filepath": str(corpus / r["path"]), "id": r["path"], "text": r["reference"]} for r in corpus_rows()]
    rows += [{"audio_filepath": f"bad/{name}", "id": f"bad-{name}"} for name in
             ("empty.wav", "text.wav", "truncated.mp3", "missing.flac")]
    manifest = tmp / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "out"
    summary = run_job(job_config, str(manifest), str(out), run_id="test-job")
    return summary, pd.read_parquet(out), out


@pytest.mark.ray
@pytest.mark.slow
def test_every_row_once_with_status(job_output):
    summary, df, _ = job_output
    corpus_ids = [r["path"] for r in corpus_rows()]
    assert len(df) == len(corpus_ids) + 4 and df["id"].is_unique
    good = df[df["id"].isin(corpus_ids)]
    assert (good["status"] == "ok").all(), good[good["status"] != "ok"][["id", "status", "error_message"]]
    assert summary.ok == len(corpus_ids) and summary.error == 4 and summary.files == len(df)
    assert set(TRANSCRIPT_SCHEMA.names) <= set(df.columns)
    assert (df["schema_version"] == SCHEMA_VERSION).all() and (df["run_id"] == "test-job").all()


@pytest.mark.ray
@pytest.mark.slow
def test_bad_inputs_are_error_rows_with_reasons(job_output):
    _, df, _ = job_output
    bad = df[df["id"].str.startswith("bad-")].set_index("id")
    assert (bad["status"] == "error").all()
    assert "empty" in bad.loc["bad-empty.wav", "error_message"]
    assert "not a readable audio" in bad.loc["bad-text.wav", "error_message"]
    assert "truncated" in bad.loc["bad-truncated.mp3", "error_message"]
    assert "no such file" in bad.loc["bad-missing.flac", "error_message"]
    assert bad.loc["bad-text.wav", "audio_filepath"] == "bad/text.wav"  # verbatim from the manifest


@pytest.mark.ray
@pytest.mark.slow
def test_transcripts_are_right(job_output):
    _, df, _ = job_output
    df = df.set_index("id")
    assert JFK_PHRASE in df.loc["jfk/jfk.flac", "text"].lower().replace(",", "")
    lj = df[df.index.str.startswith("ljspeech/")]
    wer = word_error_rate(lj["reference"].tolist(), lj["text"].tolist())
    print(f"ljspeech WER {wer:.3%}")
    assert wer <= 0.08
    for name in [i for i in df.index if i.endswith("_concat.flac")]:
        row = df.loc[name]
        segs = list(row["segments"])
        assert len(segs) > 10 and row["num_chunks"] > 1
        starts = [s["start"] for s in segs]
        assert starts == sorted(starts) and starts[0] >= 0 and segs[-1]["end"] <= row["duration_s"] + 1e-6
        assert all(s["start"] <= s["end"] for s in segs)
        words = [w for s in segs for w in s["words"]]
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)


@pytest.mark.ray
@pytest.mark.slow
def test_summary_written(job_output):
    summary, _, out = job_output
    record = json.loads((out / "_runs" / "test-job.json").read_text())
    assert record["files"] == summary.files and record["config"]["model"]["name"] == "bundled-tiny.en"
    assert record["x_real_time"] > 1 and record["audio_s"] > 1300


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipelines.transcribe", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_refuses_bad_manifest_before_work(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.wav"}\n{"text": "no path here"}\n')
    result = _cli("--manifest", str(manifest), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"manifest {manifest}, line 2" in result.stderr and not (tmp_path / "out").exists()


def test_cli_refuses_bad_config_before_work(tmp_path, corpus):
    result = _cli("--manifest", str(corpus / "manifest.jsonl"), "--output", str(tmp_path / "out"),
                  "--set", "model.batch_size=0")
    assert result.returncode == 2 and "model.batch_size" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_transcribes_a_folder(tmp_path, corpus):
    """The CLI end to end (own local Ray) on a folder input made of one real clip and one silent file."""
    import shutil

    import numpy as np

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(corpus / "jfk" / "jfk.flac", folder / "jfk.flac")
    write_audio(folder / "quiet.wav", np.zeros(16000 * 3, np.float32), 16000, "pcm_s16le", "s16")
    result = _cli("--manifest", str(folder), "--output", str(tmp_path / "out"), "--set", "progress=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 files: 1 ok, 1 empty, 0 error" in result.stdout
    df = pd.read_parquet(tmp_path / "out").set_index("id")
    assert df.loc["quiet.wav", "status"] == "empty"
    assert JFK_PHRASE in df.loc["jfk.flac", "text"].lower().replace(",", "")
