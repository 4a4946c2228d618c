"""Object storage end to end against a real S3 API on loopback: moto's server (``ThreadedMotoServer`` on
127.0.0.1, a free port), s3fs, and a fault-injecting TCP proxy in front of it (``tests/flaky_proxy.py``) for
connection resets, an outage mid-run, throttling and an upload cut midway: real network failures, no mocks.

The job runs as the README shows it (``python -m pipelines.transcribe`` in a subprocess, its own local Ray), with
dummy credentials and ``AWS_ENDPOINT_URL`` in that subprocess's environment; in-process tests set them with
``monkeypatch`` (fixture ``aws_env``), so they never reach this session's Ray workers or later tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from pipelines.config import JobConfig, ServeURLInputConfig, StorageConfig, config_fingerprint, load_config
from pipelines.core.errors import ConfigError, ManifestError, SourceReadError, StorageError
from pipelines.core.rows import rows_to_table
from pipelines.io.manifest import read_manifest
from pipelines.io.output import PartWriter
from pipelines.io.storage import resolve_storage
from tests.compare import assert_spans_close, assert_texts_agree
from tests.conftest import CORPUS, JFK, JFK_PHRASE, ROOT
from tests.flaky_proxy import FlakyProxy
from tests.helpers import wait_until_ready

pytestmark = pytest.mark.s3

CLIPS = ("jfk/jfk.flac", "ljspeech/LJ001-0002.flac", "ljspeech/LJ002-0020.wav")
EXTRA = "ljspeech/LJ002-0033.opus"  # uploaded to s3://corpus/more/, listed as ../more/LJ002-0033.opus
SECRET = f"moto-secret-{uuid.uuid4().hex}"  # the dummy secret key: must never appear in output or logs
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
            "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def words_of(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", (text or "").lower()).split())


@dataclass
class S3:
    endpoint: str
    port: int
    client: object  # boto3 S3 client
    env: dict  # the AWS_* variables a process needs to reach it (dummy credentials, region, endpoint)

    @property
    def storage_options(self) -> dict:
        """s3fs options for reading results back in the test (explicit, not from the environment)."""
        return {"endpoint_url": self.endpoint, "key": self.env["AWS_ACCESS_KEY_ID"], "secret": SECRET}

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture(scope="module")
def s3(corpus, tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (stopped after the module), the AWS_* variables to reach it, bucket
    ``corpus`` with four real clips and the manifests, empty bucket ``transcripts``."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")  # no profile of this machine leaks in
    env = {"AWS_ACCESS_KEY_ID": "moto-test-key-id", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_CONFIG_FILE": nowhere, "AWS_SHARED_CREDENTIALS_FILE": nowhere}
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=SECRET)
        for bucket in ("corpus", "transcripts"):
            client.create_bucket(Bucket=bucket)
        for path in CLIPS:
            client.upload_file(str(CORPUS / path), "corpus", f"dev/{path}")
        client.upload_file(str(CORPUS / EXTRA), "corpus", f"more/{Path(EXTRA).name}")
        main = [{"audio_filepath": p, "id": p} for p in CLIPS]
        main.append({"audio_filepath": f"../more/{Path(EXTRA).name}", "id": EXTRA})
        fault = [{"audio_filepath": p, "id": p} for p in CLIPS[1:]]
        fault += [{"audio_filepath": "missing/nothing.flac", "id": "missing"},
                  {"audio_filepath": "s3://no-such-bucket-rw/clip.flac", "id": "no-bucket"}]
        for name, rows in (("main", main), ("fault", fault)):
            client.put_object(Bucket="corpus", Key=f"dev/{name}.jsonl",
                              Body="".join(json.dumps(r) + "\n" for r in rows).encode())
        yield S3(endpoint, port, client, env)
    finally:
        server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch):
    """The moto credentials and endpoint in this process's environment for one test (restored after)."""
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3


def storage_via(endpoint: str, **retry):
    """A Storage on ``endpoint`` with quick retries (``retry`` overrides StorageRetryConfig fields)."""
    settings = {"initial_backoff_s": 0.2, "max_backoff_s": 1.0, **retry}
    return resolve_storage(StorageConfig(endpoint_url=endpoint, retry=settings))


