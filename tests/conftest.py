"""Shared fixtures: the real-speech dev corpus in ../shared/corpus/dev, a loaded transcriber, a local Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("RAYWHISPER_CORPUS", ROOT.parent / "shared" / "corpus" / "dev")).resolve()
JFK = CORPUS / "jfk" / "jfk.flac"
JFK_PHRASE = "ask not what your country can do for you"


def corpus_rows() -> list[dict]:
    """The dev corpus manifest rows (``path``, ``reference``, ``duration_s`` ...)."""
    manifest = CORPUS / "manifest.jsonl"
    if not manifest.exists():
        raise RuntimeError(f"the dev corpus is missing at {CORPUS} (expected ../shared/corpus/dev beside the repo)")
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The dev corpus folder."""
    corpus_rows()
    return CORPUS


@pytest.fixture(scope="session")
def job_config():
    """The embedded default config (configs/local.yaml)."""
    from pipelines.config import load_config

    return load_config(ROOT / "configs" / "local.yaml")


@pytest.fixture(scope="session")
def transcriber(job_config):
    """One tiny.en transcriber for the whole session (loading costs ~1 s)."""
    from pipelines.core.transcriber import Transcriber

    return Transcriber(job_config.model, job_config.decoding)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster on loopback for the session, shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
