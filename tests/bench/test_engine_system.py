"""The bench's in-process engine system (``raywhisper-engine``) on real speech: results in manifest order, bad files
as error results, the same transcripts (within tolerance) whatever the group size, preparation running ahead of
transcription but only ``engine_prefetch_groups`` groups ahead; and the bench command with Ray unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.bench.config import load_bench_config
from pipelines.bench.engine_system import run_engine
from pipelines.core.engine import Engine, Outcome
from pipelines.core.stitch import stitch_file
from pipelines.core.wer import word_error_rate
from pipelines.io.storage import resolve_storage
from tests.compare import assert_texts_agree
from tests.conftest import CORPUS, ROOT, corpus_rows

DEV = str(ROOT / "configs" / "bench" / "dev.yaml")


def bench_rows(n: int, tmp_path: Path) -> list[dict]:
    """The first ``n`` dev clips as bench manifest rows, with a non-audio file and a missing one in between."""
    rows = [{"id": r["path"], "audio_filepath": str(CORPUS / r["path"]), "text": r["reference"]}
            for r in corpus_rows()[:n]]
    junk = tmp_path / "junk" / "notes.wav"
    junk.parent.mkdir()
    junk.write_bytes(b"not audio at all " * 200)
    rows.insert(2, {"id": "junk", "audio_filepath": str(junk), "text": ""})
    rows.insert(4, {"id": "missing", "audio_filepath": str(tmp_path / "gone.flac"), "text": ""})
    return rows


def test_engine_system_order_errors_and_group_size(transcriber, tmp_path):
    rows = bench_rows(5, tmp_path)
    load = lambda cfg: (lambda: Engine(cfg.job.model, cfg.job.decoding, transcriber))  # noqa: E731
    small = load_bench_config(DEV, ["job.transcribe.files_per_batch=2", "engine_prepare_threads=2"])
    grouped = run_engine(small, rows, load_engine=load(small))
    whole_cfg = load_bench_config(DEV, ["job.transcribe.files_per_batch=100"])
    whole = run_engine(whole_cfg, rows, load_engine=load(whole_cfg))
    for results in (grouped, whole):
        assert [r["id"] for r in results] == [r["id"] for r in rows]
        by_id = {r["id"]: r for r in results}
        assert by_id["junk"]["status"] == "error" and "notes.wav" in by_id["junk"]["error"]
        assert by_id["missing"]["status"] == "error" and "gone.flac" in by_id["missing"]["error"]
        speech = [r for r in rows if r["text"]]
        assert all(by_id[r["id"]]["status"] == "ok" for r in speech)
        assert word_error_rate([r["text"] for r in speech], [by_id[r["id"]]["text"] for r in speech]) < 0.1
    assert_texts_agree({a["id"]: (a["text"], b["text"]) for a, b in zip(whole, grouped) if a["status"] == "ok"})
    for a, b in zip(whole, grouped):
        assert a["duration_s"] == b["duration_s"]


class RecordingEngine:
    """Stands in for the engine: records when each group's transcription starts and ends (no model)."""

    def __init__(self, events: list, lock: threading.Lock):
        self.events, self.lock = events, lock

    def transcribe_isolated(self, files, decoding=None, retries=0):
        with self.lock:
            self.events.append(("start", [f.spec.key for f in files]))
        time.sleep(0.3)
        with self.lock:
            self.events.append(("end", [f.spec.key for f in files]))
        return [Outcome(f.spec.key, stitch_file([], f.duration_s, "en", 1.0), 0.3) for f in files]


class RecordingStorage:
    """The job's local storage, recording when each file's read begins."""

    def __init__(self, events: list, lock: threading.Lock):
        self.inner, self.events, self.lock = resolve_storage(load_bench_config(DEV).job.storage), events, lock

    def read(self, uri, max_bytes=None):
        with self.lock:
            self.events.append(("read", uri))
        return self.inner.read(uri, max_bytes)


