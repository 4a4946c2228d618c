"""The job endpoints without Ray (issue 18): the prefix, config and webhook checks, the progress object's writer
(atomic, monotonic), the status mapping and ETA, and the routes against a stand-in for Ray's JobSubmissionClient
(real staging on disk, real manifests of dev-corpus clips)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from fastapi.testclient import TestClient

from pipelines.config import load_serve_config
from pipelines.config.jobs import ServeJobsConfig, with_environment
from pipelines.io.progress import PROGRESS_FILE, Progress, ProgressWriter, read_progress
from pipelines.io.storage import Storage
from serve_app.jobs import policy
from serve_app.jobs.models import status_of
from serve_app.jobs.view import eta_s
from serve_app.schemas import APIError
from tests.conftest import CORPUS

API_KEY = "unit-key-1234567890"
CLIPS = ["jfk/jfk.flac", "ljspeech/LJ001-0002.flac"]


def jobs_cfg(root: Path, **extra) -> ServeJobsConfig:
    return ServeJobsConfig(allowed_prefixes=(f"file://{root}/",), **extra)


def refused(fn, *args, status: int, code: str) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args)
    assert (info.value.status_code, info.value.code) == (status, code), info.value.message
    return info.value


# ------------------------------------------------------------------------------------------------- prefixes
def test_output_and_urls_must_lie_under_the_prefixes(tmp_path):
    root = tmp_path / "allowed"
    (root / "in").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "in" / "escape").symlink_to(outside)
    cfg = jobs_cfg(root)
    assert policy.check_output(f"file://{root}/out/", cfg) == str(root / "out")
    refused(policy.check_output, f"file://{outside}/out", cfg, status=403, code="url_not_allowed")
    refused(policy.check_output, f"file://{root}/in/../../outside/o", cfg, status=403, code="url_not_allowed")
    refused(policy.check_output, f"file://{root}/in/escape/o", cfg, status=403, code="url_not_allowed")  # symlink
    refused(policy.check_output, f"simplecache::file://{root}/o", cfg, status=400, code="invalid_value")
    refused(policy.check_output, str(root / "o"), cfg, status=400, code="invalid_value")  # a bare path
    refused(policy.check_output, "s3://bucket/o/", cfg, status=403, code="url_not_allowed")
    err = refused(policy.check_urls, [f"file://{root}/in/a.flac", f"file://{outside}/b.flac"], cfg, status=403,
                  code="url_not_allowed")
    assert err.param == "urls[1]"
    s3 = ServeJobsConfig(allowed_prefixes=("s3://bucket/in/",))
    assert policy.check_urls(["s3://bucket/in/x/a.flac"], s3)[0].uri == "s3://bucket/in/x/a.flac"
    refused(policy.check_urls, ["s3://bucket/inbox/a.flac"], s3, status=403, code="url_not_allowed")


def test_every_row_of_a_manifest_is_checked_and_counted(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "jfk.flac").symlink_to(CORPUS / CLIPS[0])  # a symlink leading out of the prefix
    (root / "lj.flac").write_bytes((CORPUS / CLIPS[1]).read_bytes())
    good = root / "good.jsonl"
    good.write_text(json.dumps({"audio_filepath": "lj.flac", "id": "lj", "language": "en"}) + "\n")
    cfg, storage = jobs_cfg(root), Storage()
    location, rows = policy.check_manifest(f"file://{good}", cfg, storage)
    assert location == str(good) and [(r.id, r.uri, r.language) for r in rows] == [("lj", str(root / "lj.flac"), "en")]
    bad = root / "bad.jsonl"
    bad.write_text("".join(json.dumps({"audio_filepath": p}) + "\n" for p in ("lj.flac", "jfk.flac")))
    err = refused(policy.check_manifest, f"file://{bad}", cfg, storage, status=403, code="url_not_allowed")
    assert err.param == "manifest line 2"
    refused(policy.check_manifest, f"file://{bad}", jobs_cfg(root, max_manifest_rows=1), storage, status=413,
            code="too_many_rows")
    refused(policy.check_manifest, f"file://{good}", jobs_cfg(root, max_manifest_bytes=10), storage, status=413,
            code="manifest_too_large")
    (root / "broken.jsonl").write_text("{not json\n")
    refused(policy.check_manifest, f"file://{root}/broken.jsonl", cfg, storage, status=400, code="invalid_manifest")


def test_config_overrides_are_allowed_keys_checked_by_the_jobs_loader(tmp_path):
    cfg = jobs_cfg(tmp_path)
    assert policy.check_overrides({"decoding.beam_size": 1, "output.rows_per_file": 1}, cfg) == [
        "decoding.beam_size=1", "output.rows_per_file=1"]
    err = refused(policy.check_overrides, {"storage.endpoint_url": "http://x"}, cfg, status=403,
                  code="config_not_allowed")
    assert err.param == "config.storage.endpoint_url"
    refused(policy.check_overrides, {"model.name": "/etc"}, cfg, status=403, code="config_not_allowed")
    err = refused(policy.check_overrides, {"decoding.beam_size": 0}, cfg, status=400, code="invalid_value")
    assert "decoding.beam_size" in err.message


def test_webhooks_only_under_their_prefixes(tmp_path):
    cfg = jobs_cfg(tmp_path, webhook_prefixes=("http://127.0.0.1:8099/hooks/",))
    assert policy.check_webhook("http://127.0.0.1:8099/hooks/job", cfg) == "http://127.0.0.1:8099/hooks/job"
    for url in ("http://127.0.0.1:8099/hooks2/x", "http://127.0.0.1:8098/hooks/x", "https://127.0.0.1:8099/hooks/x",
                "http://localhost:8099/hooks/x"):
        refused(policy.check_webhook, url, cfg, status=403, code="webhook_not_allowed")
    for url in ("http://u:p@127.0.0.1:8099/hooks/x", "http://127.0.0.1:8099/hooks/x?a=1",
                "http://127.0.0.1:8099/hooks/../x", "file:///etc/passwd", "http://127.0.0.1:notaport/hooks/"):
        refused(policy.check_webhook, url, cfg, status=400, code="invalid_value")
    refused(policy.check_webhook, "http://127.0.0.1:8099/hooks/x", jobs_cfg(tmp_path), status=403,
            code="webhook_not_allowed")


def test_key_hash_and_environment_prefixes(tmp_path):
    digest = policy.key_hash(API_KEY)
    assert len(digest) == 32 and API_KEY not in digest and digest == policy.key_hash(API_KEY)
    assert policy.key_hash(None) == policy.ANONYMOUS != policy.key_hash("other")
    jobs = with_environment(ServeJobsConfig(), {"RAYWHISPER_JOBS_ALLOWED_PREFIXES": f"file://{tmp_path}/, s3://b/in/"})
    assert jobs.allowed_prefixes == (f"file://{tmp_path}/", "s3://b/in/") and jobs.enabled
    assert jobs.staging_prefix == f"file://{tmp_path}/_raywhisper_staging/"
    assert not with_environment(ServeJobsConfig(), {}).enabled
    with pytest.raises(ValueError, match="scheme"):
        with_environment(ServeJobsConfig(), {"RAYWHISPER_JOBS_ALLOWED_PREFIXES": "http://x/"})


# ------------------------------------------------------------------------------------------ progress object
def test_progress_only_goes_up_and_a_final_phase_stays(tmp_path):
    clock = iter(range(100, 200)).__next__
    writer = ProgressWriter(str(tmp_path), "run-1", interval_s=60, clock=lambda: float(clock()))
    writer.update(files_total=5, phase="transcribing")
    writer.update(files_done=3, rows={"ok": 3, "empty": 0, "error": 0}, audio_s_done=30.0)
    state = writer.update(files_done=2, rows={"ok": 2, "empty": 0, "error": 0}, audio_s_done=20.0, phase="starting")
    assert (state.files_done, state.rows["ok"], state.audio_s_done, state.phase) == (3, 3, 30.0, "transcribing")
    assert writer.finish("done", files_done=5).files_done == 5
    assert not writer.started and not (tmp_path / PROGRESS_FILE).exists()  # never started: nothing written
    assert writer.update(phase="transcribing").phase == "done"


def test_progress_object_is_written_atomically_on_its_clock(tmp_path):
    writer = ProgressWriter(str(tmp_path), "run-2", interval_s=0.05)
    writer.update(files_total=50)
    writer.start()
    seen: list[Progress] = []
    stop = threading.Event()

    def read_all():
        while not stop.is_set():
            found = read_progress(str(tmp_path))  # never half an object: parses every time
            if found is not None:
                seen.append(found)

    reader = threading.Thread(target=read_all)
    reader.start()
    for n in range(1, 51):
        writer.update(files_done=n, phase="transcribing")
        time.sleep(0.004)
    final = writer.finish("done", files_done=50)
    stop.set()
    reader.join()
    assert read_progress(str(tmp_path)) == final and final.phase == "done"
    done = [p.files_done for p in seen]
    assert len(set(done)) > 3 and done == sorted(done)  # written as it went, never going down
    assert not list((tmp_path / "_tmp").iterdir())  # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROGRESS_FILE, "_tmp"]


def test_status_mapping_and_eta():
    assert [status_of(s) for s in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")] == [
        "queued", "running", "succeeded", "failed", "stopped"]
    with pytest.raises(ValueError):
        status_of("LOST")
    p = Progress("r", phase="transcribing", files_total=10, files_done=6, files_kept=2, started_at=0,
                 updated_at=120.0, transcribing_since=100.0)
    assert eta_s(p, now=120.0) == pytest.approx(20.0)  # 4 files in 20 s, 4 left
    assert eta_s(p, now=125.0) == pytest.approx(15.0)
    assert eta_s(Progress("r", phase="done", files_total=1, files_done=1), now=1.0) is None


# ------------------------------------------------------------------------------ routes, a stand-in for Ray
@dataclass
class FakeDetails:
    submission_id: str
    status: str
    metadata: dict
    message: Optional[str] = None
    start_time: Optional[int] = None
    end_time: Optional[int] = None
    job_id: Optional[str] = None
    entrypoint: str = ""


@dataclass
class FakeJobClient:
    """The methods of ray.job_submission.JobSubmissionClient the endpoint calls."""

    jobs: dict = field(default_factory=dict)

    def submit_job(self, *, entrypoint, submission_id, metadata, runtime_env):
        self.jobs[submission_id] = FakeDetails(submission_id, "PENDING", metadata, entrypoint=entrypoint,
                                               start_time=int(time.time() * 1000))
        return submission_id

    def get_job_info(self, job_id):
        if job_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")
        return self.jobs[job_id]

    def list_jobs(self):
        return list(self.jobs.values())

    def stop_job(self, job_id):
        self.jobs[job_id].status = "STOPPED"
        return True

    def get_job_logs(self, job_id):
        return "starting\nerror: output s3://user:secret@host/x is locked\n"


@pytest.fixture()
def api(tmp_path):
    from serve_app.app import create_app
    from serve_app.jobs.cluster import RayJobs

    root = tmp_path / "allowed"
    root.mkdir()
    cfg = load_serve_config(None, [f"jobs.allowed_prefixes=['file://{root}/']", "jobs.max_running_jobs_per_key=2"])
    fake = FakeJobClient()
    app = create_app(cfg, None, api_key=API_KEY, jobs=RayJobs(cfg.jobs, lambda: fake))
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client, fake, root


def test_a_urls_job_is_staged_and_submitted(api):
    client, fake, root = api
    for clip in CLIPS:
        (root / Path(clip).name).symlink_to(CORPUS / clip)
    allowed_corpus = [f"file://{root}/{Path(c).name}" for c in CLIPS]
    # the symlinks lead out of the prefix: refused; real copies are accepted
    r = client.post("/v1/jobs", json={"urls": allowed_corpus, "output": f"file://{root}/out/"})
    assert r.status_code == 403 and r.json()["error"]["param"] == "urls[0]", r.text
    for clip in CLIPS:
        (root / Path(clip).name).unlink()
        (root / Path(clip).name).write_bytes((CORPUS / clip).read_bytes())
    r = client.post("/v1/jobs", json={"urls": allowed_corpus, "output": f"file://{root}/out/",
                                      "config": {"decoding.beam_size": 1}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("rw-") and r.headers["location"] == f"/v1/jobs/{job['id']}"
    submitted = fake.jobs[job["id"]]
    assert API_KEY not in json.dumps(submitted.metadata) and submitted.metadata["owner"] == policy.key_hash(API_KEY)
    assert f"--run-id {job['id']}" in submitted.entrypoint and "--set decoding.beam_size=1" in submitted.entrypoint
    staged = root / "_raywhisper_staging" / job["id"] / "manifest.jsonl"
    assert [json.loads(line)["id"] for line in staged.read_text().splitlines()] == allowed_corpus
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    listed = client.get("/v1/jobs").json()
    assert listed["object"] == "list" and [j["id"] for j in listed["data"]] == [job["id"]]
    # the same output while the first job is queued: 409; a second job elsewhere is fine, a third is one too many
    assert client.post("/v1/jobs", json={"urls": allowed_corpus[:1], "output": f"file://{root}/out/"}).status_code == 409
    assert client.post("/v1/jobs", json={"urls": allowed_corpus[:1], "output": f"file://{root}/o2/"}).status_code == 202
    r = client.post("/v1/jobs", json={"urls": allowed_corpus[:1], "output": f"file://{root}/o3/"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
    page = client.get("/v1/jobs", params={"limit": 1}).json()
    assert page["has_more"] and client.get("/v1/jobs", params={"after": page["last_id"]}).json()["data"]
    stopped = client.delete(f"/v1/jobs/{job['id']}").json()
    assert stopped["status"] == "stopped"


def test_refusals_have_openai_error_bodies(api):
    client, fake, root = api
    out = f"file://{root}/out/"
    cases = [
        ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "invalid_body"),
        ({"json": {"output": out}}, 400, "invalid_value"),  # neither manifest nor urls
        ({"json": {"urls": [f"file://{root}/a.flac"], "output": out, "colour": 1}}, 400, "unknown_parameter"),
        ({"json": {"manifest": "file:///etc/hosts", "output": out}}, 403, "url_not_allowed"),
        ({"json": {"urls": [f"file://{root}/a.flac"], "output": "file:///tmp/x"}}, 403, "url_not_allowed"),
        ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ]
    for kwargs, status, code in cases:
        r = client.post("/v1/jobs", **kwargs)
        assert r.status_code == status and r.json()["error"]["code"] == code, (kwargs, r.text)
    assert client.get("/v1/jobs/rw-missing").status_code == 404
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert not fake.jobs


def test_another_callers_job_is_not_found(tmp_path):
    from serve_app.jobs.cluster import RayJobs

    fake = FakeJobClient()
    fake.submit_job(entrypoint="x", submission_id="rw-1", metadata={"kind": "raywhisper", "owner": "someone"},
                    runtime_env={})
    fake.submit_job(entrypoint="x", submission_id="other", metadata={}, runtime_env={})  # not ours at all
    jobs = RayJobs(jobs_cfg(tmp_path), lambda: fake)
    refused(jobs.get, "rw-1", policy.key_hash(API_KEY), status=404, code="job_not_found")
    refused(jobs.get, "other", "someone", status=404, code="job_not_found")
    assert [r.id for r in jobs.list("someone")] == ["rw-1"] and not jobs.list(policy.key_hash(API_KEY))


def test_jobs_are_off_without_prefixes():
    from serve_app.app import create_app

    client = TestClient(create_app(load_serve_config(None, []), None))
    for method, path in (("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/x"), ("delete", "/v1/jobs/x")):
        r = getattr(client, method)(path)
        assert r.status_code == 403, (method, path, r.text)
        assert "RAYWHISPER_JOBS_ALLOWED_PREFIXES" in r.json()["error"]["message"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/transcripts"} <= set(paths)
    assert {"application/json", "multipart/form-data"} <= set(paths["/v1/jobs"]["post"]["requestBody"]["content"])


def test_a_failed_jobs_error_is_scrubbed(api):
    client, fake, root = api
    fake.submit_job(entrypoint="x", submission_id="rw-f", runtime_env={},
                    metadata={"kind": "raywhisper", "owner": policy.key_hash(API_KEY), "output": str(root / "o"),
                              "created_at": "1", "files": "1", "input": "urls"})
    fake.jobs["rw-f"].status = "FAILED"
    fake.jobs["rw-f"].message = "Job entrypoint command failed with exit code 2, last available logs: ..."
    error = client.get("/v1/jobs/rw-f").json()["error"]
    assert error["message"].startswith("output s3://***@host/x is locked") and "exit code 2" in error["message"]
    assert "secret" not in json.dumps(error)
    assert error["log_tail"].splitlines()[0] == "starting"
