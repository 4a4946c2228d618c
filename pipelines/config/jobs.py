"""The ``jobs`` section of the Serve config: asynchronous transcription jobs over HTTP (``/v1/jobs``, docs/jobs.md),
each a Ray Job running ``python -m pipelines.transcribe``.

Off unless ``allowed_prefixes`` is non-empty: every job endpoint then answers 403 saying how to turn it on.
:func:`with_environment` adds the prefixes of ``RAYWHISPER_JOBS_ALLOWED_PREFIXES`` (comma-separated), read when
the application is built (never at import), so ``serve run configs/serve.yaml`` can be pointed at a folder
without editing the YAML.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from pydantic import Field, field_validator, model_validator

from pipelines.config.base import Frozen as _Frozen
from pipelines.config.base import check_url_prefixes

#: The environment variable whose comma-separated prefixes are added to ``jobs.allowed_prefixes``.
ALLOWED_PREFIXES_ENV = "RAYWHISPER_JOBS_ALLOWED_PREFIXES"
#: The folder under the first allowed prefix that stages manifests and uploads when ``staging_prefix`` is unset.
DEFAULT_STAGING_DIR = "_raywhisper_staging/"
#: The ``--set`` keys a client may override by default (dotted prefixes): how the audio is decoded and transcribed,
#: never where data goes, what storage or cluster is used, the input guards or the model loaded.
DEFAULT_ALLOWED_OVERRIDES = (
    "decoding.", "chunking.", "diarization.enabled", "diarization.num_speakers", "diarization.min_speakers",
    "diarization.max_speakers", "model.batch_size", "transcribe.files_per_batch", "decode.files_per_batch",
    "output.rows_per_file", "output.flush_interval_s", "output.progress_interval_s",
)


class ServeJobsConfig(_Frozen):
    """Asynchronous jobs over HTTP: who may submit what, where it is staged, and how the Ray Jobs API is reached."""

    allowed_prefixes: tuple[str, ...] = Field((), description=(
        "URL prefixes (folders) a job's manifest, audio and output must lie under: 's3://bucket/prefix/', "
        "'file:///srv/audio/' (symlinks resolved). Empty: the job endpoints answer 403. The environment variable "
        "RAYWHISPER_JOBS_ALLOWED_PREFIXES (comma-separated) adds to it when the application is built."))
    staging_prefix: Optional[str] = Field(None, description=(
        "Where the endpoint writes each job's checked manifest and uploaded file (<staging_prefix>/<job id>/); "
        "None: '_raywhisper_staging/' under the first allowed prefix."))
    dashboard_address: str = Field("http://127.0.0.1:8265", description=(
        "The Ray Jobs API (the head's dashboard) the endpoint submits jobs to."))
    python: Optional[str] = Field(None, description=(
        "The Python that runs the job's entry point on the head node; None: the ingress replica's own "
        "interpreter (sys.executable: the same path on every node of a cluster built from one image)."))
    job_config: Optional[str] = Field(None, description=(
        "The job's YAML config (--config) as a path on the head node; None: the job's own default "
        "(configs/local.yaml in its working directory, else the built-in defaults)."))
    allowed_overrides: tuple[str, ...] = Field(DEFAULT_ALLOWED_OVERRIDES, description=(
        "The config keys a request's 'config' may set: a key is allowed when it equals an entry or starts with "
        "an entry ending in '.'. Others get 403."))
    max_running_jobs_per_key: int = Field(2, ge=1, description=(
        "Jobs one API key may have queued or running at once; a further POST gets 429."))
    max_manifest_rows: int = Field(100_000, ge=1, description="Rows a job's manifest (or urls list) may have; 413 above.")
    max_manifest_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Size of a manifest file the endpoint reads.")
    max_upload_bytes: int = Field(2 * 1024 ** 3, ge=1, description=(
        "Largest file a multipart POST /v1/jobs may upload (413 above); it is streamed to the staging prefix."))
    upload_timeout_s: float = Field(3600.0, gt=0, description="How long (s) an upload to POST /v1/jobs may take.")
    webhook_prefixes: tuple[str, ...] = Field((), description=(
        "http(s) URL prefixes a job's webhook_url must start with ('https://hooks.example.com/raywhisper/'); "
        "empty: webhook_url is refused with 403. The job's driver POSTs the event."))
    log_tail_lines: int = Field(20, ge=0, le=500, description="Lines of a failed job's log shown in its error.")
    runtime_env: dict = Field(default_factory=dict, description=(
        "Ray runtime_env given to every job (e.g. env_vars); the project must be installed on the cluster."))

    @field_validator("allowed_prefixes")
    @classmethod
    def _valid_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_url_prefixes(value)

    @field_validator("staging_prefix")
    @classmethod
    def _valid_staging(cls, value: Optional[str]) -> Optional[str]:
        return value if value is None else check_url_prefixes((value,))[0]

    @field_validator("webhook_prefixes")
    @classmethod
    def _valid_webhooks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            scheme, _, rest = prefix.partition("://")
            host = rest.split("/", 1)[0]
            if scheme not in ("http", "https") or not host or "@" in host:
                raise ValueError(f"{prefix!r}: expected 'https://host[:port]/path/' (no user info)")
            if any(ch in prefix for ch in "?#\\") or "::" in prefix or "/../" in prefix + "/" or "/./" in prefix:
                raise ValueError(f"{prefix!r}: no query, fragment, backslash, '::', '.' or '..' in a webhook prefix")
        return value

    @model_validator(mode="after")
    def _staging_default(self) -> "ServeJobsConfig":
        if self.staging_prefix is None and self.allowed_prefixes:
            object.__setattr__(self, "staging_prefix", self.allowed_prefixes[0].rstrip("/") + "/" + DEFAULT_STAGING_DIR)
        return self

    @property
    def enabled(self) -> bool:
        """Whether the job endpoints accept requests (some prefix is allowed)."""
        return bool(self.allowed_prefixes)


def with_environment(jobs: ServeJobsConfig, environ: Optional[Mapping[str, str]] = None) -> ServeJobsConfig:
    """``jobs`` with the prefixes of :data:`ALLOWED_PREFIXES_ENV` (``environ``, default ``os.environ`` now) added
    to ``allowed_prefixes`` (validated like them).

    Raises:
        pydantic.ValidationError: a prefix in the variable is not a valid prefix.
    """
    env = os.environ if environ is None else environ
    extra = [p.strip() for p in env.get(ALLOWED_PREFIXES_ENV, "").split(",") if p.strip()]
    if not extra:
        return jobs
    prefixes = tuple(dict.fromkeys([*jobs.allowed_prefixes, *extra]))
    data: dict[str, Any] = jobs.model_dump() | {"allowed_prefixes": prefixes}
    if jobs.staging_prefix and not jobs.allowed_prefixes:  # the derived default follows the new first prefix
        data["staging_prefix"] = None
    return ServeJobsConfig.model_validate(data)
