"""Output integrity (issue 13, findings 2, 3 and 11): ids unique after generation, one writer per output folder
(the lock ``DIR/_lock.json`` locally, on moto's S3 and on a store without conditional writes), part names no two
writers share, take-out refusing a part that changed, the end-of-run check (exit 4), parts flushed on time, and
real job processes: a second run on a folder exits 2 naming the first, and a run SIGKILLed after the flush
interval keeps the rows it finished."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from pipelines.config import config_fingerprint, load_config, row_fingerprint
from pipelines.core.errors import ManifestError, OutputLockedError, StorageError
from pipelines.core.rows import rows_to_table
from pipelines.io.lock import LOCK_FILE, OutputLock
from pipelines.io.manifest import read_manifest
from pipelines.io.output import PART_RE, OutputFolder, PartWriter
from pipelines.io.resume import load_index
from tests.helpers import process_family
from tests.conftest import ROOT, corpus_rows

CONFIG = str(ROOT / "configs" / "local.yaml")


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(ids, **extra) -> list[dict]:
    return [{"id": i, "audio_filepath": f"{i}.wav", "status": "ok", "sha256": f"sha-{i}", "segments": [], **extra}
            for i in ids]


# --- finding 2: ids unique after generation ---------------------------------------------------------------------


def test_a_generated_id_equal_to_an_explicit_one_stops_the_job_naming_both_lines(tmp_path):
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"path": "x.wav", "id": "a.wav#3"}, {"path": "a.wav"},
                                                      {"path": "a.wav"}])
    with pytest.raises(ManifestError, match=r"line 3: the id generated for this row \('a\.wav#3'.*"
                                            r"already the id of line 1 \(given there\)"):
        read_manifest(str(manifest))


def test_generated_ids_that_collide_with_each_other_stop_the_job(tmp_path):
    # a file literally named "a.wav#3" (line 1) and a.wav listed twice: line 3's generated id is line 1's
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"path": "a.wav#3"}, {"path": "a.wav"}, {"path": "a.wav"}])
    with pytest.raises(ManifestError, match=r"line 3: .*'a\.wav#3'.*already the id of line 1 \(generated there\)"):
        read_manifest(str(manifest))
    ok = _write_manifest(tmp_path / "ok.jsonl",
                         [{"path": "a.wav"}, {"path": "b.wav", "id": "a.wav"}, {"path": "a.wav"}])
    assert [r.id for r in read_manifest(str(ok))] == ["a.wav#1", "a.wav", "a.wav#3"]  # unique: no error


# --- finding 3: the lock, without Ray ---------------------------------------------------------------------------


class Clock:
    """A wall clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _lock_json(folder) -> dict:
    return json.loads((Path(folder) / LOCK_FILE).read_text())


def test_lock_is_taken_once_and_a_second_run_is_told_who_holds_it(tmp_path):
    out = tmp_path / "out"
    clock = Clock()
    first = OutputLock(str(out), "run-a", clock=clock)
    assert first.acquire() is None
    held = _lock_json(out)
    assert held["run_id"] == "run-a" and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert held["started_at"] and held["heartbeat_at"] and held["token"] == first.token
    clock.t += 40  # a fresh lock (40 s < lock_stale_s), of a live process
    with pytest.raises(OutputLockedError) as refused:
        OutputLock(str(out), "run-b", clock=clock).acquire()
    message = str(refused.value)
    assert "locked by run 'run-a'" in message and f"pid {os.getpid()}" in message
    assert f"host {socket.gethostname()}" in message and "last heartbeat 40 s ago" in message
    assert "--break-lock" in message
    assert _lock_json(out)["token"] == first.token  # untouched
    first.check()  # still the holder


