"""The job's console (docs/job.md): by default its own lines and the summary, with Ray's and Ray Data's internal
logging in Ray's session log folder; ``--verbose`` brings Ray's logging back. The CLI in a subprocess (its own
local Ray), as ``make demo`` runs it, on two short clips."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

CLIPS = ("ljspeech/LJ001-0002.flac", "jfk/jfk.flac")
#: Lines that belong to Ray or Ray Data, never to a quiet console.
RAY_NOISE = ("ERROR", "core_worker", "Running Dataset", "Execution plan of Dataset", "Started a local Ray instance",
             "Token authentication", "MapWorker")


def _run(tmp_path: Path, corpus: Path, name: str, *flags: str) -> tuple[subprocess.CompletedProcess, str]:
    manifest = tmp_path / f"{name}.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(corpus / c), "id": c}) + "\n" for c in CLIPS))
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.transcribe", "--config", "configs/local.yaml", "--manifest", str(manifest),
         "--output", str(tmp_path / name), "--set", "ray.num_cpus=2", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 files: 2 ok, 0 empty, 0 error" in result.stdout
    return result, result.stdout + result.stderr


@pytest.mark.ray
def test_the_console_shows_the_jobs_lines_and_ray_logs_to_its_folder(tmp_path, corpus):
    result, console = _run(tmp_path, corpus, "quiet")
    noise = [line for line in console.splitlines() if any(word in line for word in RAY_NOISE)]
    assert not noise, "\n".join(noise)
    assert re.search(r"raywhisper: wrote \S+part-\S+\.parquet \(2/2 files done\)", result.stderr)
    logs = re.search(r"^Ray's logs: (\S+)", result.stdout, re.M)
    assert logs, result.stdout
    driver_log = Path(logs.group(1))
    assert driver_log.is_file() and "Started a local Ray instance" in driver_log.read_text()
    assert (driver_log.parent / "ray-data").is_dir()  # Ray Data's own log, beside it


@pytest.mark.ray
def test_verbose_brings_ray_data_logging_back(tmp_path, corpus):
    result, console = _run(tmp_path, corpus, "verbose", "--verbose")
    assert "Execution plan of Dataset" in result.stderr and "Started a local Ray instance" in result.stderr
    assert "Ray's logs:" not in result.stdout
