"""Read the benchmark's MLflow runs into tables for ``notebooks/benchmark_report.ipynb``.

Tolerant of how the bench names things, since systems and metrics grow over time:

- a run's **system** is its ``system`` param (or tag), else its run name, else the first 8 characters of its id;
- **throughput** is ``x_real_time`` (seconds of audio per second of wall time, higher is faster) when logged,
  else derived as ``1 / rtf`` (or ``1 / real_time_factor``), else ``audio_s / wall_s``; any other metric whose
  name has ``throughput``, ``per_s`` or ``x_real_time`` in it is kept as a throughput metric too;
- **WER** metrics are ``wer`` and every ``wer_<subset>`` (0..1+).

MLflow is imported only when runs are read; reading never creates a store: a local path, ``file:`` URI or
``sqlite:`` database that does not exist reads as "no runs".
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

#: what counts as a throughput metric (higher is faster) besides ``x_real_time``
_THROUGHPUT = re.compile(r"(throughput|per_s$|_per_s_|x_real_time)")
_WER = re.compile(r"^wer($|_)")


def resolve_tracking_uri(tracking_uri: Optional[str] = None) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default."""
    if tracking_uri:
        return str(tracking_uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow

    return mlflow.get_tracking_uri()


def _local_store_path(uri: str) -> Optional[str]:
    """The file a local store lives in (a folder for the file store, the .db file for sqlite), else None."""
    if uri.startswith("sqlite:"):
        path = uri[len("sqlite:"):]
        # sqlite:///relative.db, sqlite:////absolute.db; sqlite:// alone is in memory
        return unquote(path[3:]) if path.startswith("///") and len(path) > 3 else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "":
        return uri
    return None


def store_exists(tracking_uri: str) -> bool:
    """False only when the store is local (path, ``file:``, ``sqlite:``) and not there; remote stores count as
    existing (MLflow will say if they are not reachable)."""
    path = _local_store_path(tracking_uri)
    return path is None or os.path.exists(path)


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses the file store (``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE`` is set; reading an
    existing one is harmless, so allow it for the duration of the read."""
    is_file_store = urlparse(uri).scheme in ("", "file")
    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    if is_file_store:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if is_file_store:
            if old is None:
                os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
            else:
                os.environ["MLFLOW_ALLOW_FILE_STORE"] = old


def load_runs(tracking_uri: Optional[str] = None, experiment_names: Optional[Sequence[str]] = None,
              max_results: int = 10_000) -> pd.DataFrame:
    """The runs of a tracking store, one row each, in the column naming of ``mlflow.search_runs``: ``run_id``,
    ``experiment_id``, ``experiment``, ``status``, ``start_time`` (UTC), ``run_name``, ``system`` (see the module
    doc), then ``params.<name>`` (strings), ``metrics.<name>`` (floats, the last logged value) and ``tags.<name>``.

    Args:
        tracking_uri: see :func:`resolve_tracking_uri`.
        experiment_names: only these experiments (all when None); names not in the store are ignored.
        max_results: at most this many runs, newest first.

    Returns:
        The runs, newest first; an empty frame (no columns but those above) when the store does not exist or
        holds no runs.

    Raises:
        mlflow.exceptions.MlflowException: the store exists but cannot be read (server down, bad URI).
    """
    base_cols = ["run_id", "experiment_id", "experiment", "status", "start_time", "run_name", "system"]
    uri = resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        return pd.DataFrame(columns=base_cols)
    from mlflow.tracking import MlflowClient

    with _file_store_allowed(uri):
        client = MlflowClient(tracking_uri=uri)
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        if experiment_names is not None:
            experiments = {k: v for k, v in experiments.items() if v in set(experiment_names)}
        runs = client.search_runs(list(experiments), max_results=max_results,
                                  order_by=["attributes.start_time DESC"]) if experiments else []
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row = {
            "run_id": info.run_id,
            "experiment_id": info.experiment_id,
            "experiment": experiments.get(info.experiment_id),
            "status": info.status,
            "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
            "run_name": info.run_name,
            "system": data.params.get("system") or data.tags.get("system") or info.run_name or info.run_id[:8],
        }
        row.update({f"params.{k}": v for k, v in data.params.items()})
        row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else base_cols)


def metric_names(runs: pd.DataFrame) -> list[str]:
    """The metric names present (``metrics.`` prefix removed), sorted."""
    return sorted(c[len("metrics."):] for c in runs.columns if c.startswith("metrics."))


def wer_metrics(names: Sequence[str]) -> list[str]:
    """``wer`` first, then the ``wer_<subset>`` names, sorted."""
    found = [n for n in names if _WER.match(n)]
    return sorted(found, key=lambda n: (n != "wer", n))


def throughput_metrics(names: Sequence[str]) -> list[str]:
    """The throughput metric names (higher is faster) among ``names``, ``x_real_time`` first."""
    found = [n for n in names if _THROUGHPUT.search(n) and not _WER.match(n)]
    return sorted(found, key=lambda n: (n != "x_real_time", n))


def systems_table(runs: pd.DataFrame, how: str = "latest") -> pd.DataFrame:
    """One row per system with every metric, from its FINISHED runs (all runs when none has finished).

    Args:
        runs: :func:`load_runs`.
        how: ``"latest"`` (each metric's value in the newest run that logged it) or ``"median"`` (the median
            over the system's runs).

    Returns:
        Index ``system``; columns ``runs`` (how many), then the metrics by name (no prefix), with
        ``x_real_time`` added where it can be derived (see the module doc). Empty when ``runs`` is.

    Raises:
        ValueError: unknown ``how``.
    """
    if how not in ("latest", "median"):
        raise ValueError(f"how must be 'latest' or 'median', not {how!r}")
    if runs.empty:
        return pd.DataFrame(index=pd.Index([], name="system"), columns=["runs"])
    finished = runs[runs["status"] == "FINISHED"]
    runs = finished if not finished.empty else runs
    metric_cols = [c for c in runs.columns if c.startswith("metrics.")]
    metrics = runs[["system", "start_time"] + metric_cols].rename(columns=lambda c: c.removeprefix("metrics."))
    grouped = metrics.sort_values("start_time", ascending=False).groupby("system", sort=True)
    names = [c.removeprefix("metrics.") for c in metric_cols]
    table = grouped[names].first() if how == "latest" else grouped[names].median()
    table.insert(0, "runs", grouped.size())
    if "x_real_time" not in table:
        table["x_real_time"] = np.nan
    for inverse in ("rtf", "real_time_factor"):
        if inverse in table:
            table["x_real_time"] = table["x_real_time"].fillna(1.0 / table[inverse].where(table[inverse] > 0))
    if {"audio_s", "wall_s"} <= set(table.columns):
        wall_s = table["wall_s"].where(table["wall_s"] > 0)
        table["x_real_time"] = table["x_real_time"].fillna(table["audio_s"] / wall_s)
    if table["x_real_time"].isna().all():
        table = table.drop(columns="x_real_time")
    return table
