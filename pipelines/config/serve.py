"""The Serve endpoint's config: the model deployment (replicas, batching, autoscaling), the HTTP ingress (auth,
limits, ``url`` input) and :class:`ServeConfig` holding them with the job's model, decoding, chunking, guards and
storage sections (docs/serving.md)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, SecretStr, field_validator, model_validator

from pipelines.config.base import Frozen as _Frozen
from pipelines.config.base import URL_INPUT_SCHEMES, check_url_prefixes, refuse_moved  # noqa: F401 - re-exported
from pipelines.config.jobs import ServeJobsConfig
from pipelines.config.guards import ServeGuardsConfig
from pipelines.config.storage import StorageConfig
from pipelines.core.diarization import DiarizationOptions
from pipelines.core.options import ChunkingConfig, DecodingConfig, ModelConfig


class ServeAutoscalingConfig(_Frozen):
    """Ray Serve autoscaling of the model deployment (``autoscaling_config``), by ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0, description="Fewest model replicas (0 allows scaling to zero).")
    max_replicas: int = Field(1, ge=1, description="Most model replicas.")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Ongoing requests per replica the autoscaler aims for (about one full batch)."
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> "ServeAutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServeDeploymentConfig(_Frozen):
    """The model deployment: replicas holding one :class:`~pipelines.core.transcriber.Transcriber` each."""

    num_replicas: int = Field(1, ge=1, description="Model replicas when autoscaling is off.")
    autoscaling: Optional[ServeAutoscalingConfig] = Field(
        None, description="Autoscale between min_replicas and max_replicas instead of a fixed num_replicas."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (1 on GPU nodes, with model.device=cuda).")
    max_ongoing_requests: int = Field(
        16, ge=1,
        description="Requests a model replica holds at once (being transcribed or waiting in its batch queue); "
                    "at least max_batch_size so a batch can fill, ideally twice that so the next one fills while "
                    "one runs.",
    )
    max_queued_requests: int = Field(
        64, ge=-1,
        description="Requests each caller (ingress replica) queues for the model deployment when every replica is "
                    "at max_ongoing_requests; beyond it the endpoint answers 503 with Retry-After at once. "
                    "-1: unbounded (not recommended).",
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After (s) sent with a 503 when the queue is full.")
    max_batch_size: int = Field(
        8, ge=1, description="Requests merged into one transcription call by @serve.batch (their chunks are pooled)."
    )
    batch_wait_timeout_s: float = Field(
        0.05, ge=0, description="How long (s) @serve.batch waits for a batch to fill before running what it has."
    )
    health_check_period_s: float = Field(10.0, gt=0, description="How often (s) Serve calls check_health.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="How long (s) a check_health call may take.")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, "deployment", {"transcribe_batch_size": "model.batch_size"})

    @model_validator(mode="after")
    def _batch_fits(self) -> "ServeDeploymentConfig":
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                f"({self.max_batch_size}), or batches can never fill"
            )
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (unbounded) or at least 1")
        return self


class ServeURLInputConfig(_Frozen):
    """Transcribing a stored object named by the request's ``url`` form field instead of an upload (Groq's
    OpenAI-compatible API has the same field). Off by default; when on, only URLs under ``allowed_prefixes`` are
    read, so a request can never read arbitrary local files or buckets."""

    enabled: bool = Field(False, description="Accept the 'url' form field (off: a request with 'url' gets 403).")
    allowed_prefixes: tuple[str, ...] = Field(
        (),
        description="URL prefixes a request may read under, each a folder: 's3://bucket/audio/' (that bucket and "
                    "key prefix only), 's3://bucket' (the whole bucket), 'file:///srv/audio/' (that directory, "
                    "symlinks resolved). Anything else is refused with 403.",
    )

    @field_validator("allowed_prefixes")
    @classmethod
    def _valid_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_url_prefixes(value)

    @model_validator(mode="after")
    def _prefixes_when_enabled(self) -> "ServeURLInputConfig":
        if self.enabled and not self.allowed_prefixes:
            raise ValueError("url_input.enabled needs at least one allowed_prefixes entry")
        return self


class ServeHTTPConfig(_Frozen):
    """The HTTP ingress (FastAPI): what it accepts and who may call it. Host and port are Serve's ``http_options``
    (``configs/serve.yaml``), not settings of the application."""

    api_key: Optional[SecretStr] = Field(
        None, description="Bearer token every /v1 request must carry (Authorization: Bearer KEY); None: no auth."
    )
    api_key_env: Optional[str] = Field(
        None, description="Name of an environment variable holding the API key, read when the app is built "
                          "(keeps the key out of the config file); wins over api_key when set and non-empty.",
    )
    max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1, description="Largest accepted upload in bytes (413 above it); OpenAI's limit is 25 MB."
    )
    model_aliases: tuple[str, ...] = Field(
        ("whisper-1",), description="Names accepted in the request's 'model' field besides model.name."
    )
    num_replicas: int = Field(1, ge=1, description="Ingress replicas (they decode and VAD-chunk uploads on CPU).")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(
        256, ge=1, description="HTTP requests an ingress replica holds at once; keep it above the model deployment's "
                               "max_ongoing_requests + max_queued_requests so overload is answered with a JSON 503.",
    )
    ready_timeout_s: float = Field(10.0, gt=0, description="How long (s) /health/ready waits for the model.")
    request_timeout_s: float = Field(
        600.0, gt=0,
        description="Deadline (s) of one transcription request in the ingress, from its arrival: receiving the upload "
                    "(408 upload_timeout if it has not all arrived by then), then reading a url, decoding and "
                    "transcribing (504 timeout; the model call is cancelled, though a batch the model has already "
                    "started runs to its end). 600 s is the OpenAI Python client's "
                    "default timeout, so a longer deadline would only serve clients that have given up. Keep Serve's "
                    "http_options.request_timeout_s (the proxy's backstop) a little above it.",
    )
    openapi_docs: bool = Field(
        True, description="Serve the interactive docs (/docs, /redoc) and the schema (/openapi.json); false: 404."
    )
    url_input: ServeURLInputConfig = Field(default_factory=ServeURLInputConfig)



class ServeDiarizationConfig(_Frozen):
    """Speaker diarization at the endpoint (the ``diarize`` extra): one diarizer per model replica, used by the
    requests that ask for it (``response_format=diarized_json``, or ``diarize=true`` with any format)."""

    enabled: bool = Field(False, description=(
        "Load a diarizer in each model replica (about 150 MB, 2 s) and accept diarization requests; off, they get "
        "400 diarization_unavailable."))
    options: DiarizationOptions = Field(default_factory=DiarizationOptions, description=(
        "How the diarizer runs (threads, embedding step, smoothing, merge similarity)."))


class ServeConfig(_Frozen):
    """The Serve endpoint: the same model, decoding and chunking models as the job (docs/architecture.md, invariant
    1), the job's input guards, plus how the model deployment and the HTTP ingress run."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    guards: ServeGuardsConfig = Field(default_factory=ServeGuardsConfig)
    deployment: ServeDeploymentConfig = Field(default_factory=ServeDeploymentConfig)
    http: ServeHTTPConfig = Field(default_factory=ServeHTTPConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    diarization: ServeDiarizationConfig = Field(default_factory=ServeDiarizationConfig)
    jobs: ServeJobsConfig = Field(default_factory=ServeJobsConfig)

