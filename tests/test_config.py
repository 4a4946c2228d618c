"""Config: one pydantic model, YAML + --set overrides, errors that name the field."""

from __future__ import annotations

import pytest

from pipelines.config import JobConfig, config_fingerprint, load_config
from pipelines.core.errors import ConfigError
from tests.conftest import ROOT


def test_local_yaml_is_the_embedded_default():
    cfg = load_config(ROOT / "configs" / "local.yaml")
    assert cfg.model.name == "bundled-tiny.en" and cfg.model.compute_type == "int8" and cfg.model.device == "cpu"
    assert cfg.transcribe.num_gpus == 0 and cfg.ray.address is None


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["decoding.beam_size=1", "decoding.temperatures=[0.0, 0.5]", "decoding.language=en",
                             "model.require_cuda=true"])
    assert cfg.decoding.beam_size == 1 and cfg.decoding.temperatures == (0.0, 0.5)
    assert cfg.decoding.language == "en" and cfg.model.require_cuda is True


@pytest.mark.parametrize(
    "override, field",
    [("decoding.beam_size=0", "decoding.beam_size"), ("decoding.beem_size=3", "decoding.beem_size"),
     ("model.batch_size=lots", "model.batch_size"), ("model.device=tpu", "model.device")],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_files_and_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["decoding.beam_size"])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_config_is_frozen():
    cfg = JobConfig()
    with pytest.raises(Exception):
        cfg.decoding.beam_size = 3  # type: ignore[misc]


def test_fingerprint_follows_text_changing_settings_only():
    base = load_config(None)
    fp = config_fingerprint(base.model, base.decoding, base.chunking)
    faster = load_config(None, ["model.batch_size=32", "transcribe.max_actors=4", "model.cpu_threads=8"])
    assert config_fingerprint(faster.model, faster.decoding, faster.chunking) == fp
    other = load_config(None, ["decoding.beam_size=1"])
    assert config_fingerprint(other.model, other.decoding, other.chunking) != fp
    other = load_config(None, ["model.compute_type=float32"])
    assert config_fingerprint(other.model, other.decoding, other.chunking) != fp