def run_cli(s3: S3, *args: str, timeout: int = 420) -> subprocess.CompletedProcess:
    """``python -m pipelines.transcribe --config configs/local.yaml ...`` from the repository root, with the moto
    credentials and endpoint in its environment (as a user would export them)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and k != "RAY_ADDRESS"}
    env.update(s3.env, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "pipelines.transcribe", "--config", "configs/local.yaml",
                           "--set", "progress=false", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------------- settings, no server
def test_endpoint_from_config_or_environment_read_at_run_time():
    env = {"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3-specific:2"}
    def endpoint(cfg, environ):
        return resolve_storage(cfg, environ).options_for("s3://bucket/key").get("endpoint_url")

    assert endpoint(StorageConfig(), env) == "http://s3-specific:2"
    assert endpoint(StorageConfig(), {"AWS_ENDPOINT_URL": "http://generic:1"}) == "http://generic:1"
    assert endpoint(StorageConfig(endpoint_url="http://cfg:3"), env) == "http://cfg:3"
    assert endpoint(StorageConfig(), dict(env, AWS_IGNORE_CONFIGURED_ENDPOINT_URLS="true")) is None
    storage = resolve_storage(StorageConfig(region="eu-west-1", anon=True, config_kwargs={"connect_timeout": 5},
                                            options={"s3": {"requester_pays": True}}), {})
    s3 = storage.options_for("s3://b/k")
    assert s3["client_kwargs"] == {"region_name": "eu-west-1"} and s3["anon"] and s3["requester_pays"]
    assert s3["use_listings_cache"] is False
    assert s3["config_kwargs"] == {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5}
    assert storage.options_for("/local/file.wav") == {} and storage.options_for("file:///x") == {}


def test_no_credential_can_enter_the_config_or_its_fingerprint():
    for override in ("storage.options={s3: {secret: hunter2-value}}",
                     "storage.client_kwargs={aws_secret_access_key: hunter2-value}",
                     "storage.config_kwargs={token: hunter2-value}",
                     "storage.endpoint_url=http://me:hunter2-value@minio:9000"):
        with pytest.raises(ConfigError, match=r"storage\.") as info:
            load_config(None, [override])
        assert "hunter2-value" not in str(info.value)  # a refused value is never echoed
    cfg = load_config(None, ["storage.endpoint_url=http://127.0.0.1:9000", "storage.region=eu-west-1"])
    assert config_fingerprint(cfg.model, cfg.decoding, cfg.chunking) == \
        config_fingerprint(JobConfig().model, JobConfig().decoding, JobConfig().chunking)
    assert set(cfg.model_dump(mode="json")["storage"]) == {"endpoint_url", "region", "anon", "profile",
                                                           "client_kwargs", "config_kwargs", "options", "retry"}


def test_url_allow_list(tmp_path):
    from serve_app.schemas import APIError
    from serve_app.url_input import resolve_url

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.flac").write_bytes(b"x")
    (tmp_path / "secret.flac").write_bytes(b"x")
    (allowed / "escape.flac").symlink_to(tmp_path / "secret.flac")
    (allowed / "inside.flac").symlink_to(allowed / "a.flac")
    cfg = ServeURLInputConfig(enabled=True, allowed_prefixes=("s3://audio/in/", "s3://whole", f"file://{allowed}/"))
    assert resolve_url("s3://audio/in/x/a.flac", cfg) == "s3://audio/in/x/a.flac"
    assert resolve_url("s3://whole/any/key.wav", cfg) == "s3://whole/any/key.wav"
    assert resolve_url(f"file://{allowed}/a.flac", cfg) == str(allowed / "a.flac")
    assert resolve_url(f"file://{allowed}/inside.flac", cfg) == str(allowed / "a.flac")  # the resolved path
    refused = {
        "s3://other/in/a.flac": 403, "s3://audio/inbox/a.flac": 403, "s3://audio/in/../secret/a.flac": 403,
        "s3://audio/in//a.flac": 403, "s3://audio/in/./a.flac": 403, "s3://audio/in": 403, "s3a://audio/in/a.flac": 403,
        f"file://{allowed}/../secret.flac": 403, f"file://{allowed}/escape.flac": 403, "file:///etc/passwd": 403,
        f"file://{allowed}": 403, f"file://host{allowed}/a.flac": 403, "http://example.com/a.flac": 403,
        "s3://audio/in/a.flac?versionId=1": 400, "s3://audio/in/a\\..\\b.flac": 400, "/etc/passwd": 400,
    }
    for url, status in refused.items():
        with pytest.raises(APIError) as info:
            resolve_url(url, cfg)
        assert info.value.status_code == status, url
    with pytest.raises(APIError) as info:
        resolve_url("s3://audio/in/a.flac", ServeURLInputConfig())
    assert info.value.status_code == 403 and info.value.code == "url_input_disabled"
    with pytest.raises(Exception, match="allowed_prefixes"):
        ServeURLInputConfig(enabled=True)
    for bad in ("https://example.com/audio/", "file://relative/dir", "s3://bucket/../up/", "s3://"):
        with pytest.raises(Exception, match="allowed_prefixes"):
            ServeURLInputConfig(enabled=True, allowed_prefixes=(bad,))


# ------------------------------------------------------------------------------------- manifests on S3
def test_manifest_folder_and_glob_on_s3(aws_env):
    s3 = aws_env
    storage = resolve_storage(StorageConfig())  # endpoint from AWS_ENDPOINT_URL
    rows = read_manifest("s3://corpus/dev/main.jsonl", storage.options_for("s3://"))
    assert [r.uri for r in rows] == [f"s3://corpus/dev/{p}" for p in CLIPS] + [f"s3://corpus/more/{Path(EXTRA).name}"]
    assert [r.audio_filepath for r in rows][:3] == list(CLIPS)  # verbatim
    folder = read_manifest("s3://corpus/dev/", storage.options_for("s3://"))
    assert sorted(r.uri for r in folder) == sorted(f"s3://corpus/dev/{p}" for p in CLIPS)  # no .jsonl
    glob = read_manifest("s3://corpus/dev/ljspeech/*.flac", storage.options_for("s3://"))
    assert [r.uri for r in glob] == ["s3://corpus/dev/ljspeech/LJ001-0002.flac"]
    s3.client.put_object(Bucket="corpus", Key="dev/escape.jsonl",
                         Body=b'{"path": "a.flac"}\n{"path": "../../x.flac"}\n')
    with pytest.raises(ManifestError, match=r"escape.jsonl, line 2: .*climbs out of s3://corpus/"):
        read_manifest("s3://corpus/dev/escape.jsonl", storage.options_for("s3://"))
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest("s3://corpus/dev/nope.jsonl", storage.options_for("s3://"))
    dead = storage_via(f"http://127.0.0.1:{free_port()}", client_max_attempts=1)
    t0 = time.monotonic()
    with pytest.raises(ManifestError, match="EndpointConnectionError"):
        read_manifest("s3://corpus/dev/main.jsonl", dead.options_for("s3://"))
    assert time.monotonic() - t0 < 30


# ------------------------------------------------------------------------------------ reads and retries
def test_reads_retry_transient_errors_and_fail_fast_on_missing_or_denied(aws_env):
    s3 = aws_env
    expected = hashlib.sha256((CORPUS / CLIPS[1]).read_bytes()).hexdigest()
    uri = f"s3://corpus/dev/{CLIPS[1]}"
    with FlakyProxy(s3.port) as proxy:  # an outage: every connection reset for 2 s, then the server is back
        storage = storage_via(proxy.url)
        proxy.outage(2.0)
        t0 = time.monotonic()
        assert storage.read(uri).sha256 == expected
        assert time.monotonic() - t0 > 1.5 and proxy.resets >= 1
    with FlakyProxy(s3.port) as proxy:  # throttling: three 503 SlowDown answers, then the object
        proxy.throttle(3)
        assert storage_via(proxy.url).read(uri).sha256 == expected
        assert proxy.throttled == 3
    with FlakyProxy(s3.port) as proxy:  # no retries: the outage is the answer
        proxy.outage(5.0)
        with pytest.raises(SourceReadError, match=r"storage unavailable after 1 tries"):
            storage_via(proxy.url, attempts=1, client_max_attempts=1).read(uri)
    with FlakyProxy(s3.port) as proxy:  # missing object / missing bucket / access denied: one try, no retry
        storage = storage_via(proxy.url)
        cases = [(storage, "s3://corpus/dev/no-such.flac", r"no-such\.flac: no such file \(not found\)$"),
                 (storage, "s3://no-such-bucket-rd/a.flac", r"not found: The specified bucket does not exist"),
                 (resolve_storage(StorageConfig(endpoint_url=proxy.url, anon=True)), uri,  # private bucket: 403
                  r"permission denied \(access denied")]
        for store, missing, reason in cases:
            before, t0 = proxy.requests, time.monotonic()
            with pytest.raises(SourceReadError, match=reason):
                store.read(missing)
            assert proxy.requests - before <= 2 and time.monotonic() - t0 < 1.0  # s3fs's HEAD (+ LIST), once


def test_size_guard_and_hash_pass_on_s3(aws_env):
    """guards.max_file_bytes on an object: refused from its size (a HEAD), no GET ever sent; the hash pass reads
    the object in blocks through the same options and retries, and gives the decode read's SHA-256."""
    from pipelines.core.errors import SourceTooLargeError

    s3 = aws_env
    uri = f"s3://corpus/dev/{CLIPS[1]}"
    size = (CORPUS / CLIPS[1]).stat().st_size
    expected = hashlib.sha256((CORPUS / CLIPS[1]).read_bytes()).hexdigest()
    with FlakyProxy(s3.port, trigger=rb"GET /corpus/dev/ljspeech/", outage_s=1.0) as proxy:
        storage = storage_via(proxy.url)
        for read in (storage.read, storage.hash):
            with pytest.raises(SourceTooLargeError, match=r"above the limit of .*guards\.max_file_bytes"):
                read(uri, size - 1)
        assert not proxy.fired.is_set()  # refused without reading
    with FlakyProxy(s3.port) as proxy:  # throttled, then through: retried
        storage = storage_via(proxy.url)
        proxy.throttle(3)
        assert storage.hash(uri, size) == expected == storage.read(uri, size).sha256
        assert proxy.throttled == 3
        with pytest.raises(SourceReadError, match=r"no-such\.flac: no such file \(not found\)$"):
            storage.hash("s3://corpus/dev/no-such.flac")


