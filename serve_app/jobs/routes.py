"""The job endpoints (docs/jobs.md): asynchronous transcription jobs, each a Ray Job running
``python -m pipelines.transcribe`` (:mod:`serve_app.jobs.cluster`).

- ``POST /v1/jobs``: JSON :class:`~serve_app.jobs.models.JobCreate` (``manifest`` or ``urls``, ``output``,
  ``config``, ``webhook_url``), or a multipart upload of one file (``file``, ``output``, ``config`` as a JSON
  object, ``webhook_url``) staged under ``jobs.staging_prefix``; 202 with the job.
- ``GET /v1/jobs``: the caller's jobs, newest first (``limit``, ``after``: the last id of the previous page).
- ``GET /v1/jobs/{id}``: status, progress with an ETA, the run summary once finished, the error once failed.
- ``GET /v1/jobs/{id}/transcripts``: output rows as JSON (``limit``, ``after``; ``id`` for one file), or one
  file as ``response_format`` = ``srt`` | ``vtt`` | ``text``.
- ``DELETE /v1/jobs/{id}``: stop the job; what it wrote stays, and submitting it again resumes it.

Every request passes :mod:`serve_app.jobs.policy` first (403 while jobs are off, prefixes, config keys, webhook);
a caller sees only the jobs submitted with its API key (others are 404). Errors are OpenAI's error bodies.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from pipelines.config.jobs import ServeJobsConfig
from pipelines.core.export import MEDIA_TYPES
from pipelines.io.manifest import ManifestRow
from pipelines.io.storage import Storage
from serve_app.jobs import policy
from serve_app.jobs.cluster import JobRecord, RayJobs, entrypoint, job_metadata
from serve_app.jobs.models import MAX_PAGE, Job, JobCreate, JobList, TranscriptList
from serve_app.jobs.rows import read_page, render_row
from serve_app.jobs.staging import safe_name, stage_manifest, stage_upload
from serve_app.jobs.view import job_view
from serve_app.schemas import APIError, request_error

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
#: Text fields a multipart job request may carry besides ``file``.
FORM_FIELDS = frozenset({"output", "config", "webhook_url"})


@dataclass(frozen=True)
class JobsState:
    """What the job routes use (``app.state.jobs``): the ``jobs`` config, storage, the Ray Jobs API and the
    endpoint's API key (None: no auth; every caller is :data:`~serve_app.jobs.policy.ANONYMOUS`)."""

    cfg: ServeJobsConfig
    storage: Storage
    ray: RayJobs
    api_key: Optional[str]


def jobs_state(request: Request) -> JobsState:
    """The app's :class:`JobsState`, once jobs are enabled (a FastAPI dependency).

    Raises:
        APIError: 403 ``jobs_disabled``.
    """
    state: JobsState = request.app.state.jobs
    policy.require_enabled(state.cfg)
    return state


def owner_of(request: Request) -> str:
    """The caller's identity: the hash of the API key it presented (the middleware checked it), or anonymous."""
    state: JobsState = request.app.state.jobs
    if state.api_key is None:
        return policy.ANONYMOUS
    return policy.key_hash(request.headers.get("authorization", "").partition(" ")[2].strip())


State = Annotated[JobsState, Depends(jobs_state)]
Owner = Annotated[str, Depends(owner_of)]


async def _thread(fn, *args):
    return await anyio.to_thread.run_sync(fn, *args)


