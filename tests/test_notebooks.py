"""Both notebooks executed headless with papermill (a cell that raises fails the test), as committed: outputs
stripped, one ``parameters`` cell."""

from __future__ import annotations

import ast
import os

import nbformat
import papermill as pm
import pytest

from pipelines.core.rows import rows_to_table
from pipelines.io.output import PartWriter
from tests.bench_store import RUNS, build_store
from tests.conftest import ROOT
from tests.transcripts_output import MISSING_ID, SILENT_ID, build_output

NOTEBOOKS = ROOT / "notebooks"
PARAMETERS = {"transcript_analysis.ipynb": "transcripts_path", "benchmark_report.ipynb": "tracking_uri"}


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory, job_config, transcriber):
    return build_output(tmp_path_factory.getbasetemp() / "transcripts", job_config, transcriber)


@pytest.fixture(autouse=True)
def kernel_env(monkeypatch):
    """The kernel (this interpreter's, through the venv's ``python3`` kernelspec) imports ``pipelines`` from
    the repository root."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend captures the figures


def run(name: str, tmp_path, **parameters) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>`` with ``parameters`` in the notebooks folder (as Jupyter would); returns the
    executed notebook. Raises papermill's PapermillExecutionError when a cell raises."""
    return pm.execute_notebook(str(NOTEBOOKS / name), str(tmp_path / name), parameters=parameters,
                               kernel_name="python3", cwd=str(NOTEBOOKS), progress_bar=False,
                               execution_timeout=300)


def text_of(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if out.output_type == "stream" else
                         out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_committed_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks with outputs stripped"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = {t.id for node in ast.parse(tagged[0].source).body for t in node.targets}
    assert PARAMETERS[name] in assigned
    assert nb.metadata.kernelspec.name == "python3"


def test_transcript_analysis_runs_on_a_real_output(output_dir, tmp_path):
    nb = run("transcript_analysis.ipynb", tmp_path, transcripts_path=str(output_dir))
    text = text_of(nb)
    assert "7 transcripts" in text
    assert "AudioDecodeError" in text and "nothing-here.flac" in text  # the error message is shown
    assert "compression_ratio > 2.4" in text  # the hallucination rule is stated
    assert "(all)" in text and "ljspeech" in text  # WER per folder
    assert "transcribe" in text and "s_per_audio_s" in text  # timing per stage
    assert "files have speech left without words" in text  # speech coverage (schema 1.2)
    assert figures(nb) == 7  # status, audio/words, language, quality, coverage, WER, timing


def test_transcript_analysis_without_segments_or_references(output_dir, tmp_path):
    """An output of only an error row and a silent file: every section says there is nothing, nothing raises."""
    import pyarrow.compute as pc

    from pipelines.analysis import load_table

    table = load_table(str(output_dir))
    rows = table.filter(pc.is_in(table.column("id"), value_set=pc.cast([SILENT_ID, MISSING_ID], "string")))
    rows = rows_to_table([dict(r, reference=None) for r in rows.to_pylist()])
    writer = PartWriter(str(tmp_path / "out"), "degenerate")
    writer.write(rows)
    writer.close()
    text = text_of(run("transcript_analysis.ipynb", tmp_path, transcripts_path=str(tmp_path / "out")))
    assert "2 transcripts, 0 segments" in text
    assert "No reference transcripts" in text and "No segment matches the rule." in text


def test_benchmark_report_without_runs(tmp_path):
    store = tmp_path / "mlflow.db"
    nb = run("benchmark_report.ipynb", tmp_path, tracking_uri=f"sqlite:///{store}")
    assert "No benchmark runs in the MLflow store" in text_of(nb)
    assert figures(nb) == 0 and not store.exists()


def test_benchmark_report_with_runs(tmp_path_factory, tmp_path):
    uri = build_store(tmp_path_factory.getbasetemp() / "mlflow")
    nb = run("benchmark_report.ipynb", tmp_path, tracking_uri=uri)
    text = text_of(nb)
    assert f"{len(RUNS)} runs of {len(RUNS)} systems" in text
    assert all(system in text for system in RUNS)
    assert "throughput metrics: ['x_real_time']" in text and "'wer_ljspeech'" in text
    assert figures(nb) == 2  # throughput | WER side by side, and speed against accuracy