def test_hash_pass_tells_an_unreachable_storage_from_a_bad_file(aws_env):
    """HashStage marks a row ``unreachable`` when the storage could not be reached after the retries (the job then
    leaves that id's rows in the output alone instead of taking them for changed audio), not for a missing
    object."""
    from pipelines.stages import HashStage

    del aws_env  # used for the S3 environment it sets
    rows = [{"id": "ok", "uri": f"s3://corpus/dev/{CLIPS[1]}"}, {"id": "missing", "uri": "s3://corpus/dev/nope.flac"}]
    out = HashStage(JobConfig(), resolve_storage(StorageConfig()))(rows).to_pylist()
    assert out[0]["sha256"] == hashlib.sha256((CORPUS / CLIPS[1]).read_bytes()).hexdigest()
    assert not out[0]["unreachable"]
    assert out[1]["sha256"] is None and not out[1]["unreachable"] and "no such file" in out[1]["error_message"]
    dead = storage_via(f"http://127.0.0.1:{free_port()}", attempts=2, client_max_attempts=1)
    out = HashStage(JobConfig(), dead)(rows[:1]).to_pylist()
    assert out[0]["sha256"] is None and out[0]["unreachable"], out
    assert "storage unavailable after 2 tries" in out[0]["error_message"]


def test_part_writes_are_atomic_on_s3(aws_env):
    s3 = aws_env
    rows = [{"id": f"r{i}", "audio_filepath": f"a/{i}.wav", "status": "ok", "text": os.urandom(2500).hex(),
             "segments": []} for i in range(40)]  # ~200 kB that zstd cannot shrink: the body spans many packets
    table = rows_to_table(rows)
    cut = rb"PUT /transcripts/atomic/part-"
    with FlakyProxy(s3.port, cut=cut, cut_times=100) as proxy:  # every upload dies after half its body
        storage = storage_via(proxy.url, attempts=2, client_max_attempts=1)
        writer = PartWriter("s3://transcripts/atomic/", "run1", 40, "zstd", storage.options_for("s3://"), storage.retry)
        with pytest.raises(StorageError, match=r"part-run1-00000-[0-9a-f]{8}\.parquet: cannot be written"):
            writer.write(table)
        assert proxy.cuts_left < 100 - 1  # cut more than once: the PUT was retried whole, and cut again
    assert s3.keys("transcripts", "atomic/") == []  # nothing a reader could take for a part
    with FlakyProxy(s3.port, cut=cut) as proxy:  # one cut: the retried PUT goes through
        storage = storage_via(proxy.url)
        writer = PartWriter("s3://transcripts/atomic/", "run2", 40, "zstd", storage.options_for("s3://"), storage.retry)
        assert writer.write(table) == [f"transcripts/atomic/part-run2-00000-{writer.writer_id}.parquet"]
        assert proxy.fired.is_set()
    assert s3.keys("transcripts", "atomic/") == [f"atomic/part-run2-00000-{writer.writer_id}.parquet"]  # no _tmp/
    back = pd.read_parquet("s3://transcripts/atomic/", storage_options=s3.storage_options)
    assert len(back) == 40 and back.set_index("id")["text"].to_dict() == {r["id"]: r["text"] for r in rows}


