"""The bench command on a slice of the dev corpus: four MLflow runs (the job, the engine in-process, two
faster-whisper baselines) with sane metrics, read back with mlflow.search_runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import CORPUS, ROOT


@pytest.mark.ray
@pytest.mark.slow
def test_bench_logs_four_runs(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.bench", "--config", "configs/bench/dev.yaml",
         "--manifest", str(CORPUS / "manifest.jsonl"), "--limit", "6", "--output", str(tmp_path / "bench"),
         "--set", "baseline_beam_size=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "raywhisper" in result.stdout and "vs job" in result.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["raywhisper-bench-dev"])
    assert sorted(runs["params.system"]) == ["faster-whisper-batched", "faster-whisper-sequential", "raywhisper",
                                            "raywhisper-engine"]
    for _, run in runs.iterrows():
        assert run["metrics.files"] == 6
        assert 0.0 <= run["metrics.wer"] < 0.3  # the first six are LJ Speech clips: tiny.en gets a few %
        assert run["metrics.audio_s"] == pytest.approx(runs["metrics.audio_s"].iloc[0], rel=0.01)
        assert run["metrics.audio_s"] > 30 and run["metrics.wall_s"] > 0 and run["metrics.x_real_time"] > 0.5
        assert run["metrics.peak_rss_mb"] > 50 and run["metrics.wer_ljspeech"] == run["metrics.wer"]
        assert run["params.model"] == "bundled-tiny.en"
        # the job keeps its config's beam; the baselines run (and log) baseline_beam_size
        assert run["params.beam_size"] == ("5" if run["params.system"].startswith("raywhisper") else "3")
        assert run["params.version_faster-whisper"] != "n/a" and len(run["params.git_commit"]) >= 7
        artifacts = mlflow.artifacts.list_artifacts(run_id=run["run_id"])
        names = {a.path for a in artifacts}
        assert "bench.png" in names and f"{run['params.system']}.results.csv" in names
    ray_run = runs[runs["params.system"] == "raywhisper"].iloc[0]
    assert ray_run["params.actors"] == "1" and ray_run["params.pack_short_chunks"] == "True"


def test_baseline_beam_size_defaults_to_the_jobs():
    from pipelines.bench import load_bench_config, system_params

    same = load_bench_config(None, ["job.decoding.beam_size=4"])
    assert {system_params(s, same, 1)["beam_size"] for s in same.systems} == {4}
    apart = load_bench_config(None, ["job.decoding.beam_size=3", "baseline_beam_size=5"])
    beams = {s: system_params(s, apart, 1)["beam_size"] for s in apart.systems}
    assert beams == {"raywhisper": 3, "raywhisper-engine": 3, "faster-whisper-sequential": 5,
                     "faster-whisper-batched": 5}
