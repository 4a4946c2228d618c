"""No secret in what the project writes down (issue 13, finding 7): run summaries (``_runs/<run_id>.json``), the
job's log and error lines, the bench's MLflow params and artifacts. Credentials given in the config either stop
the job at load (the obvious fields, :data:`pipelines.config.CREDENTIAL_KEYS`) or pass and are masked by the one
scrubber, :func:`pipelines.redact.scrub`."""

from __future__ import annotations

import json
import logging
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import JFK, ROOT

# --------------------------------------------------------------------------------------------- the scrubber


def test_credential_named_keys_are_masked_at_any_depth():
    from pipelines.redact import MASK, scrub

    tree = {
        "storage": {
            "options": {
                "az": {"credential": "az-secret", "account_name": "acct"},
                "https": {"headers": {"Authorization": "Basic dXNlcjpwYXNz", "X-Api-Key": "k-1",
                                      "User-Agent": "raywhisper"}},
                "gcs": {"token": {"client_email": "x", "private_key": "pem"}},  # a whole secret subtree
            },
            "client_kwargs": {"password": 1234, "verify": False},
            "list": [{"apiKey": "k-2"}, {"name": "kept"}, ("tuple", {"client_secret": "s"})],
        },
        "unset": {"token": None, "password": "", "auth": False},  # nothing to hide: kept as is
    }
    out = scrub(tree)
    opts = out["storage"]["options"]
    assert opts["az"] == {"credential": MASK, "account_name": "acct"}
    assert opts["https"]["headers"] == {"Authorization": MASK, "X-Api-Key": MASK, "User-Agent": "raywhisper"}
    assert opts["gcs"]["token"] == MASK
    assert out["storage"]["client_kwargs"] == {"password": MASK, "verify": False}
    assert out["storage"]["list"] == [{"apiKey": MASK}, {"name": "kept"}, ["tuple", {"client_secret": MASK}]]
    assert out["unset"] == {"token": None, "password": "", "auth": False}
    assert tree["storage"]["options"]["az"]["credential"] == "az-secret"  # the input is not modified


@pytest.mark.parametrize("key", [
    "secret", "client_secret", "token", "session_token", "sas_token", "X-Amz-Security-Token", "password",
    "passwd", "db_password", "credential", "credentials", "Authorization", "Proxy-Authorization", "auth",
    "http_auth", "auth_header", "api_key", "apiKey", "APIKey", "x-api-key", "apikey", "API_KEY", "key",
    "account_key", "private_key", "secret_access_key", "aws_access_key_id", "connection_string", "Cookie",
    "X-Amz-Signature", "sig",
])
def test_secret_keys(key):
    from pipelines.redact import is_secret_key

    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "max_file_bytes", "max_upload_bytes", "suppress_tokens", "max_new_tokens", "api_key_env", "signature_version",
    "keyword", "monkey", "key_column", "author", "authority", "tokenizer", "hotwords", "endpoint_url", "region",
    "profile", "name", "User-Agent", "config_fingerprint", "addressing_style", "max_running_jobs_per_key",
])
def test_harmless_keys(key):
    from pipelines.redact import is_secret_key

    assert not is_secret_key(key)


def test_every_default_config_passes_unchanged():
    """Nothing the project's own configs hold is mangled: a whole default config dump comes back equal."""
    from pipelines.bench import BenchConfig, load_bench_config
    from pipelines.config import JobConfig, ServeConfig, load_config, load_serve_config
    from pipelines.redact import scrub

    dumps = [JobConfig().model_dump(mode="json"), ServeConfig().model_dump(mode="json"),
             BenchConfig().model_dump(mode="json"),
             load_config(ROOT / "configs" / "local.yaml").model_dump(mode="json"),
             load_config(ROOT / "configs" / "gpu.yaml").model_dump(mode="json"),
             load_bench_config(str(ROOT / "configs" / "bench" / "dev.yaml")).model_dump(mode="json")]
    args = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    dumps.append(load_serve_config(None, inline={k: v for k, v in args.items() if isinstance(v, dict)})
                 .model_dump(mode="json"))
    for dump in dumps:
        assert scrub(dump) == json.loads(json.dumps(dump))  # tuples come back as lists, as json writes them


