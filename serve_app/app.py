"""The HTTP ingress (FastAPI) and the application builder.

Routes (OpenAI-compatible under ``/v1``):

- ``POST /v1/audio/transcriptions``: multipart ``file`` plus ``model``, ``language``, ``prompt``, ``temperature``,
  ``response_format`` (json | text | srt | vtt | verbose_json), ``timestamp_granularities[]`` (segment | word);
  or, instead of ``file``, a ``url`` (``s3://``, ``file://``) where ``http.url_input`` allows it
  (:mod:`serve_app.url_input`).
- ``GET /v1/models``: the served model names.
- ``GET /health`` and ``/health/live`` (the process answers), ``GET /health/ready`` (a model replica is up: model
  loaded and its warm-up inference passed).

The transport is thin: a route checks the API key, reads and validates the form into a
:class:`~serve_app.schemas.TranscriptionRequest`, decodes and VAD-chunks the upload exactly as the batch job does
(``pipelines.core``) with the job's input guards (``guards``: sample rate, channels, duration; size is
``http.max_upload_bytes``), calls the model deployment, and maps exceptions to HTTP codes. The whole request runs
under a deadline (``http.request_timeout_s``). Errors have OpenAI's body
``{"error": {"message", "type", "param", "code"}}``: 400 bad field / not audio / empty file / outside the guards,
401 API key, 408 upload not received in time, 413 upload too large, 503 + Retry-After when the model's queue is
full, 504 decode and transcription not done in time, 500 when the model fails. Every 5xx body carries an
``error_id`` and a generic message; the details go to the log with that id (:func:`server_error`).

Start with ``serve run configs/serve.yaml`` (``build_app`` reads the ``args`` there). Nothing happens on import.
"""

import asyncio
import hmac
import logging
import math
import os
import time
import uuid
from typing import Any, Optional

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from pipelines.config import ServeConfig, StreamGuardsConfig, load_serve_config
from pipelines.core.audio import SourceLimits, decode_audio
from pipelines.core.chunking import chunk_audio, slice_chunk
from pipelines.core.errors import AudioDecodeError, AudioLimitError, AudioTooLongError, ConfigError
from pipelines.core.export import MEDIA_TYPES, export_text
from pipelines.core.schema import Transcript
from pipelines.core.transcriber import Chunk
from pipelines.io.storage import Storage, resolve_storage
from serve_app.deployment import TranscriberDeployment
from serve_app.metrics import IngressMetrics
from serve_app.schemas import (
    APIError,
    TranscriptionJob,
    TranscriptionRequest,
    api_error_of,
    effective_decoding,
    json_response,
    verbose_json_response,
)
from serve_app.url_input import read_url

log = logging.getLogger(__name__)

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the text fields, allowed on top of max_upload_bytes
MAX_FORM_FIELDS = 32  # text fields accepted in one form (the API has 7)


# ------------------------------------------------------------------------------------------------------ helpers
def server_error(err: APIError, exc: Optional[BaseException] = None) -> APIError:
    """Give a 5xx ``err`` its ``error_id`` (uuid4 hex; kept if the model deployment already set one) and log it
    with the full text of ``exc`` and its traceback, which never go into the response body. 4xx pass unchanged.

    Returns:
        ``err``, for ``raise`` / ``return``.
    """
    if err.status_code < 500:
        return err
    err.error_id = err.error_id or uuid.uuid4().hex
    detail = f": {type(exc).__name__}: {exc}" if exc is not None and exc is not err else ""
    log.error("error_id=%s status=%d code=%s %s%s", err.error_id, err.status_code, err.code, err.message, detail,
              exc_info=exc if detail else None)
    return err


def error_response(err: APIError) -> JSONResponse:
    """``err`` as a JSON response with OpenAI's error body and ``err.headers``; a 5xx that did not pass through
    :func:`server_error` yet gets its error id (and log line) here."""
    if err.status_code >= 500 and err.error_id is None:
        server_error(err)
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


def source_limits(guards: StreamGuardsConfig) -> SourceLimits:
    """The :class:`SourceLimits` of a guards section, as the job's decode stage builds them."""
    return SourceLimits(guards.min_sample_rate_hz, guards.max_sample_rate_hz, guards.max_channels)


def resolve_api_key(cfg: ServeConfig) -> Optional[str]:
    """The API key requests must carry: the variable named by ``http.api_key_env``, else ``http.api_key``;
    None when neither is set (no auth).

    Raises:
        ConfigError: ``http.api_key_env`` names a variable that is unset or empty (refuse to run open).
    """
    http = cfg.http
    if http.api_key_env:
        value = os.environ.get(http.api_key_env, "")
        if not value:
            raise ConfigError(f"http.api_key_env names {http.api_key_env!r}, which is not set or empty")
        return value
    return http.api_key.get_secret_value() if http.api_key else None


