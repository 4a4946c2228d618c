"""Resume, exactly-once output and fault tolerance: the plan without Ray, then real runs over an output folder
(rerun, changed config, --overwrite, --retry-errors, identical audio), a transcription actor killed mid-run, a
file that kills its worker every time, and the driver SIGKILLed partway through a CLI run."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from pipelines.config import config_fingerprint, load_config, row_fingerprint
from pipelines.core.rows import Source, TranscriptRow, rows_to_table
from pipelines.io.manifest import ManifestRow
from pipelines.io.output import OutputFolder, PartWriter
from pipelines.io.resume import DoneRow, load_index, plan_run
from pipelines.stages import TranscribeStage
from pipelines.job.run import run_job
from pipelines.transcribe import main
from tests.helpers import process_family
from tests.conftest import JFK, JFK_PHRASE, ROOT, corpus_rows

FP = "f" * 16
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _mrow(rid, path=None, reference=None, language=None):
    path = path or f"{rid}.wav"
    return ManifestRow(rid, path, f"/data/{path}", language=language, reference=reference)


def _done(rid, sha, fp=FP, status="ok", path=None, part="p0", position=0, reference=None, minutes=0, dup=None):
    return DoneRow(id=rid, audio_filepath=path or f"{rid}.wav", reference=reference, sha256=sha,
                   config_fingerprint=fp, status=status, run_id="r1", part=part, position=position,
                   created_at=T0 + dt.timedelta(minutes=minutes), duplicate_of=dup)


# --- the plan, without Ray ------------------------------------------------------------------------------------


def test_plan_keeps_done_rows_and_transcribes_the_rest():
    rows = [_mrow("a"), _mrow("b"), _mrow("c")]
    plan = plan_run(rows, {"a": "sa", "b": "sb", "c": "sc"}, [_done("a", "sa"), _done("b", "sb", status="empty")],
                    FP)
    assert [d.id for d in plan.keep] == ["a", "b"] and [r.id for r in plan.transcribe] == ["c"]
    assert not plan.copies and not plan.take_out


def test_plan_redoes_changed_config_and_changed_audio_and_takes_old_rows_out():
    rows = [_mrow("a"), _mrow("b")]
    done = [_done("a", "sa", fp="old-config"), _done("b", "old-audio")]
    plan = plan_run(rows, {"a": "sa", "b": "sb"}, done, FP)
    assert [r.id for r in plan.transcribe] == ["a", "b"] and not plan.keep
    assert {d.id for d in plan.take_out} == {"a", "b"}
    assert plan.reasons == {"config changed": 1, "audio changed": 1}


def test_plan_error_rows_stand_unless_retried():
    rows = [_mrow("a"), _mrow("gone")]
    done = [_done("a", "sa", status="error"), _done("gone", None, status="error")]
    hashes = {"a": "sa", "gone": None}
    plan = plan_run(rows, hashes, done, FP)
    assert len(plan.keep) == 2 and not plan.transcribe
    retry = plan_run(rows, hashes, done, FP, retry_errors=True)
    assert [r.id for r in retry.transcribe] == ["a", "gone"] and retry.reasons == {"error retried": 2}
    # a file that was missing and is there now has new content: redone without --retry-errors
    back = plan_run(rows, {"a": "sa", "gone": "s-now"}, done, FP)
    assert [r.id for r in back.transcribe] == ["gone"] and back.reasons == {"audio changed": 1}


def test_plan_identical_audio_is_transcribed_once():
    rows = [_mrow("a"), _mrow("b"), _mrow("c"), _mrow("d")]
    done = [_done("x", "s1", part="p9")]  # an id outside the manifest, same audio as c: a source, left alone
    plan = plan_run(rows, {"a": "s0", "b": "s0", "c": "s1", "d": None}, done, FP)
    assert [r.id for r in plan.transcribe] == ["a", "d"]  # unreadable rows are never deduplicated
    copies = {c.row.id: c for c in plan.copies}
    assert copies["b"].source_id == "a" and copies["b"].source is None
    assert copies["c"].source_id == "x" and copies["c"].source.part == "p9"
    assert plan.dependents() == {"a": [rows[1]]} and not plan.take_out


def test_plan_fingerprint_includes_the_rows_language_and_prompt():
    rows = [_mrow("a"), _mrow("b", language="fr")]
    plan = plan_run(rows, {"a": "s", "b": "s"}, [], FP)
    assert [r.id for r in plan.transcribe] == ["a", "b"]  # same audio, another language: not a copy
    assert row_fingerprint(FP) == FP and row_fingerprint(FP, "fr") != FP


def test_plan_one_row_per_id_and_manifest_changes():
    rows = [_mrow("a"), _mrow("b", path="moved/b.wav"), _mrow("c", reference="new text")]
    done = [_done("a", "sa", status="error", position=0), _done("a", "sa", position=1, minutes=5),
            _done("b", "sb"), _done("c", "sc", reference="old text")]
    plan = plan_run(rows, {"a": "sa", "b": "sb", "c": "sc"}, done, FP)
    assert [(d.id, d.status) for d in plan.keep] == [("a", "ok")]
    assert plan.reasons == {"second row for an id": 1, "manifest row changed": 2}
    assert not plan.transcribe and {c.row.id for c in plan.copies} == {"b", "c"}  # re-labelled, not redone


def test_a_copy_points_at_the_transcribed_row():
    source = {"id": "a", "audio_filepath": "a.wav", "status": "error", "error_type": "AudioDecodeError",
              "error_message": "a.wav: truncated", "duplicate_of": None, "transcribe_s": 3.0}

    def copy(row, target):
        return TranscriptRow.copy_of(row, Source(target.id, target.audio_filepath, reference=target.reference),
                                     "r2").to_dict()
    out = copy(source, _mrow("b", reference="ref"))
    assert out["duplicate_of"] == "a" and out["error_message"] == "b.wav: truncated"
    assert out["run_id"] == "r2" and out["transcribe_s"] == 0.0 and out["reference"] == "ref"
    assert copy(source | {"duplicate_of": "z"}, _mrow("b"))["duplicate_of"] == "z"
    assert copy(source, _mrow("a", path="moved.wav"))["duplicate_of"] is None


def test_take_out_replaces_parts_whole_and_keeps_the_rows_aside(tmp_path):
    writer = PartWriter(str(tmp_path), "r1", rows_per_file=3)
    rows = [{"id": i, "audio_filepath": f"{i}.wav", "status": "ok", "sha256": i, "segments": []} for i in "abcde"]
    writer.write(rows_to_table(rows))
    writer.close()
    folder = OutputFolder(str(tmp_path))
    done, bad = load_index(folder)
    assert [d.id for d in done] == list("abcde") and not bad
    taken = folder.take_out({d.part: [d.position] for d in done if d.id in "bd"} | {done[3].part: [0, 1]}, "r2")
    assert taken == 3
    assert sorted(pd.read_parquet(tmp_path)["id"]) == ["a", "c"]
    aside = pd.read_parquet(tmp_path / "_replaced" / "r2")
    assert sorted(aside["id"]) == ["b", "d", "e"]
    assert len(folder.parts()) == 1  # the part that lost every row is gone
    again = PartWriter(str(tmp_path), "r1", rows_per_file=3)  # the same run id again: numbering goes on
    again.write(rows_to_table(rows[4:]))
    assert re.search(r"/part-r1-00001-[0-9a-f]{8}\.parquet$", again.close()[0])
    assert sorted(pd.read_parquet(tmp_path)["id"]) == ["a", "c", "e"]


# --- real runs over an output folder ---------------------------------------------------------------------------


def _an4(n):
    return [r["path"] for r in corpus_rows() if r["path"].startswith("an4/")][:n]


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(*overrides):
    return load_config(ROOT / "configs" / "local.yaml", ["progress=false", "output.rows_per_file=2", *overrides])


def _current(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out)
    assert df["id"].is_unique, df["id"][df["id"].duplicated()].tolist()
    return df.set_index("id")


@pytest.fixture(scope="module")
def small(tmp_path_factory, corpus):
    """Four manifest rows (two AN4 clips, JFK, and JFK again under another name) and one run over them."""
    tmp = tmp_path_factory.mktemp("resume")
    shutil.copy(JFK, tmp / "jfk again.flac")
    rows = [{"audio_filepath": str(corpus / p), "id": p} for p in _an4(2)]
    rows += [{"audio_filepath": str(JFK), "id": "jfk"}, {"audio_filepath": "jfk again.flac", "id": "jfk-again"}]
    manifest = _write_manifest(tmp / "manifest.jsonl", rows)
    return tmp, manifest, rows


@pytest.fixture(scope="module")
def base(small, ray_local):
    tmp, manifest, _ = small
    out = tmp / "base"
    summary = run_job(_cfg(), str(manifest), str(out), run_id="base")
    return out, summary


def _copy_of(base_out: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(base_out, out)
    return out


@pytest.mark.ray
def test_identical_audio_is_transcribed_once_and_written_for_both(base):
    out, summary = base
    df = _current(out)
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert summary.transcribed == 3 and summary.copied == 1
    assert df.loc["jfk-again", "duplicate_of"] == "jfk" and pd.isna(df.loc["jfk", "duplicate_of"])
    assert df.loc["jfk-again", "text"] == df.loc["jfk", "text"] and JFK_PHRASE in df.loc["jfk", "text"].lower().replace(",", "")
    assert df.loc["jfk-again", "audio_filepath"] == "jfk again.flac"
    assert df.loc["jfk-again", "sha256"] == df.loc["jfk", "sha256"]
    assert (df["config_fingerprint"] == config_fingerprint(*(lambda c: (c.model, c.decoding, c.chunking))(_cfg()))).all()
    errors = pq.read_table(out / "_errors.parquet")
    assert errors.num_rows == 0 and "error_message" in errors.column_names


@pytest.mark.ray
def test_rerun_keeps_what_is_done_and_reuses_identical_audio(base, small, tmp_path):
    out = _copy_of(base[0], tmp_path)
    _, _, rows = small
    shutil.copy(JFK, tmp_path / "third.flac")
    shutil.copy(JFK, tmp_path / "jfk again.flac")  # the manifest's relative paths resolve against its folder
    manifest = _write_manifest(tmp_path / "more.jsonl", rows + [{"audio_filepath": "third.flac", "id": "jfk-3"}])
    summary = run_job(_cfg(), str(manifest), str(out), run_id="rerun")
    assert summary.kept == 4 and summary.transcribed == 0 and summary.copied == 1
    df = _current(out)
    assert len(df) == 5 and (df.drop(index="jfk-3")["run_id"] == "base").all()
    assert df.loc["jfk-3", "run_id"] == "rerun" and df.loc["jfk-3", "duplicate_of"] == "jfk"
    assert summary.output["rows"] == 5 and not summary.output["missing"] and not summary.output["doubled"]


@pytest.mark.ray
def test_changed_config_does_not_reuse_rows(base, small, tmp_path):
    out = _copy_of(base[0], tmp_path)
    summary = run_job(_cfg("decoding.beam_size=1"), str(small[1]), str(out), run_id="beam1")
    assert summary.kept == 0 and summary.transcribed == 3 and summary.copied == 1
    assert summary.taken_out == {"config changed": 4}
    df = _current(out)
    assert len(df) == 4 and (df["run_id"] == "beam1").all()
    assert df["config_fingerprint"].nunique() == 1 and df["config_fingerprint"].iloc[0] != _current(base[0])[
        "config_fingerprint"].iloc[0]
    assert sorted(pd.read_parquet(out / "_replaced" / "beam1")["run_id"]) == ["base"] * 4


@pytest.mark.ray
def test_overwrite_starts_afresh_and_sets_old_parts_aside(base, small, tmp_path):
    out = _copy_of(base[0], tmp_path)
    old_parts = sorted(p.name for p in out.glob("part-*.parquet"))
    summary = run_job(_cfg(), str(small[1]), str(out), run_id="fresh", overwrite=True)
    assert summary.kept == 0 and summary.transcribed == 3 and len(summary.parts_set_aside) == len(old_parts)
    df = _current(out)
    assert len(df) == 4 and (df["run_id"] == "fresh").all()
    assert sorted(p.name for p in (out / "_replaced" / "fresh").glob("part-*.parquet")) == old_parts


@pytest.mark.ray
def test_retry_errors_redoes_only_the_failed_rows(small, tmp_path, ray_local, capsys):
    """A guard (not part of the fingerprint) fails JFK; a plain rerun keeps the error row, --retry-errors redoes
    it and supersedes the error row; the error-rate alarm exits 3."""
    _, _, rows = small
    manifest = _write_manifest(tmp_path / "m.jsonl", rows[:1] + rows[2:3])  # one AN4 clip (3 s) and JFK (11 s)
    out = tmp_path / "out"
    base_args = ["--config", str(ROOT / "configs" / "local.yaml"), "--manifest", str(manifest), "--output", str(out),
                 "--set", "progress=false"]
    code = main(base_args + ["--run-id", "short", "--set", "chunking.max_audio_duration_s=5",
                             "--set", "guards.max_error_rate=0.2"])
    printed = capsys.readouterr().out
    assert code == 3 and "ERROR RATE 50.0% IS ABOVE guards.max_error_rate 20.0%" in printed
    df = _current(out)
    assert df.loc["jfk", "status"] == "error" and df.loc["jfk", "error_type"] == "AudioTooLongError"
    assert "above the limit" in df.loc["jfk", "error_message"] and df.loc["jfk", "attempts"] == 1
    errors = pd.read_parquet(out / "_errors.parquet")
    assert errors["id"].tolist() == ["jfk"] and errors["error_type"].tolist() == ["AudioTooLongError"]

    assert main(base_args + ["--run-id", "plain"]) == 0
    assert "0 transcribed" in capsys.readouterr().out
    assert _current(out).loc["jfk", "status"] == "error"

    assert main(base_args + ["--run-id", "retry", "--retry-errors"]) == 0
    assert "1 transcribed" in capsys.readouterr().out
    df = _current(out)
    assert len(df) == 2 and df.loc["jfk", "status"] == "ok" and df.loc["jfk", "run_id"] == "retry"
    assert df.drop(index="jfk")["run_id"].tolist() == ["short"]
    assert pd.read_parquet(out / "_replaced" / "retry")["status"].tolist() == ["error"]
    assert pq.read_table(out / "_errors.parquet").num_rows == 0


# --- faults inside a run -----------------------------------------------------------------------------------------


def _processes(marker: str) -> list[psutil.Process]:
    """This test process's descendants (its local Ray's workers) whose title holds ``marker``."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _fault_manifest(tmp_path: Path, corpus: Path, n: int) -> tuple[Path, list[str]]:
    lj = [r["path"] for r in corpus_rows() if r["path"].startswith("ljspeech/LJ001")][:n]
    _write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": str(corpus / p), "id": p} for p in lj])
    return tmp_path / "m.jsonl", lj