@pytest.mark.parametrize("text, expected", [
    ("http://minio:pw@127.0.0.1:9000", "http://***@127.0.0.1:9000"),
    ("https://user@host/x.wav", "https://***@host/x.wav"),
    ("s3://bucket/a@2x.wav", "s3://bucket/a@2x.wav"),  # an @ in the path is no userinfo
    ("file:///srv/audio/x.flac", "file:///srv/audio/x.flac"),
    ("postgresql://mlflow:p%40ss@db:5432/runs", "postgresql://***@db:5432/runs"),
    ("see 'https://u:p@ss@h/m.jsonl', then", "see 'https://***@h/m.jsonl', then"),  # an unescaped @ in it
    ("https://b.s3.amazonaws.com/k.flac?X-Amz-Credential=AKIA%2F1&X-Amz-Date=1&X-Amz-Signature=ab12#t",
     "https://b.s3.amazonaws.com/k.flac?X-Amz-Credential=***&X-Amz-Date=1&X-Amz-Signature=***#t"),
    ("https://a.blob.core.windows.net/c/x.wav?sv=2022&sig=abc%3D",
     "https://a.blob.core.windows.net/c/x.wav?sv=2022&sig=***"),
    ("Authorization: Bearer eyJhbGciOi.J9x", "Authorization: Bearer ***"),
    ("my fellow americans, ask not", "my fellow americans, ask not"),
])
def test_urls_and_tokens_in_text(text, expected):
    from pipelines.redact import scrub, scrub_text

    assert scrub_text(text) == expected
    assert scrub({"message": text, "list": [text]}) == {"message": expected, "list": [expected]}


def test_pydantic_secrets_and_models():
    from pydantic import SecretStr

    from pipelines.config import ServeConfig
    from pipelines.redact import MASK, scrub

    cfg = ServeConfig.model_validate({"http": {"api_key": "serve-key-123"}})
    assert scrub(cfg)["http"]["api_key"] == MASK and scrub({"x": SecretStr("s")}) == {"x": MASK}
    assert "serve-key-123" not in json.dumps(scrub(cfg))


def test_log_lines_are_scrubbed():
    from pipelines.redact import ScrubbingFormatter, install_log_scrubber

    logger = logging.getLogger("raywhisper.test-redact")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_scrubber(logger)
        install_log_scrubber(logger)  # twice: wrapped once
        assert isinstance(handler.formatter, ScrubbingFormatter)
        assert not isinstance(handler.formatter.inner, ScrubbingFormatter)
        logger.warning("manifest %s: 3 files", "https://u:log-secret@host/m.jsonl")
        try:
            raise OSError("cannot reach http://u:tb-secret@127.0.0.1:9/")
        except OSError:
            logger.exception("read failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "WARNING manifest https://***@host/m.jsonl: 3 files" in text
    assert "log-secret" not in text and "tb-secret" not in text and "Traceback" in text


def test_redact_imports_without_ray_mlflow_or_pydantic(tmp_path):
    code = ("import sys, pipelines.redact; bad = [m for m in ('ray', 'mlflow', 'fastapi', 'pydantic') "
            "if m in sys.modules]; assert not bad, bad")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------------------- where it is used
#: Credential-shaped fields that pass the config check (not one of CREDENTIAL_KEYS): they reach the config and
#: must be masked wherever it is written. (dotted --set key, secret value)
PASSING = [
    ("storage.options.az.credential", "az-credential-S3CR3T-1"),
    ("storage.options.https.headers.Authorization", "Bearer header-S3CR3T-2"),
    ("storage.options.https.headers.X-Api-Key", "apikey-S3CR3T-3"),
    ("storage.client_kwargs.endpoint_url", "http://minio:userinfo-S3CR3T-4@127.0.0.1:9"),
    ("storage.options.s3.endpoint_url", "http://minio:userinfo-S3CR3T-5@127.0.0.1:9"),
    ("storage.config_kwargs.proxies.https", "http://proxyuser:proxy-S3CR3T-6@127.0.0.1:3128"),
]
#: The obvious credential fields: refused when the config is loaded (exit 2, the field named, the value not).
REFUSED = [
    ("storage.options.gcs.token", "token-S3CR3T-7"),
    ("storage.client_kwargs.password", "password-S3CR3T-8"),
    ("storage.options.az.sas_token", "sas-S3CR3T-9"),
    ("storage.endpoint_url", "http://minio:endpoint-S3CR3T-10@127.0.0.1:9000"),
]


def _overrides(fields) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in fields]


def _no_secret_in(text: str, where: str) -> None:
    """Every secret value here holds the word S3CR3T (and the user names around them none): a leak is any S3CR3T."""
    at = text.find("S3CR3T")
    assert at < 0, f"{where} carries a secret: ...{text[max(0, at - 80):at + 40]}..."