def check_api_key(request: Request, api_key: Optional[str]) -> None:
    """Raises APIError 401 unless ``Authorization: Bearer <api_key>`` is present (no-op when no key is set)."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key",
                       headers=challenge)
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key", headers=challenge)


def prepare_job(data: bytes, filename: str, request: TranscriptionRequest, cfg: ServeConfig) -> TranscriptionJob:
    """Decode the upload to float32 16 kHz mono and cut it into VAD chunks, as the batch job's decode stage does:
    the same ``decode_audio`` with the same stream limits (``guards``) and a duration limit, the smaller of
    ``guards.max_audio_duration_s`` and ``chunking.max_audio_duration_s``; then the job's ``chunk_audio``.

    Raises:
        APIError: 400 ``invalid_audio`` (not decodable audio), ``audio_out_of_limits`` (sample rate or channels
            outside ``guards``; the message names the field) or ``audio_too_long`` (above the duration limit).
    """
    ck, guards = cfg.chunking, cfg.guards
    max_duration_s = min(guards.max_audio_duration_s, ck.max_audio_duration_s)
    try:
        audio = decode_audio(data, ck.sample_rate, max_duration_s, name=filename, limits=source_limits(guards))
    except AudioTooLongError as exc:
        message = str(exc)
        if guards.max_audio_duration_s < ck.max_audio_duration_s:  # decode_audio names the job's field
            message = message.replace("chunking.max_audio_duration_s", "guards.max_audio_duration_s")
        raise APIError(400, message, code="audio_too_long", param="file") from exc
    except AudioLimitError as exc:
        raise APIError(400, str(exc), code="audio_out_of_limits", param="file") from exc
    except AudioDecodeError as exc:
        raise APIError(400, f"the file is not audio that can be decoded: {exc}", code="invalid_audio",
                       param="file") from exc
    key = uuid.uuid4().hex
    chunks = tuple(
        Chunk(key=key, index=i, offset_s=span.offset_s,
              samples=np.ascontiguousarray(slice_chunk(audio.samples, span, ck.sample_rate)),
              language=request.language, prompt=request.prompt,
              pack_group=key)  # never share a window with another caller's audio
        for i, span in enumerate(chunk_audio(audio.samples, ck))
    )
    return TranscriptionJob(key=key, duration_s=audio.duration_s, chunks=chunks,
                            decoding=effective_decoding(cfg.decoding, request), language=request.language)


def render(transcript: Transcript, request: TranscriptionRequest, task: str) -> Response:
    """The response body for ``request.response_format``."""
    fmt = request.response_format
    if fmt == "json":
        return JSONResponse(json_response(transcript))
    if fmt == "verbose_json":
        return JSONResponse(verbose_json_response(transcript, request.timestamp_granularities, task))
    return Response(export_text(transcript, fmt), media_type=MEDIA_TYPES[fmt])


class UploadLimitMiddleware:
    """Pure ASGI middleware: a POST whose ``Content-Length`` is above ``max_body_bytes`` gets 413 before its body
    is read; a body without one (chunked) raises APIError 413 from ``receive`` once it passes the limit."""

    def __init__(self, app, max_body_bytes: int, on_reject=None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    def _error(self, size: str) -> APIError:
        limit_mb = (self.max_body_bytes - FORM_OVERHEAD_BYTES) / 1e6
        return APIError(413, f"the upload is too large ({size}); the limit is {limit_mb:.1f} MB",
                        code="file_too_large", param="file")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            err = self._error(f"{int(length) / 1e6:.1f} MB")
            if self.on_reject:
                self.on_reject(err)
            await error_response(err)(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise self._error(f"more than {self.max_body_bytes / 1e6:.1f} MB")
            return message

        await self.app(scope, limited_receive, send)


async def _read_form(request: Request):
    try:
        return await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except MultiPartException as exc:
        raise APIError(400, f"malformed multipart/form-data body: {exc.message}", code="invalid_body") from exc


def _form_fields(form) -> dict[str, Any]:
    """Text fields of the form; ``timestamp_granularities[]`` (repeated) becomes ``timestamp_granularities``."""
    fields: dict[str, Any] = {}
    granularities: list[str] = []
    for name, value in form.multi_items():
        if name == "file":
            continue
        if isinstance(value, UploadFile):
            raise APIError(400, f"parameter {name!r} must be a text field, not a file", code="invalid_value",
                           param=name)
        if name in ("timestamp_granularities[]", "timestamp_granularities"):
            granularities.append(value)
        elif name in fields:
            raise APIError(400, f"parameter {name!r} is given more than once", code="invalid_value", param=name)
        else:
            fields[name] = value
    if granularities:
        fields["timestamp_granularities"] = granularities
    return fields


def _form_openapi() -> dict:
    """The multipart request body for the OpenAPI docs (the route reads the form itself)."""
    schema = TranscriptionRequest.model_json_schema()
    schema["properties"] = {"file": {"type": "string", "format": "binary",
                                     "description": "The audio file (required unless 'url' is given)."},
                            **schema["properties"],
                            "timestamp_granularities[]": schema["properties"].pop("timestamp_granularities")}
    schema["required"] = [*schema.get("required", [])]
    schema["description"] = "OpenAI's transcription form: the audio file (or, where allowed, its url) and options."
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _format_tag(value: Any) -> str:
    """A bounded metrics tag for the requested response_format."""
    value = value or "json"
    return value if value in ("json", "text", "srt", "vtt", "verbose_json") else "invalid"


# ---------------------------------------------------------------------------------------------------- the app
def create_app(cfg: ServeConfig, model: DeploymentHandle, api_key: Optional[str] = None,
               storage: Optional[Storage] = None) -> FastAPI:
    """The FastAPI app of the ingress, calling the model deployment through ``model`` (a handle whose
    ``transcribe(job)`` returns a :class:`Transcript` and ``ready()`` a dict).

    Args:
        cfg: the validated Serve config.
        model: the model deployment's handle.
        api_key: the key ``/v1`` routes require (None: no auth); see :func:`resolve_api_key`.
        storage: how ``url`` requests are read (None: resolved now from ``cfg.storage`` and the environment).
    """
    storage = storage or resolve_storage(cfg.storage)
    docs = {} if cfg.http.openapi_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="raywhisper", summary="OpenAI-compatible transcription with faster-whisper on Ray Serve",
                  **docs)
    metrics = IngressMetrics()
    served_names = (cfg.model.name, *cfg.http.model_aliases)
    retry_after = str(max(1, math.ceil(cfg.deployment.retry_after_s)))

    def reject_upload(err: APIError) -> None:
        metrics.record("unknown", err.status_code, 0.0, error_code=err.code)

    app.add_middleware(UploadLimitMiddleware, max_body_bytes=cfg.http.max_upload_bytes + FORM_OVERHEAD_BYTES,
                       on_reject=reject_upload)

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=code,
                                       headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # anything a route did not map itself: 500 with an error id, never the exception's text
        return error_response(server_error(APIError(500, "internal error", code="internal_error"), exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in err["loc"] if p not in ("body", "query")) or None
        return error_response(APIError(400, f"invalid {param or 'request'}: {err['msg']}", code="invalid_value",
                                       param=param))

    @app.get("/health")
    async def health() -> dict:
        """The ingress process is up."""
        return {"status": "ok"}

    @app.get("/health/live")
    async def live() -> dict:
        """Liveness: the ingress answers (its event loop is not stuck)."""
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        """Readiness: a model replica answers; it exists only once its model loaded and a warm-up inference
        passed. 503 if none answers within ``http.ready_timeout_s``."""

        async def ask():
            return await model.ready.remote()

        try:
            info = await asyncio.wait_for(ask(), timeout=cfg.http.ready_timeout_s)
        except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason; the reason goes to the log only
            reason = (f"no model replica answered within {cfg.http.ready_timeout_s:g} s"
                      if isinstance(exc, asyncio.TimeoutError) else "no model replica is available")
            err = APIError(503, f"the model is not ready ({reason})", code="not_ready",
                           headers={"Retry-After": retry_after})
            return error_response(server_error(err, exc))
        return JSONResponse(info)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        """OpenAI's model list: the served model and its aliases."""
        check_api_key(request, api_key)
        return {"object": "list",
                "data": [{"id": name, "object": "model", "owned_by": "raywhisper"} for name in served_names]}

    @app.post("/v1/audio/transcriptions", openapi_extra=_form_openapi())
    async def transcriptions(request: Request) -> Response:
        """OpenAI's ``audio.transcriptions.create`` (see the module doc for fields and error codes)."""
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + cfg.http.request_timeout_s
        fmt = "unknown"
        response_of_model = None  # the model call, cancelled when the deadline passes

        async def receive() -> tuple[TranscriptionRequest, bytes, str]:
            """The validated form fields, and the upload's bytes and name (empty for a ``url`` request)."""
            nonlocal fmt
            form = await _read_form(request)
            try:
                fields = _form_fields(form)
                fmt = _format_tag(fields.get("response_format"))
                parsed = TranscriptionRequest.from_form(fields)
                if parsed.model not in served_names:
                    raise APIError(400, f"model {parsed.model!r} is not served here; use one of {list(served_names)}",
                                   code="model_not_found", param="model")
                upload = form.get("file")
                if parsed.url is not None and upload is not None:
                    raise APIError(400, "give either 'file' or 'url', not both", code="invalid_value", param="url")
                if parsed.url is not None:
                    return parsed, b"", ""
                if upload is None:
                    alternative = " or 'url'" if cfg.http.url_input.enabled else ""
                    raise APIError(400, f"missing required parameter 'file' (the audio, as a multipart file)"
                                        f"{alternative}", code="missing_required_parameter", param="file")
                if not isinstance(upload, UploadFile):
                    raise APIError(400, "parameter 'file' must be a file upload, not a text field",
                                   code="invalid_value", param="file")
                return parsed, await upload.read(), upload.filename or "file"
            finally:
                await form.close()

        try:
            check_api_key(request, api_key)
            try:
                async with asyncio.timeout_at(deadline) as upload_timer:
                    parsed, data, filename = await receive()
            except TimeoutError as exc:
                if not upload_timer.expired():
                    raise
                raise APIError(408, f"the request was not received within {cfg.http.request_timeout_s:g} s "
                                    "(http.request_timeout_s)", code="upload_timeout") from exc
            try:
                async with asyncio.timeout_at(deadline) as work_timer:
                    if parsed.url is not None:
                        data, filename = await _in_thread(read_url, parsed.url, cfg.http.url_input, storage,
                                                          cfg.http.max_upload_bytes)
                    if len(data) > cfg.http.max_upload_bytes:
                        raise APIError(413, f"the file is too large ({len(data) / 1e6:.1f} MB); the limit is "
                                            f"{cfg.http.max_upload_bytes / 1e6:.1f} MB", code="file_too_large",
                                       param="file")
                    if not data:
                        raise APIError(400, f"the file {filename!r} is empty (0 bytes)", code="empty_file",
                                       param="file")
                    job = await _in_thread(prepare_job, data, filename, parsed, cfg)
                    response_of_model = model.transcribe.remote(job)
                    transcript = await response_of_model
            except TimeoutError as exc:
                if not work_timer.expired():
                    raise
                if response_of_model is not None:
                    response_of_model.cancel()  # best effort: frees the replica's slot (Serve's cancellation)
                raise APIError(504, f"the transcription did not finish within {cfg.http.request_timeout_s:g} s "
                                    "(http.request_timeout_s); send shorter audio", code="timeout") from exc
            response = render(transcript, parsed, cfg.decoding.task)
        except BackPressureError as exc:
            wait = exc.retry_after_s if exc.retry_after_s is not None else cfg.deployment.retry_after_s
            err = APIError(503, f"the server is at capacity; retry after {max(1, math.ceil(wait))} s",
                           code="server_overloaded", headers={"Retry-After": str(max(1, math.ceil(wait)))})
            return _failed(err, fmt, t0, exc)
        except (ActorDiedError, ActorUnavailableError) as exc:
            err = APIError(503, "the model replica is unavailable; retry shortly", code="model_unavailable",
                           headers={"Retry-After": retry_after})
            return _failed(err, fmt, t0, exc)
        except Exception as exc:  # noqa: BLE001 - every failure gets a JSON error body
            err = api_error_of(exc)
            if err is None:
                err = APIError(500, "internal error", code="internal_error")
            return _failed(err, fmt, t0, exc)
        metrics.record(fmt, response.status_code, time.perf_counter() - t0, audio_s=job.duration_s)
        return response

    def _failed(err: APIError, fmt: str, t0: float, exc: Optional[BaseException] = None) -> JSONResponse:
        metrics.record(fmt, err.status_code, time.perf_counter() - t0, error_code=err.code)
        return error_response(server_error(err, exc))

    return app


async def _in_thread(fn, *args):
    """``fn(*args)`` on a worker thread; a deadline that passes stops the wait at once (the thread finishes on its
    own: decoding is bounded by the guards, a url read by the size limit and the storage retries)."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


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


def serve_config_from_args(args: ServeAppArgs) -> ServeConfig:
    """The validated :class:`ServeConfig` that ``args`` describe.

    Raises:
        ConfigError: bad file, unknown field or bad value (the message names the field).
    """
    sections = ("model", "decoding", "chunking", "guards", "deployment", "http", "storage")
    inline = {name: getattr(args, name) for name in sections}
    return load_serve_config(args.config, args.overrides, {k: v for k, v in inline.items() if v})


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