def test_missing_output_bucket_stops_before_work(aws_env, capsys):
    s3 = aws_env
    from pipelines.transcribe import main

    t0 = time.monotonic()
    code = main(["--config", str(ROOT / "configs" / "local.yaml"), "--manifest", "s3://corpus/dev/main.jsonl",
                 "--output", "s3://no-such-output-bucket/run/"])
    assert code == 2 and time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert "the bucket 'no-such-output-bucket' does not exist" in err and "never creates buckets" in err
    assert "no-such-output-bucket" not in [b["Name"] for b in s3.client.list_buckets()["Buckets"]]


# ---------------------------------------------------------------------------------------- the job on S3
@pytest.mark.ray
def test_job_on_s3_matches_a_local_run(s3, job_config, transcriber):
    """The README's command with s3:// manifest (relative paths, one climbing to ../more/) and s3:// output; the
    endpoint comes from AWS_ENDPOINT_URL only."""
    from pipelines.stages import DecodeChunkStage, TranscribeStage

    t0 = time.monotonic()
    res = run_cli(s3, "--manifest", "s3://corpus/dev/main.jsonl", "--output", "s3://transcripts/main/",
                  "--run-id", "s3-main")
    took_s = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-4000:]
    assert "4 files: 4 ok, 0 empty, 0 error" in res.stdout
    df = pd.read_parquet("s3://transcripts/main/", storage_options=s3.storage_options).set_index("id")
    ids = [*CLIPS, EXTRA]
    assert sorted(df.index) == sorted(ids) and (df["status"] == "ok").all()
    assert df.loc["ljspeech/LJ002-0033.opus", "audio_filepath"] == "../more/LJ002-0033.opus"
    assert JFK_PHRASE in words_of(df.loc["jfk/jfk.flac", "text"])
    # the same four clips from local disk through the same stages, in one batch as in the job: what the two paths
    # promise alike (tests/compare.py), not byte equality: the words depend on which chunks share a batch and on
    # the CPU's int8 kernels (audio_filepath as in the manifest: chunks are packed only with those of the same
    # folder, its pack_group)
    local_rows = [{"id": i, "audio_filepath": df.loc[i, "audio_filepath"], "uri": str(CORPUS / i), "language": None,
                   "prompt": None, "reference": None, "line": n} for n, i in enumerate(ids, start=1)]
    local = TranscribeStage(job_config, "local", transcriber=transcriber)(DecodeChunkStage(job_config)(local_rows))
    local = local.to_pandas().set_index("id")
    assert sorted(local.index) == sorted(ids) and (local["status"] == "ok").all()
    assert_texts_agree({i: (local.loc[i, "text"], df.loc[i, "text"]) for i in ids})
    for i in ids:
        assert df.loc[i, "num_chunks"] == local.loc[i, "num_chunks"], i  # the same audio, the same VAD chunks
        assert df.loc[i, "duration_s"] == pytest.approx(local.loc[i, "duration_s"], abs=1e-3), i
        assert_spans_close(list(df.loc[i, "segments"]), list(local.loc[i, "segments"]), i)
        assert df.loc[i, "sha256"] == hashlib.sha256((CORPUS / i).read_bytes()).hexdigest()
    keys = s3.keys("transcripts", "main/")
    # no probe, no _tmp/, no lock left; the errors table (empty here) and the progress object are written by every
    # complete run
    assert keys[:3] == ["main/_errors.parquet", "main/_progress.json", "main/_runs/s3-main.json"], keys
    assert len(keys) == 4 and re.fullmatch(r"main/part-s3-main-00000-[0-9a-f]{8}\.parquet", keys[3]), keys
    progress = json.loads(s3.client.get_object(Bucket="transcripts", Key="main/_progress.json")["Body"].read())
    assert (progress["run_id"], progress["phase"], progress["files_done"]) == ("s3-main", "done", len(ids)), progress
    summary = json.loads(s3.client.get_object(Bucket="transcripts", Key="main/_runs/s3-main.json")["Body"].read())
    assert summary["config"]["storage"]["endpoint_url"] is None  # it came from the environment
    fingerprint = config_fingerprint(job_config.model, job_config.decoding, job_config.chunking)
    assert summary["config_fingerprint"] == fingerprint and (df["config_fingerprint"] == fingerprint).all()
    blobs = [s3.client.get_object(Bucket="transcripts", Key=k)["Body"].read() for k in keys]
    assert not any(SECRET.encode() in blob for blob in blobs) and SECRET not in res.stdout + res.stderr
    print(f"s3 job: {took_s:.1f} s for 4 clips (CLI with its own Ray)")


