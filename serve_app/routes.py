"""The ingress routes (OpenAI-compatible under ``/v1``; docs/serving.md):

- ``POST /v1/audio/transcriptions``: multipart ``file`` plus ``model``, ``language``, ``prompt``, ``temperature``,
  ``response_format`` (json | text | srt | vtt | verbose_json | diarized_json), ``timestamp_granularities[]``
  (segment | word), ``diarize``, ``num_speakers``, ``min_speakers``, ``max_speakers``, ``known_speaker_names[]`` and
  ``known_speaker_references[]`` (speaker diarization, where the server enables it);
  or, instead of ``file``, a ``url`` (``s3://``, ``file://``) where ``http.url_input`` allows it
  (:mod:`serve_app.url_input`).
- ``GET /v1/models``: the served model names.
- ``GET /health`` and ``/health/live`` (the process answers), ``GET /health/ready`` (a model replica is up: model
  loaded and its warm-up inference passed).

FastAPI reads and validates the form (:class:`~serve_app.schemas.TranscriptionForm`: unknown fields refused, at
most one file and :data:`~serve_app.upload.MAX_FORM_FIELDS` fields); the route prepares the audio with the batch
job's engine (:mod:`serve_app.preparation`), calls the model deployment under the request's deadline
(``http.request_timeout_s``) and renders the transcript with :mod:`pipelines.core.export`. The API key and the
upload's size and time are checked by middleware before the body is read (:mod:`serve_app.auth`,
:mod:`serve_app.upload`). Errors: 400 bad field / not audio / empty file / outside the guards, 401 API key, 408
upload not received in time, 413 upload too large, 503 + Retry-After when the model's queue is full, 504 decode and
transcription not done in time, 500 when the model fails (:mod:`serve_app.errors`).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import anyio
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, Response

from pipelines.config import ServeConfig
from pipelines.core.export import MEDIA_TYPES, diarized_json, export_text, to_json, verbose_json
from pipelines.core.schema import Transcript
from pipelines.io.storage import Storage
from serve_app.errors import TRANSCRIPTIONS_PATH, error_response, format_tag, model_error, server_error
from serve_app.metrics import IngressMetrics
from serve_app.preparation import check_request, load_input, prepare_job
from serve_app.schemas import APIError, TranscriptionForm, TranscriptionJob, TranscriptionRequest
from serve_app.upload import MAX_FORM_FIELDS

router = APIRouter()
REPEATABLE_FIELDS = frozenset({"timestamp_granularities[]", "timestamp_granularities", "known_speaker_names[]",
                               "known_speaker_names", "known_speaker_references[]", "known_speaker_references"})


@dataclass(frozen=True)
class ServeState:
    """What the routes use, held in ``app.state.serve`` by :func:`serve_app.app.create_app`: the config, the model
    deployment's handle (``transcribe(job)`` -> Transcript, ``ready()`` -> dict), how ``url`` requests are read,
    and the ingress metrics."""

    cfg: ServeConfig
    model: Any
    storage: Storage
    metrics: IngressMetrics


def serve_state(request: Request) -> ServeState:
    """The app's :class:`ServeState` (a FastAPI dependency)."""
    return request.app.state.serve


State = Annotated[ServeState, Depends(serve_state)]


async def inspect_form(request: Request) -> None:
    """A dependency run before the form is validated: note its ``response_format`` for the metrics, and refuse a
    field given twice (only the list fields of :data:`REPEATABLE_FIELDS` repeat).

    Raises:
        APIError: 400 ``invalid_value`` naming the repeated field.
    """
    form = await request.form()  # the form FastAPI has read already (parsed once, under the route's limits)
    request.state.response_format = format_tag(form.get("response_format"))
    seen: set[str] = set()
    for name, _ in form.multi_items():
        if name in seen and name not in REPEATABLE_FIELDS:
            raise APIError(400, f"parameter {name!r} is given more than once", code="invalid_value", param=name)
        seen.add(name)


def render(transcript: Transcript, request: TranscriptionRequest, task: str) -> Response:
    """The response body for ``request.response_format`` (:mod:`pipelines.core.export`)."""
    fmt = request.response_format
    if fmt == "json":
        return JSONResponse(to_json(transcript))
    if fmt == "verbose_json":
        return JSONResponse(verbose_json(transcript, request.timestamp_granularities, task))
    if fmt == "diarized_json":
        return JSONResponse(diarized_json(transcript))
    return Response(export_text(transcript, fmt), media_type=MEDIA_TYPES[fmt])