def test_write_summary_masks_every_credential_shaped_field(tmp_path):
    """The summary writer, called as ``run_job`` calls it, with a config holding every field above (the refused
    ones too, as a config built without validation would) and a manifest URL with userinfo."""
    from pipelines.config import JobConfig, StorageConfig, apply_overrides
    from pipelines.io.output import write_summary
    from pipelines.redact import MASK

    tree = apply_overrides({}, _overrides(PASSING + REFUSED))["storage"]
    cfg = JobConfig.model_construct(storage=StorageConfig.model_construct(**{**StorageConfig().__dict__, **tree}))
    record = {"run_id": "r1", "manifest": "https://reader:manifest-S3CR3T-11@127.0.0.1/m.jsonl",
              "output": str(tmp_path), "config": cfg.model_dump(mode="json"),
              "failure": "OSError('http://u:failure-S3CR3T-12@127.0.0.1:9/ refused')"}
    path = write_summary(str(tmp_path), "r1", record)
    text = Path(path).read_text()
    _no_secret_in(text, "the summary")
    back = json.loads(text)
    storage = back["config"]["storage"]
    assert storage["options"]["az"]["credential"] == MASK
    assert storage["options"]["https"]["headers"] == {"Authorization": MASK, "X-Api-Key": MASK}
    assert storage["options"]["gcs"]["token"] == MASK and storage["client_kwargs"]["password"] == MASK
    assert storage["client_kwargs"]["endpoint_url"] == "http://***@127.0.0.1:9"
    assert storage["endpoint_url"] == "http://***@127.0.0.1:9000"
    assert back["manifest"] == "https://***@127.0.0.1/m.jsonl"
    assert back["config"]["model"] == JobConfig().model_dump(mode="json")["model"]  # the rest as it was


@pytest.mark.parametrize("key, value", REFUSED, ids=[k for k, _ in REFUSED])
def test_obvious_credentials_are_refused_at_load(key, value):
    from pipelines.config import load_config
    from pipelines.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(None, _overrides([(key, value)]))
    message = str(err.value)
    assert key in message and "credentials" in message
    _no_secret_in(message, "the config error")


def test_cli_stops_on_an_obvious_credential_without_echoing_it(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipelines.transcribe", "--manifest", str(JFK), "--output",
                          str(tmp_path / "out"), "--set", _overrides(REFUSED[:1])[0]],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert REFUSED[0][0] in res.stderr and "credentials do not go in the config" in res.stderr
    _no_secret_in(res.stdout + res.stderr, "the CLI's output")
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
def test_job_run_writes_no_secret(tmp_path):
    """The real job over one clip with every passing credential-shaped field set: the run summary holds the
    config with those values masked, and neither the summary, the parts nor the job's output carries one."""
    out = tmp_path / "out"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(JFK), "id": "jfk"}) + "\n")
    args = [sys.executable, "-m", "pipelines.transcribe", "--manifest", str(manifest), "--output", str(out),
            "--run-id", "secrets", "--set", "progress=false", "--set", "ray.node_ip_address=127.0.0.1",
            "--set", "ray.num_cpus=2"]
    for override in _overrides(PASSING):
        args += ["--set", override]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "1 files: 1 ok" in res.stdout, res.stdout
    _no_secret_in(res.stdout + res.stderr, "the job's stdout/stderr")
    for path in out.rglob("*"):
        if path.is_file():
            _no_secret_in(path.read_bytes().decode("latin-1"), str(path.relative_to(out)))
    summary = json.loads((out / "_runs" / "secrets.json").read_text())
    assert summary["status"] == "done"
    storage = summary["config"]["storage"]
    assert storage["options"]["az"]["credential"] == "***"
    assert storage["options"]["https"]["headers"] == {"Authorization": "***", "X-Api-Key": "***"}
    assert storage["client_kwargs"]["endpoint_url"] == "http://***@127.0.0.1:9"
    assert storage["config_kwargs"]["proxies"]["https"] == "http://***@127.0.0.1:3128"


def test_mlflow_params_and_config_carry_no_secret(tmp_path):
    """The bench's MLflow logging (params, the bench config artifact) with a job config holding every passing
    credential-shaped field, into a store in tmp_path (sqlite; MLflow 3 refuses the file store)."""
    import mlflow

    from pipelines.bench import load_bench_config, log_to_mlflow

    cfg = load_bench_config(None, [f"job.{o}" for o in _overrides(PASSING)] + ["experiment=secrets"])
    rows = [{"id": "a", "text": "my fellow americans", "subset": "jfk"}]
    results = {s: {"results": [{"id": "a", "text": "my fellow americans", "duration_s": 11.0, "status": "ok"}]}
               for s in cfg.systems}
    metrics = {s: {"wall_s": 2.0, "x_real_time": 5.5, "wer": 0.0} for s in cfg.systems}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    client.create_experiment("secrets", artifact_location=(tmp_path / "mlruns").as_uri())
    run_ids = log_to_mlflow(cfg, uri, rows, results, metrics, tmp_path)
    assert set(run_ids) == set(cfg.systems)
    for run_id in run_ids.values():
        run = client.get_run(run_id)
        _no_secret_in(json.dumps(run.data.params), "MLflow params")
        assert run.data.params["model"] == "bundled-tiny.en"
        config = json.loads(Path(client.download_artifacts(run_id, "bench_config.json", str(tmp_path))).read_text())
        assert config["job"]["storage"]["options"]["az"]["credential"] == "***"
        assert config["job"]["model"]["name"] == "bundled-tiny.en"
    for path in [tmp_path / "mlflow.db", *(tmp_path / "mlruns").rglob("*")]:  # nothing anywhere in the store
        if path.is_file():
            _no_secret_in(path.read_bytes().decode("latin-1"), str(path))
