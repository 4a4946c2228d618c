"""The cluster commands of docs/scaling.md work as written (issue 13, finding 10).

The fenced ``bash`` blocks of its "Submitting the job" section are run as they are, against a fresh
``ray start --head`` on loopback whose token authentication Ray 2.60 turned on by itself (a token in
``~/.ray/auth_token``, as a local run of the job or ``ray get-auth-token --generate`` leaves one). Only the block's
marked settings (``HEAD``, ``CONFIG``, ``MANIFEST``, ``OUTPUT``, ``JOB``: the lines ``NAME=value`` at its top) are
given this cluster's values. ``HOME`` is a temporary folder for the head and the client alike, so the token is
this test's own and nothing is read from or left in the real ``~/.ray``; Ray's state lives in the cluster's own
temp dir. The cluster is stopped in teardown, on failure too, by the PID of its ``ray start --block`` and then any
process carrying its marker (:class:`tests.test_cluster.LocalRayCluster`); never with ``ray stop``, which stops
every Ray on the machine, other test sessions' included.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import CORPUS, JFK_PHRASE, ROOT
from tests.job.test_cluster import RAY_CLI, VENV_BIN, LocalRayCluster

DOC = ROOT / "docs" / "scaling.md"
SECTION = "Submitting the job"
#: The settings at the top of the section's first block that a reader edits (and this test sets).
SETTINGS = ("HEAD", "CONFIG", "MANIFEST", "OUTPUT", "JOB")
#: Two short real clips (11 s and 1.9 s).
CLIPS = ("jfk/jfk.flac", "ljspeech/LJ001-0002.flac")


def section_blocks(doc: Path, title: str) -> list[str]:
    """The fenced ``bash`` blocks of the Markdown section headed ``title`` (up to the next heading of its level or
    above), in order."""
    text = doc.read_text()
    head = re.search(rf"^(#+) {re.escape(title)}\s*$", text, flags=re.M)
    assert head, f"{doc.name} has no section {title!r}"
    level = len(head.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", flags=re.M).search(text, head.end())
    body = text[head.end():end.start() if end else len(text)]
    return [b for b in re.findall(r"^```bash\n(.*?)^```", body, flags=re.M | re.S)]


def with_settings(block: str, values: dict[str, str]) -> str:
    """``block`` with each ``NAME=...`` line of ``values`` (one each, required) set to the given value; nothing
    else changed."""
    for name, value in values.items():
        pattern = re.compile(rf"^{name}=\S*(?P<comment>\s+#.*)?$", flags=re.M)
        assert len(pattern.findall(block)) == 1, f"the block must set {name} once, on a line of its own:\n{block}"
        block = pattern.sub(lambda m: f"{name}={shlex.quote(value)}{m.group('comment') or ''}", block)
    return block


def client_env(home: Path) -> dict[str, str]:
    """A shell as the doc's reader has it: the venv active, a home with the head's token, no Ray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), PYTHONPATH="",
               RAY_USAGE_STATS_ENABLED="0")
    return env


def test_doc_blocks_have_the_settings():
    blocks = section_blocks(DOC, SECTION)
    assert len(blocks) == 2 and "ray job submit" in blocks[0] and "ray job stop" in blocks[1]
    assert "export RAY_AUTH_MODE=token" in blocks[0]
    with_settings(blocks[0], dict.fromkeys(SETTINGS, "x"))  # each set once, on a line of its own


@pytest.fixture(scope="module")
def token_cluster():
    """A fresh ``ray start --head`` whose HOME holds a token and whose environment names no auth setting: Ray
    turns token authentication on by itself. Yields ``(cluster, home)``."""
    home = Path(tempfile.mkdtemp(prefix="rwh", dir="/tmp"))
    cluster = LocalRayCluster(num_cpus=2, num_gpus=0)
    try:
        made = subprocess.run([str(RAY_CLI), "get-auth-token", "--generate"], env=client_env(home),
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0 and (home / ".ray" / "auth_token").is_file(), made.stderr
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            cluster.env.pop(name, None)
        cluster.env["HOME"] = str(home)
        cluster.start()
        assert "Token authentication is enabled" in cluster.start_log(), cluster.start_log()
        _wait_for_the_job_agent(cluster.address, client_env(home))
        yield cluster, home
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
        assert not list(cluster._own_processes()), "processes of the test cluster are still running"


def _wait_for_the_job_agent(address: str, env: dict, timeout_s: float = 120) -> None:
    """Right after start the job API can answer 'No available agent to submit job': submit a no-op until it runs."""
    deadline = time.monotonic() + timeout_s
    env = {**env, "RAY_AUTH_MODE": "token"}
    while True:
        res = subprocess.run([str(RAY_CLI), "job", "submit", "--address", address, "--", "true"], env=env,
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
        if res.returncode == 0:
            return
        assert "No available agent" in res.stdout and time.monotonic() < deadline, res.stdout[-3000:]
        time.sleep(2)


@pytest.mark.ray
def test_the_token_alone_is_refused(token_cluster):
    """The old README's advice (export RAY_AUTH_TOKEN) does not get a job in: the finding, as Ray 2.60 has it."""
    cluster, home = token_cluster
    env = {**client_env(home), "RAY_AUTH_TOKEN": (home / ".ray" / "auth_token").read_text().strip()}
    res = subprocess.run([str(RAY_CLI), "job", "submit", "--address", cluster.address, "--", "true"], env=env,
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert res.returncode != 0 and "RAY_AUTH_MODE is currently 'disabled'" in res.stdout, res.stdout[-3000:]


@pytest.mark.ray
def test_submitting_the_job_as_written(token_cluster, tmp_path):
    """The section's blocks, run as written in one bash (set -e) from the repository root: the job runs under token
    authentication, the log shows its summary, the status says it succeeded, the stop command answers for the
    finished job, and the output holds one ok row per clip."""
    import pandas as pd

    cluster, home = token_cluster
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(CORPUS / c), "id": c}) + "\n" for c in CLIPS))
    out = tmp_path / "out"
    job = f"raywhisper-doc-{uuid.uuid4().hex[:8]}"
    first, stop = section_blocks(DOC, SECTION)
    script = with_settings(first, {"HEAD": cluster.address, "CONFIG": "configs/local.yaml",
                                   "MANIFEST": str(manifest), "OUTPUT": str(out), "JOB": job}) + "\n" + stop
    res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, env=client_env(home),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert res.returncode == 0, f"{script}\n---\n{res.stdout[-6000:]}"
    assert f"{len(CLIPS)} files: {len(CLIPS)} ok, 0 empty, 0 error" in res.stdout, res.stdout[-6000:]
    assert f"Job '{job}' succeeded" in res.stdout, res.stdout[-3000:]
    df = pd.read_parquet(out)
    assert sorted(df["id"]) == sorted(CLIPS) and (df["status"] == "ok").all(), df[["id", "status"]]
    jfk = df.set_index("id").loc["jfk/jfk.flac", "text"].lower()
    assert JFK_PHRASE in " ".join(re.sub(r"[^a-z' ]", " ", jfk).split())
    assert len(list((out / "_runs").glob("*.json"))) == 1