# ------------------------------------------------------------------------------------------------------ submit
async def _parse(request: Request) -> tuple[JobCreate, Optional[UploadFile]]:
    """The request's :class:`JobCreate` and its upload, from JSON or a multipart form.

    Raises:
        APIError: 400 malformed body, unknown or missing field, bad value; 415 another content type.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload = None
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=len(FORM_FIELDS) + 1)
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name == "file" and isinstance(value, UploadFile):
                upload = value
            elif name in FORM_FIELDS and isinstance(value, str) and name not in fields:
                fields[name] = value
            else:
                raise APIError(400, f"unexpected or repeated form field {name!r}", code="unknown_parameter", param=name)
        if upload is None:
            raise APIError(400, "a multipart job request needs a 'file'", code="missing_required_parameter",
                           param="file")
        try:
            fields["config"] = json.loads(fields.get("config") or "{}")
        except json.JSONDecodeError as exc:
            raise APIError(400, "config must be a JSON object", code="invalid_value", param="config") from exc
        fields["urls"] = ["upload"]  # a placeholder input, replaced by the staged file
    elif ctype == "application/json":
        try:
            fields = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON ({exc})", code="invalid_body") from exc
        if not isinstance(fields, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_body")
    else:
        raise APIError(415, "send application/json or multipart/form-data", code="unsupported_media_type")
    try:
        return JobCreate.model_validate(fields), upload
    except ValidationError as exc:
        raise request_error(list(exc.errors())) from exc


def _check_limits(state: JobsState, owner: str, output: str) -> None:
    """Raises APIError 429 ``too_many_jobs`` (the caller's queued and running jobs at the limit) or 409
    ``output_in_use`` (a queued or running job writes that output)."""
    active = [r for r in state.ray.list(None) if r.active]
    mine = sum(r.metadata.get("owner") == owner for r in active)
    if mine >= state.cfg.max_running_jobs_per_key:
        raise APIError(429, f"{mine} of your jobs are queued or running; the limit is "
                            f"{state.cfg.max_running_jobs_per_key} (jobs.max_running_jobs_per_key): wait for one to "
                            "finish", code="too_many_jobs", headers={"Retry-After": "30"})
    busy = next((r.id for r in active if r.metadata.get("output") == output), None)
    if busy is not None:
        raise APIError(409, f"job {busy} is writing {output!r}; wait for it to finish or stop it first",
                       code="output_in_use", param="output")


def submit(state: JobsState, spec: JobCreate, upload: Optional[UploadFile], owner: str) -> Job:
    """Check ``spec`` (and stage the upload), then submit the job; returns it as queued (blocking: run it on a
    worker thread).

    Raises:
        APIError: the checks' 4xx (:mod:`serve_app.jobs.policy`), 429, 409, 503.
    """
    cfg = state.cfg
    output = policy.check_output(spec.output, cfg)
    overrides = policy.check_overrides(spec.config, cfg)
    webhook = policy.check_webhook(spec.webhook_url, cfg)
    _check_limits(state, owner, output)
    rows: list[ManifestRow] = []
    if upload is None and spec.manifest is not None:
        source, (_, rows) = spec.manifest, policy.check_manifest(spec.manifest, cfg, state.storage)
    elif upload is None:
        source, rows = "urls", policy.check_urls(spec.urls or [], cfg)
    job_id = f"rw-{uuid.uuid4().hex}"
    if upload is not None:
        name = safe_name(upload.filename or "upload")
        location = stage_upload(upload.file, name, cfg.staging_prefix, job_id, state.storage, cfg.max_upload_bytes)
        source, rows = f"upload:{name}", [ManifestRow(id=name, audio_filepath=location, uri=location, line=1)]
    manifest = stage_manifest(rows, cfg.staging_prefix, job_id, state.storage)
    metadata = job_metadata(owner, output, source, len(rows))
    command = entrypoint(manifest, output, job_id, overrides, cfg.job_config, webhook, cfg.python)
    state.ray.submit(job_id, command, metadata)
    record = JobRecord(job_id, "PENDING", None, None, None, metadata)
    return job_view(record, state.storage, with_details=False)


def _body_schema() -> dict:
    form = {"type": "object", "required": ["file", "output"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "One audio file (a long recording)."},
        "output": {"type": "string", "description": "Output folder URI under the allowed prefixes."},
        "config": {"type": "string", "description": "Config overrides as a JSON object."},
        "webhook_url": {"type": "string", "description": "http(s) URL under jobs.webhook_prefixes."}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": JobCreate.model_json_schema()},
        "multipart/form-data": {"schema": form}}}}


@router.post("", status_code=202, response_model=Job, openapi_extra=_body_schema())
async def create_job(request: Request, state: State, owner: Owner) -> JSONResponse:
    """Submit a transcription job: a manifest, a list of audio URLs, or one uploaded file; 202 with the job."""
    spec, upload = await _parse(request)
    job = await _thread(submit, state, spec, upload, owner)
    return JSONResponse(job.model_dump(mode="json"), status_code=202, headers={"Location": job.links["self"]})


# -------------------------------------------------------------------------------------------------------- read
@router.get("", response_model=JobList)
async def list_jobs(state: State, owner: Owner, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
                    after: Optional[str] = None) -> JobList:
    """The caller's jobs, newest first; ``after``: the last id of the previous page."""
    records = await _thread(state.ray.list, owner)
    if after is not None:
        ids = [r.id for r in records]
        if after not in ids:
            raise APIError(400, f"after={after!r} is not one of your jobs", code="invalid_value", param="after")
        records = records[ids.index(after) + 1:]
    page = [job_view(r, state.storage, with_details=False) for r in records[:limit]]
    return JobList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                   has_more=len(records) > limit)


