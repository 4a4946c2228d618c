"""One typed config for the job and the Serve app: pydantic models loaded from YAML.

Every setting is a field with a description; ``configs/*.yaml`` and ``--set key=value`` only fill them in.
Nothing here reads the environment or touches the disk at import time (docs/architecture.md, invariant 3).

Usage::

    cfg = load_config("configs/local.yaml", ["model.batch_size=16", "decoding.beam_size=1"])

The sections live in submodules, all importable from here: :mod:`~pipelines.config.job` (:class:`JobConfig`),
:mod:`~pipelines.config.serve` (:class:`ServeConfig`), :mod:`~pipelines.config.storage` (the ``storage`` section
and its credential refusal), :mod:`~pipelines.config.guards` (the input guards) and :mod:`~pipelines.config.load`
(YAML, ``--set`` overrides, validation). The model, decoding and chunking sections are the core's own option
types (:mod:`pipelines.core.options`), held here.
"""

from pipelines.config.guards import GuardsConfig, ServeGuardsConfig, StreamGuardsConfig
from pipelines.config.job import (
    DecodeStageConfig,
    DiarizationConfig,
    JobConfig,
    OutputConfig,
    RayConfig,
    TranscribeStageConfig,
)
from pipelines.config.load import apply_overrides, load_config, load_serve_config, load_tree
from pipelines.config.serve import (
    URL_INPUT_SCHEMES,
    ServeAutoscalingConfig,
    ServeConfig,
    ServeDeploymentConfig,
    ServeHTTPConfig,
    ServeURLInputConfig,
)
from pipelines.config.storage import CREDENTIAL_KEYS, StorageConfig, StorageRetryConfig
from pipelines.core.options import (  # the core owns them, the config holds them
    DEFAULT_TEMPERATURES,
    ChunkingConfig,
    DecodingConfig,
    ModelConfig,
    config_fingerprint,
    row_fingerprint,
)

__all__ = [
    "CREDENTIAL_KEYS", "DEFAULT_TEMPERATURES", "URL_INPUT_SCHEMES",
    "ChunkingConfig", "DecodeStageConfig", "DiarizationConfig", "DecodingConfig", "GuardsConfig", "JobConfig", "ModelConfig",
    "OutputConfig", "RayConfig", "ServeAutoscalingConfig", "ServeConfig", "ServeDeploymentConfig",
    "ServeGuardsConfig", "ServeHTTPConfig", "ServeURLInputConfig", "StorageConfig", "StorageRetryConfig",
    "StreamGuardsConfig", "TranscribeStageConfig",
    "apply_overrides", "config_fingerprint", "load_config", "load_serve_config", "load_tree", "row_fingerprint",
]