def test_heartbeat_refreshes_the_lock_and_a_run_that_cannot_refresh_stops(tmp_path):
    out = tmp_path / "out"
    clock = Clock()
    lock = OutputLock(str(out), "run-a", stale_s=300, clock=clock)
    lock.acquire()
    clock.t += 100
    lock.refresh()
    assert _lock_json(out)["heartbeat_at_s"] == clock.t
    clock.t += 250  # 250 s since the last refresh: not stale yet
    lock.check()
    clock.t += 60  # 310 s without a refresh: another run may have taken over
    with pytest.raises(OutputLockedError, match="could not refresh its lock for 310 s"):
        lock.check()
    live = OutputLock(str(out), "run-b", heartbeat_s=0.05)  # the real clock and the real heartbeat thread
    live.acquire(break_lock=True)
    live.start_heartbeat()
    try:
        first_beat = _lock_json(out)["heartbeat_at_s"]
        deadline = time.time() + 10
        while _lock_json(out)["heartbeat_at_s"] == first_beat and time.time() < deadline:
            time.sleep(0.05)
        assert _lock_json(out)["heartbeat_at_s"] > first_beat
    finally:
        live.release()
    assert not (out / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_and_its_old_holder_stops_writing(tmp_path, caplog):
    out = tmp_path / "out"
    clock = Clock()
    old = OutputLock(str(out), "run-old", stale_s=300, clock=clock)
    old.acquire()
    clock.t += 301  # the old run's heartbeat stopped (a hung process, a lost host)
    new = OutputLock(str(out), "run-new", stale_s=300, clock=clock)
    with caplog.at_level(logging.WARNING, logger="raywhisper"):
        replaced = new.acquire()
    assert replaced is not None and replaced.run_id == "run-old"
    assert "took over the lock of run 'run-old'" in caplog.text and "stale: no heartbeat for 301 s" in caplog.text
    old.refresh()  # the old run wakes up: its lock is someone else's now
    with pytest.raises(OutputLockedError, match="lost its lock.*held by run 'run-new'"):
        old.check()
    old.release()  # leaves the new holder's lock alone
    assert _lock_json(out)["run_id"] == "run-new"
    new.release()
    assert not (out / LOCK_FILE).exists()
    again = OutputLock(str(out), "run-3", clock=clock)
    assert again.acquire() is None  # released: free
    again.release()


def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = OutputLock(str(out), "killed-run")
    ghost.acquire()
    record = _lock_json(out) | {"pid": dead.pid}  # as written by the killed process, a moment ago
    (out / LOCK_FILE).write_text(json.dumps(record))
    assert OutputLock(str(out), "rerun").acquire().pid == dead.pid
    (out / LOCK_FILE).write_text(json.dumps(record | {"host": "another-host"}))  # a pid there cannot be checked
    with pytest.raises(OutputLockedError, match="locked by run 'killed-run' \\(host another-host"):
        OutputLock(str(out), "rerun-2").acquire()


def test_break_lock_replaces_a_fresh_lock(tmp_path):
    out = tmp_path / "out"
    holder = OutputLock(str(out), "run-a")
    holder.acquire()
    breaker = OutputLock(str(out), "run-b")
    assert breaker.acquire(break_lock=True).run_id == "run-a"
    assert _lock_json(out)["run_id"] == "run-b"
    holder.refresh()
    with pytest.raises(OutputLockedError, match="lost its lock"):
        holder.check()
    breaker.release()


def test_lock_without_conditional_create_is_best_effort_but_still_exclusive():
    uri = f"memory://lock-{os.getpid()}-{time.time_ns()}"
    first = OutputLock(uri, "run-a")
    first.acquire()
    assert first.mode == "best-effort"
    with pytest.raises(OutputLockedError, match="locked by run 'run-a'"):
        OutputLock(uri, "run-b").acquire()
    first.release()
    OutputLock(uri, "run-c").acquire()


@pytest.fixture(scope="module")
def moto_s3():
    """moto's S3 server on 127.0.0.1 (a free port) with an empty bucket ``locks``; s3fs options to reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                     aws_secret_access_key="s").create_bucket(Bucket="locks")
        yield {"endpoint_url": endpoint, "key": "k", "secret": "s", "use_listings_cache": False,
               "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        server.stop()


@pytest.mark.s3
def test_lock_on_s3_uses_conditional_writes(moto_s3):
    uri = "s3://locks/out"
    clock = Clock()
    first = OutputLock(uri, "run-a", moto_s3, stale_s=300, clock=clock)
    assert first.mode == "s3" and first.acquire() is None
    with pytest.raises(OutputLockedError, match="locked by run 'run-a'"):
        OutputLock(uri, "run-b", moto_s3, clock=clock).acquire()  # If-None-Match: * refused
    clock.t += 100
    first.refresh()  # If-Match: the ETag it wrote
    first.check()
    assert json.loads(first.fs.cat_file("locks/out/_lock.json"))["heartbeat_at_s"] == clock.t
    clock.t += 301
    taker = OutputLock(uri, "run-c", moto_s3, stale_s=300, clock=clock)
    assert taker.acquire().run_id == "run-a"  # stale: replaced with If-Match on the stale version
    first.refresh()  # its If-Match fails: lost
    with pytest.raises(OutputLockedError, match="lost its lock.*run 'run-c'"):
        first.check()
    first.release()
    breaker = OutputLock(uri, "run-d", moto_s3, clock=clock)
    assert breaker.acquire(break_lock=True).run_id == "run-c"
    breaker.release()
    assert not first.fs.exists("locks/out/_lock.json")


# --- finding 3: parts and take-out ------------------------------------------------------------------------------


def test_two_writers_with_one_run_id_never_pick_the_same_part_name(tmp_path):
    one = PartWriter(str(tmp_path), "same", rows_per_file=2)
    two = PartWriter(str(tmp_path), "same", rows_per_file=2)  # both see no part yet: both start at seq 0
    written = one.write(rows_to_table(_rows("ab"))) + two.write(rows_to_table(_rows("cd")))
    assert len(set(written)) == 2
    assert sorted(pd.read_parquet(tmp_path)["id"]) == list("abcd")  # nothing overwritten
    for name in (Path(p).name for p in written):
        assert PART_RE.match(name)["run_id"] == "same"
    legacy = tmp_path / "part-same-00007.parquet"  # a part named by an earlier version is still a part
    (tmp_path / Path(written[0]).name).rename(legacy)
    assert str(legacy) in OutputFolder(str(tmp_path)).parts()
    later = PartWriter(str(tmp_path), "same", rows_per_file=1)
    assert Path(later.write(rows_to_table(_rows("e")))[0]).name.startswith("part-same-00008-")


def test_take_out_refuses_a_part_that_changed_since_it_was_indexed(tmp_path):
    writer = PartWriter(str(tmp_path), "r1", rows_per_file=3)
    writer.write(rows_to_table(_rows("abc")))
    folder = OutputFolder(str(tmp_path))
    done, _ = load_index(folder)
    part = done[0].part
    folder.write_atomic(part, rows_to_table(_rows("xbc")))  # another writer rewrote the part meanwhile
    with pytest.raises(StorageError, match=r"changed since this run indexed it \(row 0 is 'x', expected 'a'\)"):
        folder.take_out({part: [0]}, "r2", expect={part: {0: "a"}})
    assert sorted(pd.read_parquet(tmp_path)["id"]) == list("bcx")  # left whole
    assert folder.take_out({part: [0]}, "r2", expect={part: {0: "x"}}) == 1


# --- finding 3: the end-of-run check, without Ray ---------------------------------------------------------------


@pytest.fixture
def ray_free_job(monkeypatch, tmp_path):
    """A manifest of ids a, b and an output folder holding a's row, with the job's Ray steps replaced: no Ray
    starts, hashes are given, nothing is transcribed (rows sent to transcription vanish)."""
    import pipelines.job.run as job

    cfg = load_config(CONFIG)
    fingerprint = row_fingerprint(config_fingerprint(cfg.model, cfg.decoding, cfg.chunking), None, None)
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"path": "a.wav", "id": "a"}, {"path": "b.wav", "id": "b"}])
    out = tmp_path / "out"
    monkeypatch.setattr(job, "init_ray", lambda cfg, quiet=None: None)
    monkeypatch.setattr(job, "check_gpu", lambda cfg: None)
    monkeypatch.setattr(job, "hash_rows", lambda cfg, rows, storage=None: ({"a": "sha-a", "b": "sha-b"}, set()))
    monkeypatch.setattr(job, "transcribe_rows", lambda *args, **kwargs: 0)
    now = dt.datetime.now(dt.timezone.utc)

    def row(rid, minutes=0):
        return {"id": rid, "audio_filepath": f"{rid}.wav", "status": "ok", "sha256": f"sha-{rid}", "segments": [],
                "config_fingerprint": fingerprint, "created_at": now - dt.timedelta(minutes=minutes)}

    def args(run_id):
        return ["--config", CONFIG, "--manifest", str(manifest), "--output", str(out), "--run-id", run_id,
                "--set", "progress=false"]
    return out, row, args


def test_a_missing_row_at_the_end_exits_4_naming_it(ray_free_job, capsys):
    from pipelines.transcribe import EXIT_NOT_EXACTLY_ONCE, main

    out, row, args = ray_free_job
    writer = PartWriter(str(out), "old")
    writer.write(rows_to_table([row("a")]))
    writer.close()
    code = main(args("lost"))  # b is sent to transcription and never comes back
    err = capsys.readouterr().err
    assert code == EXIT_NOT_EXACTLY_ONCE == 4
    assert "1 ids missing ['b'], 0 ids doubled []" in err
    assert json.loads((out / "_runs" / "lost.json").read_text())["status"] == "not exactly once"
    assert not (out / LOCK_FILE).exists()  # released on the way out


def test_a_doubled_row_at_the_end_exits_4_naming_it(ray_free_job, monkeypatch, capsys):
    from pipelines.transcribe import main

    out, row, args = ray_free_job
    for rows in ([row("a", 5), row("b")], [row("a")]):  # two current rows for a, in two parts
        writer = PartWriter(str(out), "old")
        writer.write(rows_to_table(rows))
        writer.close()
    monkeypatch.setattr(OutputFolder, "take_out", lambda self, *a, **k: 0)  # a take-out that did not happen
    assert main(args("doubled")) == 4
    assert "0 ids missing [], 1 ids doubled ['a']" in capsys.readouterr().err


# --- finding 11: parts flush on time ----------------------------------------------------------------------------


def test_rows_in_hand_are_written_once_the_oldest_has_waited_the_interval(tmp_path):
    t = [0.0]
    writer = PartWriter(str(tmp_path), "r", rows_per_file=1000, flush_interval_s=60, clock=lambda: t[0])
    assert writer.write(rows_to_table(_rows("ab"))) == []
    t[0] = 30
    assert writer.write(rows_to_table(_rows("c"))) == [] and writer.flush_due() == []
    t[0] = 60  # a and b have waited 60 s: the timer (no row arriving) writes all three
    assert len(writer.flush_due()) == 1 and sorted(pd.read_parquet(tmp_path)["id"]) == list("abc")
    t[0] = 70
    assert writer.write(rows_to_table(_rows("d"))) == []
    t[0] = 131
    assert len(writer.write(rows_to_table(_rows("e")))) == 1  # a write() checks the interval too
    assert sorted(pd.read_parquet(tmp_path)["id"]) == list("abcde") and writer.close() == []


def test_the_rest_of_a_full_part_keeps_its_own_age(tmp_path):
    t = [0.0]
    writer = PartWriter(str(tmp_path), "r", rows_per_file=3, flush_interval_s=60, clock=lambda: t[0])
    writer.write(rows_to_table(_rows("ab")))
    t[0] = 50
    assert len(writer.write(rows_to_table(_rows("cd")))) == 1  # a full part (a, b, c); d arrived at 50 s
    t[0] = 100
    assert writer.flush_due() == []
    t[0] = 110
    assert len(writer.flush_due()) == 1 and sorted(pd.read_parquet(tmp_path)["id"]) == list("abcd")


def test_the_timer_writes_rows_while_none_arrive(tmp_path):
    writer = PartWriter(str(tmp_path), "r", rows_per_file=1000, flush_interval_s=0.3)
    writer.start_timer()
    try:
        assert writer.write(rows_to_table(_rows("a"))) == []
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pd.read_parquet(tmp_path)["id"].tolist() == ["a"]
    finally:
        assert writer.close() == []


def test_a_writer_that_lost_the_lock_writes_nothing(tmp_path):
    lock = OutputLock(str(tmp_path), "r")
    lock.acquire()
    writer = PartWriter(str(tmp_path), "r", rows_per_file=1, before_write=lock.check)
    assert len(writer.write(rows_to_table(_rows("a")))) == 1
    OutputLock(str(tmp_path), "other").acquire(break_lock=True)
    lock.refresh()
    with pytest.raises(OutputLockedError):
        writer.write(rows_to_table(_rows("b")))
    assert pd.read_parquet(tmp_path)["id"].tolist() == ["a"]


# --- real job processes -----------------------------------------------------------------------------------------


def _cmd(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.transcribe", "--config", CONFIG, "--manifest", str(manifest),
            "--output", str(out), "--set", "progress=false", "--set", "ray.address=local", "--set", "ray.num_cpus=2",
            "--set", "ray.node_ip_address=127.0.0.1", *extra]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT),
                                                                          "RAY_USAGE_STATS_ENABLED": "0"}


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a job started with ``start_new_session`` and every process of its session (its local Ray)."""
    family = process_family(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + 60
    while _alive(family) and time.time() < deadline:
        time.sleep(0.5)
    for leftover in _alive(family):  # only processes this test started
        leftover.kill()


def _an4(n: int) -> list[str]:
    return [r["path"] for r in corpus_rows() if r["path"].startswith("an4/")][:n]


@pytest.mark.ray
def test_a_second_run_on_a_folder_in_use_exits_2_naming_the_first(tmp_path, corpus):
    picked = _an4(3)
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": str(corpus / p), "id": p} for p in picked])
    out = tmp_path / "out"
    first = subprocess.Popen(_cmd(manifest, out, "--run-id", "first"), cwd=ROOT, env=_env(), start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / LOCK_FILE).exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (out / LOCK_FILE).exists(), "the first run never took the lock"
        second = subprocess.run(_cmd(manifest, out, "--run-id", "second"), cwd=ROOT, env=_env(), capture_output=True,
                                text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second one tried: the test proved nothing"
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"locked by run 'first' (host {socket.gethostname()}, pid {first.pid}" in second.stderr
        assert "last heartbeat" in second.stderr
        stdout, stderr = first.communicate(timeout=400)
    finally:
        if first.poll() is None:
            _kill_session(first)
    assert first.returncode == 0, stderr[-3000:]
    df = pd.read_parquet(out)
    assert sorted(df["id"]) == sorted(picked) and (df["status"] == "ok").all()  # one row per input
    assert (df["run_id"] == "first").all() and not (out / "_runs" / "second.json").exists()
    assert not (out / LOCK_FILE).exists()


@pytest.mark.ray
def test_a_run_killed_after_the_flush_interval_keeps_the_rows_it_finished(tmp_path, corpus):
    """Parts of up to 1000 rows, flushed after 1 s: the first part appears while the run is still going (the long
    file last in the manifest takes many seconds), then the driver and its Ray are SIGKILLed. The rows it had
    finished are in the folder, complete."""
    picked = _an4(3) + ["gentle/harvard-sentences-list30.mp3", "ljspeech/LJ001-0013_to_0032_concat.flac"]
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": str(corpus / p), "id": p} for p in picked])
    out = tmp_path / "out"
    job = subprocess.Popen(_cmd(manifest, out, "--run-id", "killed", "--set", "output.rows_per_file=1000",
                                "--set", "output.flush_interval_s=1", "--set", "transcribe.files_per_batch=1",
                                "--set", "decode.files_per_batch=1"),
                           cwd=ROOT, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while job.poll() is None and not list(out.glob("part-*.parquet")) and time.time() < deadline:
            time.sleep(0.05)
        alive_at_first_part = job.poll() is None
    finally:
        _kill_session(job)
    assert alive_at_first_part, f"the run ended before a part was written: {job.stderr.read()[-3000:]}"
    df = pd.read_parquet(out)
    print(f"rows kept after the kill: {len(df)} of {len(picked)}: {sorted(df['id'])}")
    assert 1 <= len(df) < len(picked), "the kill did not land mid-run"
    assert df["id"].is_unique and set(df["id"]) <= set(picked)
    assert (df["status"] == "ok").all() and (df["run_id"] == "killed").all()
    assert all(len(segments) > 0 for segments in df["segments"]) and (df["text"].str.len() > 0).all()
    # the killed run's lock stays behind; its process is gone, so the next run takes it over at once
    assert json.loads((out / LOCK_FILE).read_text())["run_id"] == "killed"
    rerun = OutputLock(str(out), "next")
    assert rerun.acquire().run_id == "killed"
    rerun.release()