@pytest.mark.ray
def test_a_killed_transcription_actor_is_restarted_and_its_batch_retried(tmp_path, corpus, ray_local):
    manifest, ids = _fault_manifest(tmp_path, corpus, 10)
    out = tmp_path / "out"
    cfg = _cfg("output.rows_per_file=1", "transcribe.files_per_batch=2", "decode.files_per_batch=2")
    result = {}
    job = threading.Thread(target=lambda: result.update(summary=run_job(cfg, str(manifest), str(out), run_id="k")))
    job.start()
    killed, after = None, set()
    deadline = time.time() + 300
    while job.is_alive() and time.time() < deadline:
        actors = {p.pid for p in _processes("TranscribeStage")}
        if killed is None and actors and list(out.glob("part-*.parquet")):
            killed = min(actors)
            parts_at_kill = len(list(out.glob("part-*.parquet")))
            os.kill(killed, signal.SIGKILL)
        elif killed is not None:
            after |= actors - {killed}
        time.sleep(0.2)
    job.join(timeout=300)
    assert killed is not None and parts_at_kill < len(ids), "the kill did not land mid-run"
    assert not job.is_alive() and "summary" in result
    assert after, "no transcription actor took over after the kill"
    df = _current(out)
    assert sorted(df.index) == sorted(ids) and (df["status"] == "ok").all()
    assert result["summary"].worker_died == 0


