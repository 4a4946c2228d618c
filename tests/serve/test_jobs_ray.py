"""Asynchronous jobs over HTTP on a real cluster (issue 18): a local ``ray start --head`` on loopback (its own ports,
temp dir and auth token: :class:`tests.job.test_cluster.LocalRayCluster`, the worktree on PYTHONPATH), the Serve
application of ``configs/serve.yaml`` deployed on it by a separate driver, and jobs followed over HTTP.

- a manifest of dev-corpus clips runs to ``succeeded`` with progress that only goes up; its webhook reaches a
  listener on 127.0.0.1; its transcripts come back as JSON (paginated) and SRT;
- a longer ``urls`` job: a second job is refused (429), the Serve application is deleted and deployed again while
  the job runs and the job's status is still there, the job is stopped (DELETE: its driver saves and says
  "stopped" to its webhook), its folder is given the lock a SIGKILLed driver leaves, it is submitted again, and it
  ends with every row exactly once (the rows the stopped run wrote are kept);
- refusals: outside the allowed prefixes (403), a malformed body (400).

The test process never joins the cluster: Serve is driven by short ``python`` subprocesses in the cluster's
environment, the jobs through the endpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import srt

from pipelines.io.lock_store import LockHolder
from tests.conftest import CORPUS, JFK_PHRASE, ROOT, corpus_rows
from tests.job.test_cluster import LocalRayCluster, _free_port, _words

pytestmark = pytest.mark.ray

API_KEY = "jobs-test-key-0123456789"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SHORT = ["jfk/jfk.flac", "ljspeech/LJ001-0002.flac", "ljspeech/LJ001-0003.mp3", "librispeech/2412-153948-0000.flac"]
#: Enough single LJ Speech clips (about 6.5 s each) for a job that can be stopped half way on this machine.
LONG_COUNT = 50

DEPLOY = """
import json, sys
import ray
from ray import serve
from serve_app.app import build_app
ray.init(address=sys.argv[1], log_to_driver=False)
if sys.argv[2] == "restart":
    serve.delete("raywhisper")
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[3])})
serve.run(build_app(json.loads(sys.argv[4])), name="raywhisper", route_prefix="/", blocking=False)
"""


class Hooks(BaseHTTPRequestHandler):
    """Records the JSON bodies POSTed to it."""

    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Hooks.received.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Endpoint:
    """The cluster, the Serve application on it and the folder jobs may use."""

    def __init__(self, root: Path):
        self.root = root
        self.cluster = LocalRayCluster(num_cpus=4, num_gpus=0)
        self.cluster.env["PYTHONPATH"] = str(ROOT)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.hooks = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
        self.hook_prefix = f"http://127.0.0.1:{self.hooks.server_address[1]}/hooks/"
        self.args = {
            "config": None,
            "overrides": ["deployment.num_cpus=0", "http.num_cpus=0", f"http.api_key={API_KEY}"],
            "jobs": {"allowed_prefixes": [f"file://{root}/"], "dashboard_address": self.cluster.address,
                     "job_config": str(ROOT / "configs" / "local.yaml"), "webhook_prefixes": [self.hook_prefix],
                     "max_running_jobs_per_key": 1},
        }

    def deploy(self, mode: str = "start") -> None:
        gcs = f"127.0.0.1:{self.cluster.ports['port']}"
        res = subprocess.run([sys.executable, "-c", DEPLOY, gcs, mode, str(self.port), json.dumps(self.args)],
                             cwd=ROOT, env=self.cluster.env, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-4000:]
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{self.base}/v1/jobs", headers=HEADERS, timeout=10).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the job endpoints never answered"
            time.sleep(0.5)

    def post(self, **body) -> requests.Response:
        return requests.post(f"{self.base}/v1/jobs", json=body, headers=HEADERS, timeout=120)

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(f"{self.base}{path}", params=params, headers=HEADERS, timeout=60)

    def follow(self, job_id: str, until, timeout_s: float = 240) -> list[dict]:
        """GET the job every 0.5 s until ``until(job)``; returns every answer."""
        seen, deadline = [], time.monotonic() + timeout_s
        while True:
            job = self.get(f"/v1/jobs/{job_id}").json()
            seen.append(job)
            if until(job):
                return seen
            assert time.monotonic() < deadline, json.dumps(job)[-3000:]
            time.sleep(0.5)


@pytest.fixture(scope="module")
def endpoint(corpus):
    root = Path(tempfile.mkdtemp(prefix="rwj", dir="/tmp"))
    ep = Endpoint(root)
    threading.Thread(target=ep.hooks.serve_forever, daemon=True).start()
    try:
        ep.cluster.start()
        ep.deploy()
        yield ep
    finally:
        ep.hooks.shutdown()
        ep.cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not list(ep.cluster._own_processes()), "processes of the test cluster are still running"


def copy_clips(root: Path, clips: list[str]) -> list[str]:
    """Copy ``clips`` under ``root/audio`` (a copy: a symlink out of the prefix would be refused); returns the
    file names."""
    (root / "audio").mkdir(exist_ok=True)
    for clip in clips:
        shutil.copyfile(CORPUS / clip, root / "audio" / Path(clip).name)
    return [Path(c).name for c in clips]


def files_done(answers: list[dict]) -> list[int]:
    return [a["progress"]["files_done"] for a in answers if a.get("progress")]


def test_refusals(endpoint):
    out = f"file://{endpoint.root}/refused/"
    r = endpoint.post(manifest=f"file://{CORPUS}/manifest.jsonl", output=out)
    assert r.status_code == 403 and r.json()["error"]["code"] == "url_not_allowed", r.text
    r = endpoint.post(urls=[f"file://{endpoint.root}/audio/x.flac"], output="file:///tmp/elsewhere/")
    assert r.status_code == 403 and r.json()["error"]["param"] == "output", r.text
    r = requests.post(f"{endpoint.base}/v1/jobs", data=b"{oops", timeout=30,
                      headers={**HEADERS, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_body", r.text
    assert requests.get(f"{endpoint.base}/v1/jobs", timeout=30).status_code == 401


def test_a_manifest_job_runs_to_success_with_progress_and_transcripts(endpoint):
    names = copy_clips(endpoint.root, SHORT)
    manifest = endpoint.root / "short.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": f"audio/{n}", "id": n}) + "\n" for n in names))
    r = endpoint.post(manifest=f"file://{manifest}", output=f"file://{endpoint.root}/out-short/",
                      config={"output.progress_interval_s": 1}, webhook_url=endpoint.hook_prefix + "short")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    answers = endpoint.follow(job_id, lambda j: j["status"] in ("succeeded", "failed", "stopped"))
    job = answers[-1]
    assert job["status"] == "succeeded", json.dumps(job)[-3000:]
    assert {a["status"] for a in answers} <= {"queued", "running", "succeeded"}
    done = files_done(answers)
    assert done == sorted(done) and done[-1] == len(names)
    assert job["progress"]["rows"] == {"ok": len(names), "empty": 0, "error": 0}
    assert job["summary"]["status"] == "done" and job["summary"]["run_id"] == job_id
    page1 = endpoint.get(f"/v1/jobs/{job_id}/transcripts", limit=3).json()
    page2 = endpoint.get(f"/v1/jobs/{job_id}/transcripts", limit=3, after=page1["last_id"]).json()
    assert page1["has_more"] and not page2["has_more"]
    rows = page1["data"] + page2["data"]
    assert sorted(r["id"] for r in rows) == sorted(names) and all(r["status"] == "ok" for r in rows)
    subtitles = endpoint.get(f"/v1/jobs/{job_id}/transcripts", id="jfk.flac", response_format="srt")
    assert subtitles.status_code == 200 and subtitles.headers["content-type"].startswith("application/x-subrip")
    cues = list(srt.parse(subtitles.text))
    assert JFK_PHRASE in _words(" ".join(c.content for c in cues)) and cues[-1].end.total_seconds() <= 11.1
    deadline = time.monotonic() + 30
    while not any(path == "/hooks/short" for path, _ in Hooks.received):
        assert time.monotonic() < deadline, Hooks.received
        time.sleep(0.2)
    event = next(body for path, body in Hooks.received if path == "/hooks/short")
    assert event["id"] == job_id and event["status"] == "succeeded" and event["summary"]["ok"] == len(names)
    listed = endpoint.get("/v1/jobs").json()
    assert job_id in [j["id"] for j in listed["data"]]


def test_stop_restart_and_resume_give_every_row_once(endpoint):
    import pandas as pd

    clips = [r["path"] for r in corpus_rows() if r["path"].startswith("ljspeech/") and "concat" not in r["path"]]
    names = copy_clips(endpoint.root, clips[:LONG_COUNT])
    urls = [f"file://{endpoint.root}/audio/{n}" for n in names]
    out = endpoint.root / "out-long"
    body = {"urls": urls, "output": f"file://{out}/",
            "config": {"output.rows_per_file": 1, "transcribe.files_per_batch": 1, "decode.files_per_batch": 1,
                       "output.progress_interval_s": 1}, "webhook_url": endpoint.hook_prefix + "long"}
    r = endpoint.post(**body)
    assert r.status_code == 202, r.text
    first = r.json()["id"]
    running = endpoint.follow(first, lambda j: j["status"] == "running")
    r = endpoint.post(urls=urls[:1], output=f"file://{endpoint.root}/out-other/")
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs", r.text
    endpoint.follow(first, lambda j: (j.get("progress") or {}).get("files_done", 0) >= 2)

    endpoint.deploy("restart")  # the Serve application deleted and deployed again, mid-job
    after_restart = endpoint.follow(first, lambda j: True)[-1]
    assert after_restart["status"] == "running", json.dumps(after_restart)[-2000:]
    assert after_restart["progress"]["files_done"] >= 2

    stopping = endpoint.get(f"/v1/jobs/{first}")
    assert stopping.status_code == 200
    r = requests.delete(f"{endpoint.base}/v1/jobs/{first}", headers=HEADERS, timeout=60)
    assert r.status_code == 200, r.text
    stopped = endpoint.follow(first, lambda j: j["status"] == "stopped", timeout_s=60)
    done = files_done(running + stopped)
    assert done == sorted(done)
    kept = len(pd.read_parquet(out)["id"]) if any(out.glob("part-*.parquet")) else 0
    assert 0 < kept < len(names), kept  # stopped half way; what it wrote stays
    assert json.loads((out / "_runs" / f"{first}.json").read_text())["status"] == "stopped"  # SIGTERM: saved
    # a driver killed outright (SIGKILL after RAY_JOB_STOP_WAIT_TIME_S) leaves its lock: one of a gone process of
    # this host, as the stopped driver was (drivers run on the head), must not keep the resubmitted job out
    lock_left = (out / "_lock.json").exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = dataclasses.replace(LockHolder.here(first, time.time() - 5, time.time(), "0" * 32), pid=dead.pid)
    (out / "_lock.json").write_bytes(holder.to_json())

    r = endpoint.post(**body)  # the same request again: resumes
    assert r.status_code == 202, r.text
    second = r.json()["id"]
    answers = endpoint.follow(second, lambda j: j["status"] in ("succeeded", "failed", "stopped"))
    job = answers[-1]
    assert job["status"] == "succeeded", json.dumps(job)[-3000:]
    done = files_done(answers)
    assert done == sorted(done) and done[-1] == len(names)
    assert job["progress"]["files_kept"] == job["summary"]["kept"] == kept
    assert job["summary"]["transcribed"] == len(names) - kept
    df = pd.read_parquet(out)
    assert sorted(df["id"]) == sorted(urls) and df["id"].is_unique, (lock_left, df["id"].value_counts().head())
    assert not (out / "_lock.json").exists()  # taken over, then released at the end
    events = {body["id"]: body["status"] for path, body in Hooks.received if path == "/hooks/long"}
    assert events == {first: "stopped", second: "succeeded"}, events
    rows, after = [], None
    while True:
        page = endpoint.get(f"/v1/jobs/{second}/transcripts", limit=7, **({"after": after} if after else {})).json()
        rows += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert sorted(r["id"] for r in rows) == sorted(urls)
    assert endpoint.get(f"/v1/jobs/{first}").json()["status"] == "stopped"


def test_the_docs_python_example_runs_as_written(endpoint):
    """docs/jobs.md's httpx example, run with only its address, folder and API key swapped for the test's."""
    import re

    text = (ROOT / "docs" / "jobs.md").read_text()
    code = re.search(r"## Python \(httpx\)\n\n```python\n(.*?)```", text, re.S).group(1)
    folder = endpoint.root / "doc"
    (folder / "in").mkdir(parents=True)
    names = copy_clips(folder / "in", SHORT[:2])
    (folder / "in" / "manifest.jsonl").write_text(
        "".join(json.dumps({"audio_filepath": f"audio/{n}", "id": n}) + "\n" for n in names))
    swapped = (code.replace("http://127.0.0.1:8000", endpoint.base).replace("/tmp/raywhisper-jobs/", f"{folder}/")
               .replace("timeout=60)", f"timeout=60, headers={HEADERS!r})"))
    assert swapped.count(str(folder)) == 2 and endpoint.base in swapped and API_KEY in swapped
    res = subprocess.run([sys.executable, "-c", swapped], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()
    assert last[-2] == "succeeded 2" and last[-1].startswith(f"{len(names)} "), res.stdout[-2000:]
