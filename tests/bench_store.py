"""A real MLflow tracking store (SQLite) holding benchmark-shaped runs, built once per session."""

from __future__ import annotations

from pathlib import Path

_cache: dict[str, str] = {}

#: system -> (params, metrics): one system logs x_real_time, the other only rtf (the report must cope with both)
RUNS = {
    "tiny.en int8 cpu": ({"system": "tiny.en int8 cpu", "model": "tiny.en"},
                         {"wall_s": 40.0, "audio_s": 200.0, "x_real_time": 5.0, "wer": 0.12, "wer_ljspeech": 0.08,
                          "wer_an4": 0.31}),
    "base int8 cpu": ({"system": "base int8 cpu", "model": "base"},
                      {"wall_s": 80.0, "rtf": 0.4, "wer": 0.09, "wer_ljspeech": 0.06}),
}
EXPERIMENT = "raywhisper-bench"


def build_store(base: Path) -> str:
    """Log :data:`RUNS` into ``sqlite:///<base>/mlflow.db`` (once per process); returns the tracking URI."""
    if "uri" in _cache:
        return _cache["uri"]
    from mlflow.tracking import MlflowClient

    base.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{base / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(base / "artifacts").as_uri())
    for system, (params, metrics) in RUNS.items():
        run = client.create_run(experiment_id, run_name=system)
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    _cache["uri"] = uri
    return uri