@pytest.mark.ray
def test_job_recovers_from_an_outage_mid_run(s3):
    """The storage goes away for 4 s when the first audio object is requested (every connection reset, new ones
    refused): the decode actors' reads are retried with backoff and every row comes out; a missing object and a
    missing bucket are error rows with their reason. The endpoint is the config's (through the proxy), which wins
    over AWS_ENDPOINT_URL (moto directly). botocore's own retries are off here (client_max_attempts=1) so that
    the outage outlasts the client's retries and the job's retry layer (tenacity) is what recovers."""
    with FlakyProxy(s3.port, trigger=rb"GET /corpus/dev/ljspeech/", outage_s=4.0) as proxy:
        t0 = time.monotonic()
        res = run_cli(s3, "--manifest", "s3://corpus/dev/fault.jsonl", "--output", "s3://transcripts/fault/",
                      "--run-id", "s3-fault", "--set", f"storage.endpoint_url={proxy.url}",
                      "--set", "storage.retry.client_max_attempts=1", "--set", "storage.retry.max_backoff_s=2")
        took_s = time.monotonic() - t0
        assert res.returncode == 0, res.stderr[-4000:]
        assert proxy.fired.is_set() and proxy.resets >= 2, (proxy.resets, res.stderr[-3000:])
    # the decode actor's tenacity log: in the worker logs, in the Ray log folder the summary names (--verbose would
    # forward them to the console)
    logs = re.search(r"^Ray's logs: (\S+)", res.stdout, re.M)
    assert logs, res.stdout
    workers = "\n".join(p.read_text(errors="replace") for p in Path(logs.group(1)).parent.glob("worker-*"))
    retries = [line for line in workers.splitlines() if "failed (" in line and "retrying in" in line]
    assert retries, res.stderr[-3000:]
    assert "4 files: 2 ok, 0 empty, 2 error" in res.stdout, res.stdout
    df = pd.read_parquet("s3://transcripts/fault/", storage_options=s3.storage_options).set_index("id")
    assert len(df) == 4 and (df.loc[list(CLIPS[1:]), "status"] == "ok").all()
    assert "comparatively modern" in words_of(df.loc["ljspeech/LJ001-0002.flac", "text"])
    assert "no such file (not found" in df.loc["missing", "error_message"]
    assert "s3://corpus/dev/missing/nothing.flac" in df.loc["missing", "error_message"]
    assert "The specified bucket does not exist" in df.loc["no-bucket", "error_message"]
    assert SECRET not in res.stdout + res.stderr + workers
    print(f"outage run: {took_s:.1f} s, {proxy.resets} connections reset, {len(retries)} retry log lines:\n"
          + "\n".join(retries[:4]))


