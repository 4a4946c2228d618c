"""One typed config for the job and the Serve app: pydantic models loaded from YAML.

Every setting is a field with a description; ``configs/*.yaml`` and ``--set key=value`` only fill them in.
Nothing here reads the environment or touches the disk at import time (docs/architecture.md, invariant 3).

Usage::

    cfg = load_config("configs/local.yaml", ["model.batch_size=16", "decoding.beam_size=1"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from pipelines.core.errors import ConfigError
from pipelines.core.options import (  # noqa: F401 - re-exported: the core owns them, the config holds them
    DEFAULT_TEMPERATURES,
    ChunkingConfig,
    DecodingConfig,
    FrozenModel as _Frozen,
    ModelConfig,
    config_fingerprint,
    row_fingerprint,
)


def _refuse_moved(data: Any, section: str, moved: dict[str, str]) -> Any:
    """Refuse a field that has moved elsewhere, saying where (a pydantic ``mode="before"`` check)."""
    if isinstance(data, dict):
        for old, new in moved.items():
            if old in data:
                raise ValueError(f"{section}.{old} has moved to {new}: set {new} instead (one knob for the job and "
                                 "the endpoint)")
    return data


class RayConfig(_Frozen):
    """Where the job runs."""

    address: Optional[str] = Field(
        None, description=(
            "Ray address to join ('auto', 'ray://host:10001'); None joins RAY_ADDRESS if set, else starts a local "
            "Ray; 'local' always starts a new local Ray."
        ),
    )
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of a local Ray started by the job (None: all).")
    include_dashboard: bool = Field(False, description="Start the dashboard with a local Ray.")
    node_ip_address: Optional[str] = Field(
        None, description="IP a local Ray started by the job binds to ('127.0.0.1' keeps it on loopback); None: Ray's choice."
    )


class DecodeStageConfig(_Frozen):
    """The CPU stage that decodes and VAD-chunks files (Ray Data ``map_batches`` actor pool)."""

    concurrency: int = Field(1, ge=1, description="Number of decode actors.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode actor.")
    files_per_batch: int = Field(4, ge=1, description="Files per decode call.")
    max_task_retries: int = Field(
        3, ge=0, description=(
            "Times Ray retries a batch whose decode actor died (killed, out of memory, node lost); the actor is "
            "restarted each time. See transcribe.max_task_retries for what happens after that."
        ),
    )


class TranscribeStageConfig(_Frozen):
    """The transcription actor pool (one model per actor)."""

    min_actors: int = Field(1, ge=1, description="Actors at start.")
    max_actors: int = Field(1, ge=1, description="Actors at most (autoscaling between min and max).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on GPU nodes).")
    max_cluster_gpus: Optional[float] = Field(
        None, ge=0, description=(
            "GPUs the cluster's autoscaler can reach (its GPU worker group's max_workers x GPUs per node), for the "
            "GPU pre-flight check: with too few GPUs in the cluster now, the job waits for the autoscaler when this "
            "is at least num_gpus, and stops at once otherwise. None: unknown (only GPUs present now count). Ray "
            "has no public API that reads the autoscaler's limits, so the config says it."),
    )
    files_per_batch: int = Field(16, ge=1, description="Files handed to an actor per call (their chunks are pooled).")
    max_retries_per_file: int = Field(1, ge=0, description="Retries of a file alone after its batch failed.")
    max_task_retries: int = Field(
        3, ge=0, description=(
            "Times Ray retries a batch whose transcription actor died (killed, out of memory, node lost); the "
            "actor is restarted each time. A batch that still fails is dropped and its files are retried one per "
            "batch; a file that kills its actor every time becomes an error row (WorkerDiedError). Finite, so a "
            "file that crashes the model cannot keep a job restarting actors forever."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved(data, "transcribe", {"batch_size": "model.batch_size"})


class OutputConfig(_Frozen):
    """How results are written."""

    rows_per_file: int = Field(256, ge=1, description="Rows per Parquet part file (a part is written atomically).")
    compression: str = Field("zstd", description="Parquet compression codec.")
    flush_interval_s: float = Field(
        60.0, gt=0,
        description="Longest a finished row waits in memory (s): once the oldest buffered row is this old, the rows "
                    "in hand are written as a part even if fewer than rows_per_file (checked on every write and by a "
                    "timer while no rows arrive). A killed driver loses at most about this much finished work.",
    )
    lock_stale_s: float = Field(
        300.0, gt=0,
        description="A run holds the output folder's lock (DIR/_lock.json) and refreshes it every lock_heartbeat_s; "
                    "a lock not refreshed for this long (s) is stale: its run is taken for dead and the next run "
                    "takes the lock over. Hosts writing one folder need clocks within a small part of this. A "
                    "lock left by a process of this host that is gone is taken over at once.",
    )
    lock_heartbeat_s: float = Field(
        30.0, gt=0,
        description="How often (s) a run refreshes its lock; at most a third of lock_stale_s. A run whose refresh "
                    "has failed for lock_stale_s stops writing (another run may have taken the folder over).",
    )

    @model_validator(mode="after")
    def _heartbeat_below_stale(self) -> "OutputConfig":
        if self.lock_heartbeat_s * 3 > self.lock_stale_s:
            raise ValueError(f"lock_heartbeat_s ({self.lock_heartbeat_s}) must be at most a third of lock_stale_s "
                             f"({self.lock_stale_s}), so a live run never looks stale")
        return self


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


class StreamGuardsConfig(_Frozen):
    """What an input's audio stream may be, checked from its header before it is decoded (and again on the first
    decoded frame): the part of the guards that the job (``JobConfig.guards``) and the endpoint
    (``ServeConfig.guards``) share, applied by the same code (``pipelines.core.audio.decode_audio``, ``limits``).
    A refused input becomes an error row in the job and a 400 at the endpoint."""

    min_sample_rate_hz: int = Field(
        4000, ge=1, description="Streams below this sample rate are refused (a 100 Hz 'wav' upsamples 160x; a 1 Hz "
                                "one 16000x: 3.6 KB declaring 1 Hz would decode to an hour, 230 MB of float32)."
    )
    max_sample_rate_hz: int = Field(384000, ge=1, description="Streams above this sample rate are refused.")
    max_channels: int = Field(64, ge=1, description="Streams with more channels than this are refused.")


class GuardsConfig(StreamGuardsConfig):
    """Limits that turn a hostile or broken input into an error row before it can exhaust memory, and the job's
    error-rate alarm. (The duration limit is ``chunking.max_audio_duration_s``.)"""

    max_file_bytes: int = Field(
        4 * 1024**3, ge=1, description=(
            "Files larger than this become error rows without being read (bytes; default 4 GiB: a 4 h 48 kHz stereo "
            "16-bit wav is 2.8 GB): local files by their stat, remote objects (s3://...) by their size from the "
            "storage (a HEAD). A decode actor holds a whole file in memory."
        ),
    )
    max_error_rate: Optional[float] = Field(
        None, ge=0, le=1, description=(
            "Fail the job (summary in capitals, exit code 3) when more than this fraction of the manifest's rows "
            "are error rows after the run; None: off."
        ),
    )


class JobConfig(_Frozen):
    """The whole batch job: every setting ``python -m pipelines.transcribe`` uses."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    decode: DecodeStageConfig = Field(default_factory=DecodeStageConfig)
    transcribe: TranscribeStageConfig = Field(default_factory=TranscribeStageConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    progress: bool = Field(True, description="Show Ray Data progress bars and a line per written part.")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a config tree; values are parsed as YAML (``1``, ``true``, ``[0, 0.2]``).

    Raises:
        ConfigError: an override without ``=`` or with an empty key.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. decoding.beam_size=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        _set_dotted(tree, key.strip(), value)
    return tree


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        # never echo what was given under storage: a refused value may be a credential
        given = "" if err["loc"][:1] == ("storage",) else f" (got {err.get('input')!r})"
        lines.append(f"  {field}: {err['msg']}{given}")
    return "\n".join(lines)


def load_tree(path: str | Path | None) -> dict:
    """Read a YAML config file into a dict ({} for None or an empty file).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or not a mapping.
    """
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Load a :class:`JobConfig` from a YAML file and ``--set`` overrides, validated once.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown field or bad value; the message names the field.
    """
    tree = apply_overrides(load_tree(path), overrides or [])
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path or "defaults"))) from exc


# --------------------------------------------------------------------------------------------- the Serve endpoint
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
        return _refuse_moved(data, "deployment", {"transcribe_batch_size": "model.batch_size"})

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


#: Schemes a ``url`` request may use: local files and object stores (never http(s): no server-side fetching).
URL_INPUT_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


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
        for prefix in value:
            scheme, sep, rest = prefix.partition("://")
            if not sep or not scheme or not rest.strip("/"):
                raise ValueError(f"{prefix!r}: expected 'file:///absolute/dir/' or 's3://bucket/prefix/'")
            if scheme not in URL_INPUT_SCHEMES:
                raise ValueError(f"{prefix!r}: the scheme must be one of {', '.join(sorted(URL_INPUT_SCHEMES))} "
                                 "(the server never fetches http(s) URLs)")
            if scheme == "file" and not rest.startswith("/"):
                raise ValueError(f"{prefix!r}: a file:// prefix needs an absolute path (file:///srv/audio/)")
            if any(part in (".", "..") for part in rest.split("/")):
                raise ValueError(f"{prefix!r}: '.' and '..' are not allowed in a prefix")
        return value

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


class ServeGuardsConfig(StreamGuardsConfig):
    """The endpoint's input guards: the job's stream limits (sample rate, channels; same type, same checks) and a
    duration limit for one request. The size limit is ``http.max_upload_bytes`` (uploads and ``url`` reads)."""

    max_audio_duration_s: float = Field(
        1800.0, gt=0,
        description="Longest audio one request may carry (s); refused with 400 audio_too_long before decoding when "
                    "the container declares its duration, else once decoding passes it. The job allows "
                    "chunking.max_audio_duration_s (4 h); the endpoint takes the smaller of the two. 30 min bounds "
                    "what one request costs: 115 MB of float32 samples in the ingress while it is chunked, and a "
                    "transcription that ends well inside http.request_timeout_s. The upload limit does not bound "
                    "duration: 25 MB of 32 kb/s Opus is 1.7 h.",
    )


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


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_serve_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      inline: dict | None = None) -> ServeConfig:
    """Load a :class:`ServeConfig`: the YAML file at ``path``, then the ``inline`` sections merged over it (the
    ``args`` of ``configs/serve.yaml``), then ``section.field=value`` overrides; validated once.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown field or bad value; the message names the field.
    """
    tree = _deep_merge(load_tree(path), inline or {})
    tree = apply_overrides(tree, overrides or [])
    try:
        return ServeConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path or "serve args"))) from exc