class KillerStage(TranscribeStage):
    """A transcription stage whose process dies (SIGKILL, as the OOM killer does) on any batch with id 'poison'."""

    def __call__(self, batch):
        if "poison" in batch.column("id").to_pylist():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


@pytest.mark.ray
def test_a_file_that_kills_its_worker_every_time_becomes_an_error_row(tmp_path, corpus, ray_local):
    manifest, ids = _fault_manifest(tmp_path, corpus, 3)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    shutil.copy(corpus / _an4(1)[0], tmp_path / "poison.flac")
    _write_manifest(manifest, rows[:2] + [{"audio_filepath": "poison.flac", "id": "poison"}] + rows[2:])
    out = tmp_path / "out"
    cfg = _cfg("transcribe.max_task_retries=1", "transcribe.files_per_batch=4")
    summary = run_job(cfg, str(manifest), str(out), run_id="p", transcribe_stage=KillerStage)
    df = _current(out)
    assert sorted(df.index) == sorted(ids + ["poison"])
    assert (df.drop(index="poison")["status"] == "ok").all()  # its batch-mates were redone one by one
    poison = df.loc["poison"]
    assert poison["status"] == "error" and poison["error_type"] == "WorkerDiedError" and poison["attempts"] == 4
    assert "failed on each of 4 attempts" in poison["error_message"] and summary.worker_died == 1