def _job(state: JobsState, job_id: str, owner: str) -> Job:
    record = state.ray.get(job_id, owner)
    tail = state.ray.log_tail(job_id, state.cfg.log_tail_lines) if record.ray_status == "FAILED" else ""
    return job_view(record, state.storage, tail)


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: str, state: State, owner: Owner) -> Job:
    """The job's status, progress (with an ETA), run summary once finished and error once failed."""
    return await _thread(_job, state, job_id, owner)


def _transcripts(state: JobsState, job_id: str, owner: str, after: Optional[str], limit: int,
                 row_id: Optional[str]) -> tuple[list[dict], bool]:
    record = state.ray.get(job_id, owner)
    return read_page(record.metadata.get("output", ""), state.storage, after, limit, row_id)


@router.get("/{job_id}/transcripts", response_model=TranscriptList,
            responses={200: {"content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}}})
async def get_transcripts(job_id: str, state: State, owner: Owner,
                          limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20, after: Optional[str] = None,
                          id: Optional[str] = None,  # noqa: A002 - the API's name
                          response_format: Literal["json", "srt", "vtt", "text"] = "json") -> Any:
    """The job's output rows as JSON, ordered by id (``after``: the last id of the previous page; ``id``: one
    file), or one file (``id``) as SRT, VTT or text."""
    if response_format != "json" and id is None:
        raise APIError(400, f"response_format={response_format} needs the 'id' of one file", code="invalid_value",
                       param="id")
    rows, more = await _thread(_transcripts, state, job_id, owner, after, limit, id)
    if id is not None and not rows:
        raise APIError(404, f"job {job_id} has no row with id {id!r} (yet)", code="row_not_found", param="id")
    if response_format != "json":
        return Response(render_row(rows[0], response_format), media_type=MEDIA_TYPES[response_format])
    return TranscriptList(data=rows, first_id=rows[0]["id"] if rows else None,
                          last_id=rows[-1]["id"] if rows else None, has_more=more)


# ------------------------------------------------------------------------------------------------------ cancel
def _stop(state: JobsState, job_id: str, owner: str) -> Job:
    record = state.ray.get(job_id, owner)
    if record.active:
        state.ray.stop(job_id)
    return _job(state, job_id, owner)


@router.delete("/{job_id}", response_model=Job)
async def stop_job(job_id: str, state: State, owner: Owner) -> Job:
    """Stop the job (Ray sends its driver SIGTERM: the rows in hand are written, the lock released). What it wrote
    stays; submitting the same request again resumes it. A finished job is returned as it is."""
    return await _thread(_stop, state, job_id, owner)
