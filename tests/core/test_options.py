"""The core's own options (pipelines/core/options.py) and the one batch-size knob."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import pipelines.config as config
from pipelines.core import options
from pipelines.core.errors import ConfigError
from tests.conftest import ROOT


def test_the_config_holds_the_cores_options_unchanged():
    for name in ("ModelConfig", "DecodingConfig", "ChunkingConfig", "config_fingerprint", "row_fingerprint",
                 "DEFAULT_TEMPERATURES"):
        assert getattr(config, name) is getattr(options, name)
    cfg = config.load_config(ROOT / "configs" / "local.yaml")
    assert isinstance(cfg.model, options.ModelConfig) and isinstance(cfg.chunking, options.ChunkingConfig)


@pytest.mark.parametrize("loader, override, old", [
    (config.load_config, "transcribe.batch_size=16", "transcribe.batch_size"),
    (config.load_serve_config, "deployment.transcribe_batch_size=16", "deployment.transcribe_batch_size"),
])
def test_the_old_batch_size_fields_say_where_the_knob_went(loader, override, old):
    with pytest.raises(ConfigError, match=rf"{old.replace('.', '[.]')} has moved to model[.]batch_size"):
        loader(None, [override])


def test_job_and_endpoint_share_model_batch_size():
    job = config.load_config(ROOT / "configs" / "local.yaml")
    serve_args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    serve = config.load_serve_config(inline={k: v for k, v in serve_args.items() if k not in ("config", "overrides")})
    assert job.model.batch_size == serve.model.batch_size == 8
    assert job.model == serve.model  # the same model, run the same way
    with pytest.raises(ConfigError, match=r"model\.batch_size"):
        config.load_config(None, ["model.batch_size=0"])


def test_the_transcriber_batches_by_model_batch_size(job_config):
    from pipelines.core.transcriber import Chunk, Transcriber

    model = job_config.model.model_copy(update={"batch_size": 2, "num_workers": 1})
    tr = Transcriber(model, job_config.decoding.model_copy(update={"pack_short_chunks": False, "beam_size": 1}))
    silence = np.zeros(16000, np.float32)
    tr.transcribe_chunks([Chunk(str(i), 0, 0.0, silence) for i in range(3)])
    assert tr.batch_size == 2 and tr.calls == 2  # 3 windows in batches of at most 2