def test_preparation_runs_one_group_ahead():
    rows = [{"id": r["path"], "audio_filepath": str(CORPUS / r["path"])} for r in corpus_rows()[:8]]
    cfg = load_bench_config(DEV, ["job.transcribe.files_per_batch=2", "engine_prepare_threads=2",
                                  "engine_prefetch_groups=1"])
    events, lock = [], threading.Lock()
    results = run_engine(cfg, rows, storage=RecordingStorage(events, lock),
                         load_engine=lambda: RecordingEngine(events, lock))
    assert [r["id"] for r in results] == [r["id"] for r in rows] and {r["status"] for r in results} == {"empty"}
    group_of = {r["audio_filepath"]: i // 2 for i, r in enumerate(rows)}
    first_read = {g: min(i for i, e in enumerate(events) if e[0] == "read" and group_of[e[1]] == g) for g in range(4)}
    last_read = {g: max(i for i, e in enumerate(events) if e[0] == "read" and group_of[e[1]] == g) for g in range(4)}
    starts = [i for i, e in enumerate(events) if e[0] == "start"]
    ends = [i for i, e in enumerate(events) if e[0] == "end"]
    assert [events[i][1] for i in starts] == [[r["id"] for r in rows[k:k + 2]] for k in range(0, 8, 2)]  # in order
    for g in range(4):
        assert last_read[g] < starts[g]  # a group is transcribed once prepared...
        if g + 1 < 4:
            assert first_read[g + 1] < ends[g]  # ...while the next one is being prepared
        if g + 2 < 4:
            assert first_read[g + 2] > starts[g]  # and no further ahead than engine_prefetch_groups


RAY_BLOCKER = '''
import importlib.abc, os, sys

class _NoRay(importlib.abc.MetaPathFinder):
    """Ray is not installed here: every import of ray or ray.* fails as for a missing package, and is noted in
    $NORAY_LOG."""

    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            with open(os.environ["NORAY_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoRay())
'''


def test_bench_command_runs_without_ray(tmp_path):
    """``--device cpu`` with the engine and both baselines, a local model folder, Ray unimportable in every
    process (a sitecustomize on PYTHONPATH, inherited by the bench's child processes)."""
    import mlflow

    from pipelines.core.models import resolve_model_path

    blocker = tmp_path / "noray"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(RAY_BLOCKER)
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}", "NORAY_LOG": str(tmp_path / "noray.log")}
    check = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked by the test" in check.stderr
    (tmp_path / "noray.log").unlink()
    model_dir = resolve_model_path("bundled-tiny.en")  # a local CTranslate2 model folder
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.bench", "--config", DEV, "--manifest", str(CORPUS / "manifest.jsonl"),
         "--limit", "3", "--device", "cpu", "--output", str(tmp_path / "bench"),
         "--systems", "raywhisper-engine,faster-whisper-sequential,faster-whisper-batched",
         "--set", f"job.model.name={model_dir}", "--set", "baseline_beam_size=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    tried = tmp_path / "noray.log"
    assert not tried.exists(), f"something tried to import Ray:\n{tried.read_text()}"
    assert result.stdout.count("GPU: ") == 1  # said once: not sampled here, or the GPU's name
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["raywhisper-bench-dev"])
    assert sorted(runs["params.system"]) == ["faster-whisper-batched", "faster-whisper-sequential",
                                            "raywhisper-engine"]
    for _, run in runs.iterrows():
        assert run["params.device"] == "cpu" and run["params.compute_type"] == "int8"
        assert run["params.model"] == model_dir
        assert run["metrics.files"] == 3 and run["metrics.files_not_ok"] == 0 and run["metrics.wer"] < 0.2
        assert run["metrics.audio_s"] == pytest.approx(runs["metrics.audio_s"].iloc[0], rel=0.01)
    engine = runs[runs["params.system"] == "raywhisper-engine"].iloc[0]
    assert engine["params.prepare_threads"] == "1" and engine["params.files_per_batch"] == "128"
    assert engine["params.omp_num_threads"] == "1"  # as the job's transcription actors get it


def test_a_model_that_cannot_load_stops_the_system_at_once():
    from pipelines.core.errors import ModelLoadError

    rows = [{"id": r["path"], "audio_filepath": str(CORPUS / r["path"])} for r in corpus_rows()[:12]]
    cfg = load_bench_config(DEV, ["job.transcribe.files_per_batch=2", "engine_prepare_threads=1"])
    events, lock = [], threading.Lock()

    def load():
        raise ModelLoadError("model.require_cuda is set but CTranslate2 sees no CUDA device")

    with pytest.raises(ModelLoadError, match="CUDA"):
        run_engine(cfg, rows, storage=RecordingStorage(events, lock), load_engine=load)
    assert len(events) <= 4  # at most the two groups queued before the load; the rest never read
