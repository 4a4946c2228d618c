"""The ingress application: :func:`create_app` (the FastAPI app of the routes in :mod:`serve_app.routes`, with the
upload and API-key middleware and the error handlers) and Serve's application builder :func:`build_app`
(docs/serving.md).

Start with ``serve run configs/serve.yaml`` (``build_app`` reads the ``args`` there). Nothing happens on import.
"""

from typing import Any, Optional

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.config import ServeConfig, load_serve_config
from pipelines.config.jobs import ALLOWED_PREFIXES_ENV, with_environment
from pipelines.core.errors import ConfigError
from pipelines.io.storage import Storage, resolve_storage
from serve_app.auth import APIKeyMiddleware, resolve_api_key
from serve_app.deployment import TranscriberDeployment
from serve_app.errors import install_error_handlers
from serve_app.jobs.cluster import RayJobs
from serve_app.jobs.routes import JobsState
from serve_app.jobs.routes import router as jobs_router
from serve_app.metrics import IngressMetrics
from serve_app.routes import ServeState, router
from serve_app.upload import FORM_OVERHEAD_BYTES, UploadLimitMiddleware


def create_app(cfg: ServeConfig, model: DeploymentHandle, api_key: Optional[str] = None,
               storage: Optional[Storage] = None, jobs: Optional[RayJobs] = None) -> FastAPI:
    """The FastAPI app of the ingress, calling the model deployment through ``model`` (a handle whose
    ``transcribe(job)`` returns a :class:`~pipelines.core.schema.Transcript` and ``ready()`` a dict).

    Args:
        cfg: the validated Serve config.
        model: the model deployment's handle.
        api_key: the key ``/v1`` routes require (None: no auth); see :func:`~serve_app.auth.resolve_api_key`.
        storage: how ``url`` requests and jobs' files are read (None: resolved now from ``cfg.storage`` and the
            environment).
        jobs: the Ray Jobs API of the job endpoints (None: ``cfg.jobs.dashboard_address``, reached on first use).
    """
    docs = {} if cfg.http.openapi_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="raywhisper", summary="OpenAI-compatible transcription with faster-whisper on Ray Serve",
                  **docs)
    app.state.metrics = IngressMetrics()
    app.state.serve = ServeState(cfg, model, storage or resolve_storage(cfg.storage), app.state.metrics)
    app.state.jobs = JobsState(cfg.jobs, app.state.serve.storage, jobs or RayJobs(cfg.jobs), api_key)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(jobs_router)
    app.add_middleware(APIKeyMiddleware, api_key=api_key)  # inside the upload limits: added first
    app.add_middleware(UploadLimitMiddleware, max_body_bytes=cfg.http.max_upload_bytes + FORM_OVERHEAD_BYTES,
                       timeout_s=cfg.http.request_timeout_s,
                       paths={"/v1/jobs": (cfg.jobs.max_upload_bytes + FORM_OVERHEAD_BYTES, cfg.jobs.upload_timeout_s)})
    return app


# --------------------------------------------------------------------------------------------- Serve wiring
@serve.deployment(name="TranscriptionIngress")
@serve.ingress()
class TranscriptionIngress:
    """The ingress deployment: builds :func:`create_app` in each replica (``__serve_build_asgi_app__``).

    Raises (from ``__init__``):
        ConfigError: ``http.api_key_env`` names an unset variable.
    """

    def __init__(self, cfg: ServeConfig, model: DeploymentHandle):
        self.cfg = cfg
        self.model = model
        self.api_key = resolve_api_key(cfg)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.cfg, self.model, self.api_key)


class ServeAppArgs(BaseModel):
    """The ``args`` of the application in ``configs/serve.yaml``: an optional YAML file of :class:`ServeConfig`
    sections, the sections inline (merged over the file), and ``section.field=value`` overrides (applied last)."""

    model_config = ConfigDict(extra="forbid")

    config: Optional[str] = Field(None, description="Path of a YAML file of ServeConfig sections.")
    overrides: list[str] = Field(default_factory=list, description="section.field=value overrides, applied last.")
    model: dict = Field(default_factory=dict, description="ServeConfig.model (pipelines.config.ModelConfig).")
    decoding: dict = Field(default_factory=dict, description="ServeConfig.decoding (DecodingConfig).")
    chunking: dict = Field(default_factory=dict, description="ServeConfig.chunking (ChunkingConfig).")
    guards: dict = Field(default_factory=dict, description="ServeConfig.guards (ServeGuardsConfig: input limits).")
    deployment: dict = Field(default_factory=dict, description="ServeConfig.deployment (the model replicas).")
    http: dict = Field(default_factory=dict, description="ServeConfig.http (the ingress).")
    storage: dict = Field(default_factory=dict, description="ServeConfig.storage (how url requests are read).")
    jobs: dict = Field(default_factory=dict, description="ServeConfig.jobs (asynchronous jobs, docs/jobs.md).")


def serve_config_from_args(args: ServeAppArgs) -> ServeConfig:
    """The validated :class:`ServeConfig` that ``args`` describe, with ``RAYWHISPER_JOBS_ALLOWED_PREFIXES`` (read
    now) added to ``jobs.allowed_prefixes``.

    Raises:
        ConfigError: bad file, unknown field or bad value (the message names the field).
    """
    sections = ("model", "decoding", "chunking", "guards", "deployment", "http", "storage", "jobs")
    inline = {name: getattr(args, name) for name in sections}
    cfg = load_serve_config(args.config, args.overrides, {k: v for k, v in inline.items() if v})
    try:
        jobs = with_environment(cfg.jobs)
    except ValidationError as exc:
        raise ConfigError(f"{ALLOWED_PREFIXES_ENV}: {exc.errors()[0]['msg']}") from exc
    return cfg.model_copy(update={"jobs": jobs})


def deployment_options(cfg: ServeConfig) -> dict:
    """``Deployment.options`` of the model deployment."""
    d = cfg.deployment
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": d.retry_after_s},
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
    }
    if d.autoscaling is not None:
        options["autoscaling_config"] = d.autoscaling.model_dump()
    else:
        options["num_replicas"] = d.num_replicas
    return options


def ingress_options(cfg: ServeConfig) -> dict:
    """``Deployment.options`` of the ingress."""
    h = cfg.http
    return {"num_replicas": h.num_replicas, "ray_actor_options": {"num_cpus": h.num_cpus},
            "max_ongoing_requests": h.max_ongoing_requests}


def build_app(args: ServeAppArgs) -> serve.Application:
    """Serve's application builder (``import_path: serve_app.app:build_app``): the ingress bound to the model
    deployment, both configured from ``args`` (see :class:`ServeAppArgs`).

    Raises:
        ConfigError: the config is invalid; pydantic.ValidationError: ``args`` has an unknown key.
    """
    if not isinstance(args, ServeAppArgs):
        args = ServeAppArgs.model_validate(args or {})
    cfg = serve_config_from_args(args)
    model = TranscriberDeployment.options(**deployment_options(cfg)).bind(cfg)
    return TranscriptionIngress.options(**ingress_options(cfg)).bind(cfg, model)