async def _in_thread(fn, *args):
    """``fn(*args)`` on a worker thread; a deadline that passes stops the wait at once (the thread finishes on its
    own: decoding is bounded by the guards, a url read by the size limit and the storage retries)."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def transcribe(request: TranscriptionRequest, upload: Optional[tuple[bytes, str]], state: ServeState,
                     deadline: float) -> tuple[Transcript, TranscriptionJob]:
    """Read the audio (``upload`` or ``request.url``), prepare it and have the model deployment transcribe it, all
    before ``deadline`` (the event loop's clock).

    Raises:
        APIError: the preparation's 4xx; 504 ``timeout`` at the deadline (the model call is cancelled); the model
            call's errors (:func:`~serve_app.errors.model_error`).
    """
    cfg, call = state.cfg, None
    try:
        async with asyncio.timeout_at(deadline) as timer:
            data, filename = await _in_thread(load_input, request, upload, cfg, state.storage)
            job = await _in_thread(prepare_job, data, filename, request, cfg)
            call = state.model.transcribe.remote(job)
            return await call, job
    except TimeoutError as exc:
        if not timer.expired():
            raise
        if call is not None:
            call.cancel()  # best effort: frees the replica's slot (Serve's cancellation)
        raise APIError(504, f"the transcription did not finish within {cfg.http.request_timeout_s:g} s "
                            "(http.request_timeout_s); send shorter audio", code="timeout") from exc
    except Exception as exc:  # noqa: BLE001 - every failure becomes an APIError with OpenAI's body
        err = model_error(exc, cfg.deployment.retry_after_s)
        if err is exc:
            raise
        raise err from exc


@router.post(TRANSCRIPTIONS_PATH, form_limits={"max_files": 1, "max_fields": MAX_FORM_FIELDS},
             dependencies=[Depends(inspect_form)])
async def transcriptions(request: Request, state: State,
                         form: Annotated[TranscriptionForm, Form(media_type="multipart/form-data")]) -> Response:
    """OpenAI's ``audio.transcriptions.create``: the audio file (or, where allowed, its url) and options."""
    parsed = form.request()
    check_request(parsed, form.file is not None, state.cfg)
    upload = None if form.file is None else (await form.file.read(), form.file.filename or "file")
    deadline = getattr(request.state, "deadline", asyncio.get_running_loop().time() + state.cfg.http.request_timeout_s)
    transcript, job = await transcribe(parsed, upload, state, deadline)
    response = render(transcript, parsed, state.cfg.decoding.task)
    started = getattr(request.state, "started", time.perf_counter())
    state.metrics.record(parsed.response_format, response.status_code, time.perf_counter() - started,
                         audio_s=job.duration_s)
    return response


@router.get("/health")
async def health() -> dict:
    """The ingress process is up."""
    return {"status": "ok"}


@router.get("/health/live")
async def live() -> dict:
    """Liveness: the ingress answers (its event loop is not stuck)."""
    return {"status": "alive"}


@router.get("/health/ready")
async def ready(state: State) -> JSONResponse:
    """Readiness: a model replica answers; it exists only once its model loaded and a warm-up inference passed.
    503 if none answers within ``http.ready_timeout_s``."""
    cfg = state.cfg

    async def ask():
        return await state.model.ready.remote()

    try:
        info = await asyncio.wait_for(ask(), timeout=cfg.http.ready_timeout_s)
    except Exception as exc:  # noqa: BLE001 - not ready, whatever the reason; the reason goes to the log only
        reason = (f"no model replica answered within {cfg.http.ready_timeout_s:g} s"
                  if isinstance(exc, asyncio.TimeoutError) else "no model replica is available")
        retry_after = str(max(1, math.ceil(cfg.deployment.retry_after_s)))
        err = APIError(503, f"the model is not ready ({reason})", code="not_ready",
                       headers={"Retry-After": retry_after})
        return error_response(server_error(err, exc))
    return JSONResponse(info)


@router.get("/v1/models")
async def models(state: State) -> dict:
    """OpenAI's model list: the served model and its aliases (the API key is checked by the middleware)."""
    names = (state.cfg.model.name, *state.cfg.http.model_aliases)
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "raywhisper"} for name in names]}