# --- the driver SIGKILLed partway through, then the same command again --------------------------------------------


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.ray
@pytest.mark.slow
def test_driver_sigkill_then_rerun_finishes_exactly_once(tmp_path, corpus):
    picked = [r["path"] for r in corpus_rows() if r["path"].startswith(("ljspeech/LJ001", "an4/"))][:40]
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": str(corpus / p), "id": p} for p in picked])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines.transcribe", "--manifest", str(manifest), "--output", str(out),
           "--set", "progress=false", "--set", "output.rows_per_file=2", "--set", "transcribe.files_per_batch=4",
           "--set", "ray.address=local", "--set", "ray.num_cpus=2", "--set", "ray.node_ip_address=127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not list(out.glob("part-*.parquet")):
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before it could be killed"
        assert list(out.glob("part-*.parquet")), "no part was written within 4 minutes"
    finally:
        family = process_family(first.pid)  # the driver, the local Ray it started (GCS, raylet, workers)
        os.killpg(first.pid, signal.SIGKILL)  # SIGKILL the driver's process group
        first.wait()
        deadline = time.time() + 60
        while _alive(family) and time.time() < deadline:
            time.sleep(0.5)
        leftovers = _alive(family)
        for proc in leftovers:  # only processes this test started
            proc.kill()
    assert len(family) > 3, "expected the driver's own Ray processes"
    assert not leftovers, f"processes of the killed run outlived it: {[(p.pid, p.name()) for p in leftovers]}"

    first_rows = pd.read_parquet(out)
    first_run = first_rows["run_id"].iloc[0]
    assert (first_rows["run_id"] == first_run).all() and 0 < len(first_rows) < len(picked)

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                            start_new_session=True)
    assert second.returncode == 0, second.stderr[-3000:]
    df = _current(out)
    assert sorted(df.index) == sorted(picked)  # every manifest row exactly once
    kept = df[df["run_id"] == first_run]
    assert sorted(kept.index) == sorted(first_rows["id"])  # the first run's rows kept, with their run_id
    assert (df.drop(index=kept.index)["run_id"] != first_run).all()
    assert f"{len(kept)} already done, {len(picked) - len(kept)} transcribed" in second.stdout
    assert (df["status"] == "ok").all()