@pytest.mark.ray
def test_rerun_over_an_s3_output_transcribes_nothing_new(s3):
    """Resume over an s3:// output: the same command run twice on three clips. The second run lists and reads the
    folder through the same storage settings (endpoint from AWS_ENDPOINT_URL), hashes the objects again, keeps every
    row and transcribes nothing; the output still holds exactly one row per manifest row, the first run's."""
    rows = [{"audio_filepath": p, "id": p} for p in CLIPS]
    s3.client.put_object(Bucket="corpus", Key="dev/resume.jsonl",
                         Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    command = ("--manifest", "s3://corpus/dev/resume.jsonl", "--output", "s3://transcripts/resume/")
    first = run_cli(s3, *command)
    assert first.returncode == 0, first.stderr[-4000:]
    assert "3 files: 3 ok, 0 empty, 0 error" in first.stdout, first.stdout
    assert "manifest 3 rows: 0 already done, 3 transcribed" in first.stdout, first.stdout
    parts = [k for k in s3.keys("transcripts", "resume/") if k.startswith("resume/part-")]
    before = pd.read_parquet("s3://transcripts/resume/", storage_options=s3.storage_options).set_index("id")

    second = run_cli(s3, *command)  # the same command again
    assert second.returncode == 0, second.stderr[-4000:]
    assert "manifest 3 rows: 3 already done, 0 transcribed, 0 copied" in second.stdout, second.stdout
    assert "output now: 3 rows for the manifest: 3 ok" in second.stdout, second.stdout
    assert "NOT EXACTLY ONCE" not in second.stdout
    keys = s3.keys("transcripts", "resume/")
    assert [k for k in keys if k.startswith("resume/part-")] == parts  # no new part, none rewritten or moved
    assert not [k for k in keys if k.startswith(("resume/_tmp/", "resume/_replaced/"))], keys
    assert "resume/_errors.parquet" in keys
    runs = [json.loads(s3.client.get_object(Bucket="transcripts", Key=k)["Body"].read())
            for k in keys if k.startswith("resume/_runs/")]
    assert len(runs) == 2 and all(r["status"] == "done" for r in runs)
    rerun = max(runs, key=lambda r: r["run_id"])
    assert (rerun["kept"], rerun["transcribed"], rerun["copied"], rerun["files"]) == (3, 0, 0, 0)
    assert rerun["output"]["missing"] == [] and rerun["output"]["doubled"] == []
    after = pd.read_parquet("s3://transcripts/resume/", storage_options=s3.storage_options)
    assert sorted(after["id"]) == sorted(CLIPS) and after["id"].is_unique  # one row per manifest row
    after = after.set_index("id")
    first_run = min(runs, key=lambda r: r["run_id"])["run_id"]
    assert (after["run_id"] == first_run).all() and (after["status"] == "ok").all()
    assert after["text"].to_dict() == before["text"].to_dict()
    assert SECRET not in first.stdout + first.stderr + second.stdout + second.stderr


def test_output_folder_moves_and_rewrites_on_s3(aws_env):
    """The resume bookkeeping on an object store, without Ray: parts listed and read through the storage options,
    a part moved aside (copy, then delete), rows taken out of a part (the rest rewritten by one PUT of the same key,
    the removed rows written aside first), the errors table written whole; no _tmp/ anywhere."""
    from pipelines.io.output import OutputFolder
    from pipelines.io.resume import load_index

    s3 = aws_env
    storage = resolve_storage(StorageConfig())  # endpoint from AWS_ENDPOINT_URL
    out = "s3://transcripts/folder/"
    rows = [{"id": i, "audio_filepath": f"{i}.wav", "status": "ok", "sha256": i, "segments": []} for i in "abcde"]
    writer = PartWriter(out, "r1", 2, "zstd", storage.options_for(out), storage.retry)
    writer.write(rows_to_table(rows))
    writer.close()
    folder = OutputFolder(out, storage.options_for(out), storage.retry)
    folder.prepare()
    done, unreadable = load_index(folder)
    assert [d.id for d in done] == list("abcde") and not unreadable
    assert len(folder.parts()) == 3
    s3.client.put_object(Bucket="transcripts", Key="folder/part-r0-00000.parquet", Body=b"not parquet")
    done, unreadable = load_index(folder)
    assert unreadable == ["transcripts/folder/part-r0-00000.parquet"]
    assert folder.move_aside(unreadable, "r2") == ["transcripts/folder/_replaced/r2/part-r0-00000.parquet"]
    by_id = {d.id: d for d in done}
    assert folder.take_out({by_id["a"].part: [by_id["a"].position], by_id["e"].part: [by_id["e"].position]},
                           "r2") == 2
    current = pd.read_parquet(out, storage_options=s3.storage_options)
    assert sorted(current["id"]) == ["b", "c", "d"]
    keys = s3.keys("transcripts", "folder/")
    aside = [k for k in keys if k.startswith("folder/_replaced/r2/part-r1-")]  # the rows taken out, one file a part
    assert len(aside) == 2 and "folder/_replaced/r2/part-r0-00000.parquet" in keys  # and the moved part
    aside_ids = pd.concat([pd.read_parquet(f"s3://transcripts/{k}", storage_options=s3.storage_options)
                           for k in aside])["id"]
    assert sorted(aside_ids) == ["a", "e"]
    w = writer.writer_id
    assert "folder/part-r0-00000.parquet" not in keys and f"folder/part-r1-00002-{w}.parquet" not in keys  # e's
    assert not [k for k in keys if k.startswith("folder/_tmp/")], keys
    assert [k for k in keys if k.startswith("folder/part-")] == [f"folder/part-r1-00000-{w}.parquet",
                                                                  f"folder/part-r1-00001-{w}.parquet"]


# ----------------------------------------------------------------------------------- Serve, url instead of file
@pytest.fixture(scope="module")
def url_endpoint(s3, ray_local, tmp_path_factory):
    """The Serve app (distinct name and route prefix) with url input on: s3://public-audio/clips/ and
    s3://private-audio/ (anonymous requests through moto: the first is public-read, the second is not) and one
    local folder; Serve is shut down after the module."""
    from ray import serve

    from serve_app.app import build_app

    s3.client.create_bucket(Bucket="public-audio", ACL="public-read")
    s3.client.upload_file(str(JFK), "public-audio", "clips/jfk.flac", ExtraArgs={"ACL": "public-read"})
    s3.client.create_bucket(Bucket="private-audio")  # allowed, but the replica's anonymous requests get 403
    s3.client.upload_file(str(JFK), "private-audio", "clips/jfk.flac")
    s3.client.upload_file(str(JFK), "public-audio", "elsewhere/jfk.flac", ExtraArgs={"ACL": "public-read"})
    root = tmp_path_factory.mktemp("served")
    (root / "allowed").mkdir()
    (root / "allowed" / "jfk.flac").write_bytes(JFK.read_bytes())
    (root / "outside.flac").write_bytes(JFK.read_bytes())
    (root / "allowed" / "escape.flac").symlink_to(root / "outside.flac")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve_args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    args = dict(serve_args, overrides=[
        "deployment.num_cpus=0.5", "http.num_cpus=0", "http.url_input.enabled=true",
        "http.url_input.allowed_prefixes=['s3://public-audio/clips/', 's3://private-audio/', "
        f"'file://{root}/allowed/']",
        f"storage.endpoint_url={s3.endpoint}", "storage.anon=true",  # the replica has no credentials: anonymous
    ])
    serve.run(build_app(args), name="s3url", route_prefix="/s3url")
    base = f"http://127.0.0.1:{port}/s3url"
    wait_until_ready(base, 180)
    try:
        yield base, root
    finally:
        serve.delete("s3url")
        serve.shutdown()


@pytest.mark.ray
def test_serve_reads_urls_only_under_the_allowed_prefixes(url_endpoint):
    base, root = url_endpoint

    def post(url=None, file=None):
        data = {"model": "whisper-1", **({"url": url} if url else {})}
        return requests.post(f"{base}/v1/audio/transcriptions", data=data, timeout=120,
                             files={"file": file} if file else None)

    for url in ("s3://public-audio/clips/jfk.flac", f"file://{root}/allowed/jfk.flac"):
        r = post(url)
        assert r.status_code == 200, (url, r.text)
        assert JFK_PHRASE in words_of(r.json()["text"])
    refused = {
        "s3://other-bucket/clips/jfk.flac": 403, "s3://public-audio/elsewhere/jfk.flac": 403,
        "s3://public-audio/clips/../elsewhere/jfk.flac": 403, f"file://{root}/allowed/escape.flac": 403,
        f"file://{root}/allowed/../outside.flac": 403, "file:///etc/passwd": 403, "http://127.0.0.1:1/jfk.flac": 403,
        "s3://public-audio/clips/nothing.flac": 404, "s3://private-audio/clips/jfk.flac": 403,
    }
    for url, status in refused.items():
        r = post(url)
        assert r.status_code == status, (url, r.status_code, r.text)
        assert r.json()["error"]["param"] == "url"
    assert post("s3://public-audio/elsewhere/jfk.flac").json()["error"]["code"] == "url_not_allowed"
    assert post("s3://private-audio/clips/jfk.flac").json()["error"]["code"] == "url_access_denied"
    both = post("s3://public-audio/clips/jfk.flac", ("jfk.flac", JFK.read_bytes()))
    assert both.status_code == 400 and "either 'file' or 'url'" in both.json()["error"]["message"]
