"""pipelines.bench_runs: reading benchmark runs from MLflow, tolerant of metric names."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines import bench_runs as br
from tests.bench_store import EXPERIMENT, RUNS, build_store


def fake_runs() -> pd.DataFrame:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame([
        {"run_id": "1", "status": "FINISHED", "start_time": t, "system": "a", "metrics.rtf": 0.5, "metrics.wer": 0.2},
        {"run_id": "2", "status": "FINISHED", "start_time": t + pd.Timedelta("1h"), "system": "a",
         "metrics.rtf": 0.25, "metrics.wer": 0.1},
        {"run_id": "3", "status": "FAILED", "start_time": t + pd.Timedelta("2h"), "system": "a",
         "metrics.rtf": 9.0, "metrics.wer": 0.9},
        {"run_id": "4", "status": "FINISHED", "start_time": t, "system": "b", "metrics.audio_s": 100.0,
         "metrics.wall_s": 10.0, "metrics.wer_an4": 0.3, "metrics.files_per_s": 2.0},
    ])


def test_systems_table_latest_and_median():
    latest = br.systems_table(fake_runs())
    assert latest.index.tolist() == ["a", "b"]
    assert latest.loc["a", "runs"] == 2  # the failed run is left out
    assert latest.loc["a", "wer"] == 0.1 and latest.loc["a", "x_real_time"] == pytest.approx(4.0)  # 1 / rtf
    assert latest.loc["b", "x_real_time"] == pytest.approx(10.0)  # audio_s / wall_s
    median = br.systems_table(fake_runs(), how="median")
    assert median.loc["a", "wer"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="latest"):
        br.systems_table(fake_runs(), how="mean")
    assert br.systems_table(pd.DataFrame(columns=["system"])).empty


def test_metric_kinds():
    names = ["wall_s", "wer_an4", "x_real_time", "wer", "files_per_s", "rtf", "throughput_chunks", "werewolf"]
    assert br.wer_metrics(names) == ["wer", "wer_an4"]
    assert br.throughput_metrics(names) == ["x_real_time", "files_per_s", "throughput_chunks"]


def test_missing_local_stores_read_as_no_runs_and_are_not_created(tmp_path):
    for uri in [f"sqlite:///{tmp_path}/none.db", str(tmp_path / "mlruns"), (tmp_path / "mlruns").as_uri()]:
        assert not br.store_exists(uri)
        runs = br.load_runs(uri)
        assert runs.empty and "system" in runs
    assert list(tmp_path.iterdir()) == []
    assert br.store_exists("http://127.0.0.1:5000")  # remote: MLflow decides
    assert br.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_load_runs_from_a_real_store(tmp_path_factory):
    uri = build_store(tmp_path_factory.getbasetemp() / "mlflow")
    runs = br.load_runs(uri)
    assert sorted(runs["system"]) == sorted(RUNS)
    assert set(runs["experiment"]) == {EXPERIMENT} and set(runs["status"]) == {"FINISHED"}
    assert "metrics.x_real_time" in runs and "params.model" in runs
    table = br.systems_table(runs)
    assert table.loc["base int8 cpu", "x_real_time"] == pytest.approx(2.5)  # from rtf 0.4
    assert table.loc["tiny.en int8 cpu", "wer_an4"] == 0.31
    assert br.load_runs(uri, experiment_names=["other"]).empty
