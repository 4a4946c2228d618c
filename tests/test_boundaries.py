"""Import boundaries at run time (docs/architecture.md, invariant 2; the static rules are in
tests/test_import_contracts.py): the core imports no Ray, FastAPI or MLflow; importing has no side effects."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_core_and_config_import_without_ray(tmp_path):
    code = (
        "import sys, os; cwd = os.listdir('.');"
        "import pipelines.core.audio, pipelines.core.chunking, pipelines.core.transcriber, pipelines.core.stitch,"
        " pipelines.core.schema, pipelines.core.wer, pipelines.config, pipelines.stages, pipelines.io.manifest;"
        "bad = [m for m in ('ray', 'fastapi', 'mlflow') if m in sys.modules];"
        "assert not bad, bad; assert os.listdir('.') == cwd, 'import wrote files'"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
