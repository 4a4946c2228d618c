"""Where credentials and storage options live in the config: the ``storage`` section shared by the job and the
endpoint, and the refusal of credential fields in it (docs/storage.md, docs/security.md)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Frozen as _Frozen


#: Option names that hold credentials; refused in the storage section (credentials come from the environment,
#: a profile or an instance role, so no config dump, run summary or log can ever carry one).
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "password", "passwd", "session_token", "access_key", "secret_key",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
    "connection_string", "client_secret", "credentials", "security_token",
})


def _refuse_credentials(tree: Any, where: str) -> None:
    if isinstance(tree, dict):
        for name, value in tree.items():
            if str(name).lower() in CREDENTIAL_KEYS:
                raise ValueError(
                    f"{where}.{name}: credentials do not go in the config (it is written into every run summary); "
                    "use the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), a profile "
                    "(storage.profile, ~/.aws/credentials) or an instance role / service account"
                )
            _refuse_credentials(value, f"{where}.{name}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _refuse_credentials(value, f"{where}[{i}]")


class StorageRetryConfig(_Frozen):
    """Retries of storage reads (each audio file) and writes (each Parquet part) on transient errors."""

    attempts: int = Field(
        6, ge=1,
        description="Tries per audio read or part write (1: no retry) when the error is transient: connection "
                    "refused/reset/timeout, throttling (429, SlowDown), a 5xx answer. A missing object or access "
                    "denied is never retried: it becomes an error row at once.",
    )
    initial_backoff_s: float = Field(0.5, gt=0, description="Wait before the first retry (s); doubles each retry.")
    max_backoff_s: float = Field(10.0, gt=0, description="Longest wait between two tries (s), before jitter.")
    max_elapsed_s: float = Field(
        120.0, gt=0, description="Stop retrying once this long (s) has passed since the first try of a file or part."
    )
    client_max_attempts: int = Field(
        3, ge=1,
        description="Attempts per S3 request inside botocore ('standard' retry mode: connection errors, "
                    "throttling, 5xx; its own backoff), under each try above.",
    )


class StorageConfig(_Frozen):
    """How manifests, audio and output are reached through fsspec (local paths, ``file://``, ``s3://``, and any
    protocol whose fsspec package is installed). Credentials are never settings here: they come the standard way
    (for S3: environment, ``~/.aws`` profile, instance role / service account)."""

    endpoint_url: Optional[str] = Field(
        None,
        description="S3-compatible endpoint (MinIO, Ceph: 'http://127.0.0.1:9000'). None: AWS_ENDPOINT_URL_S3, "
                    "else AWS_ENDPOINT_URL (read when the job or the Serve replica starts), else AWS S3.",
    )
    region: Optional[str] = Field(None, description="S3 region (None: AWS_REGION / AWS_DEFAULT_REGION / profile).")
    anon: bool = Field(False, description="S3 without credentials (unsigned requests; public buckets only).")
    profile: Optional[str] = Field(None, description="Named profile of ~/.aws/credentials / ~/.aws/config for S3.")
    client_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra botocore client arguments for S3 (verify, use_ssl...).",
    )
    config_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra botocore Config for S3 ({s3: {addressing_style: path}}, connect_timeout, read_timeout...).",
    )
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Extra fsspec options per protocol, e.g. {s3: {requester_pays: true}, gcs: {project: p}}; "
                    "applied last, over the settings above.",
    )
    retry: StorageRetryConfig = Field(default_factory=StorageRetryConfig)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_without_userinfo(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:9000, got {value!r}")
        if parts.username or parts.password:
            raise ValueError("the endpoint URL must not carry credentials (user:password@); use the environment")
        return value

    @model_validator(mode="after")
    def _no_credentials(self) -> "StorageConfig":
        for name in ("client_kwargs", "config_kwargs", "options"):
            _refuse_credentials(getattr(self, name), f"storage.{name}")
        return self
