"""Request and response shapes of the job endpoints (``/v1/jobs``, docs/jobs.md); they are also what the OpenAPI
schema lists. Lists have OpenAI's list shape: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

JobStatusName = Literal["queued", "running", "succeeded", "failed", "stopped"]
#: Ray's JobStatus -> the endpoint's status.
STATUS_OF_RAY = {"PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
                 "STOPPED": "stopped"}
#: Statuses after which nothing changes.
FINAL_STATUSES = frozenset({"succeeded", "failed", "stopped"})
#: Most items one page of a list may hold.
MAX_PAGE = 100


def status_of(ray_status: Any) -> str:
    """The endpoint's status for Ray's ``JobStatus`` (or its name): PENDING -> queued, RUNNING -> running,
    SUCCEEDED -> succeeded, FAILED -> failed, STOPPED -> stopped.

    Raises:
        ValueError: a status Ray does not have.
    """
    name = getattr(ray_status, "value", ray_status)
    try:
        return STATUS_OF_RAY[str(name)]
    except KeyError:
        raise ValueError(f"unknown Ray job status {name!r}") from None


class JobCreate(BaseModel):
    """``POST /v1/jobs`` as JSON: the audio (``manifest`` or ``urls``, one of them), where the transcripts go, and
    optional config overrides and webhook."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: Optional[str] = Field(None, description=(
        "URI of a manifest (JSONL/CSV/Parquet, a folder or a glob: what python -m pipelines.transcribe reads), "
        "under the server's allowed prefixes, as every audio file it lists."))
    urls: Optional[list[str]] = Field(None, min_length=1, description=(
        "Audio file URIs (s3://..., file:///...) under the allowed prefixes; each row's id is its URL."))
    output: str = Field(description="Output folder URI (Parquet parts) under the allowed prefixes.")
    config: dict[str, Any] = Field(default_factory=dict, description=(
        "Config overrides, the keys of --set: {\"decoding.beam_size\": 1}; only jobs.allowed_overrides."))
    webhook_url: Optional[str] = Field(None, description=(
        "http(s) URL under jobs.webhook_prefixes; the job POSTs a JSON event there once when it ends."))

    @model_validator(mode="after")
    def _one_input(self) -> "JobCreate":
        if (self.manifest is None) == (self.urls is None):
            raise ValueError("give exactly one of 'manifest' and 'urls'")
        return self


class JobProgress(BaseModel):
    """How far a job is (from its progress object, ``OUT/_progress.json``); counts never go down."""

    phase: str = Field(description="starting | transcribing | done | failed | stopped (the job's own view).")
    files_total: int = Field(description="Rows of the job's manifest.")
    files_done: int = Field(description="Manifest rows with a row in the output (found done at start included).")
    files_kept: int = Field(description="Rows found done when the run started (a resumed job).")
    rows: dict[str, int] = Field(description="ok / empty / error among files_done.")
    audio_s_done: float = Field(description="Seconds of audio this run transcribed.")
    audio_s_total: Optional[float] = Field(None, description="Seconds of audio in all (null: not known up front).")
    eta_s: Optional[float] = Field(None, description=(
        "Seconds until done at this run's pace in files per second (null until it has one, and when finished)."))
    started_at: Optional[int] = Field(None, description="When the run started (Unix seconds).")
    updated_at: Optional[int] = Field(None, description="When the progress object was last written (Unix seconds).")


class JobErrorInfo(BaseModel):
    """Why a job failed: Ray's message and the end of the job's log, with credentials scrubbed."""

    message: str
    log_tail: Optional[str] = None


class Job(BaseModel):
    """A transcription job (a Ray Job running ``python -m pipelines.transcribe``)."""

    id: str = Field(description="The job id (the Ray Job's submission id, also the run id in the output).")
    object: Literal["transcription.job"] = "transcription.job"
    status: JobStatusName
    created_at: int = Field(description="Unix seconds.")
    finished_at: Optional[int] = Field(None, description="Unix seconds, once finished.")
    input: str = Field(description="What was submitted: the manifest URI, 'urls', or 'upload:<file name>'.")
    output: str = Field(description="The output folder.")
    files: int = Field(description="Rows of the job's manifest.")
    progress: Optional[JobProgress] = None
    summary: Optional[dict[str, Any]] = Field(None, description="The run summary (OUT/_runs/<id>.json) once finished.")
    error: Optional[JobErrorInfo] = None
    links: dict[str, str] = Field(default_factory=dict, description="self, transcripts.")


class JobList(BaseModel):
    """``GET /v1/jobs``: the caller's jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[Job]
    first_id: Optional[str] = None
    last_id: Optional[str] = None
    has_more: bool


class TranscriptList(BaseModel):
    """``GET /v1/jobs/{id}/transcripts``: output rows (the Parquet schema's columns), ordered by id."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: Optional[str] = None
    last_id: Optional[str] = None
    has_more: bool
