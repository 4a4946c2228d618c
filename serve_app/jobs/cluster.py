"""The Ray Jobs side of the job endpoints: each HTTP job is a Ray Job submitted through
``ray.job_submission.JobSubmissionClient`` at ``jobs.dashboard_address`` (docs/jobs.md).

A job's state lives in Ray (its status, message, times and the metadata given at submission) and in its output
folder (progress object, run summary, Parquet parts), never in a replica's memory, so any replica, also one started
after a restart, answers for every job. The metadata (strings, Ray's rule) is what listing and the limits need:
``kind`` (:data:`KIND`), ``owner`` (the API key's hash, never the key), ``output``, ``input``, ``files`` and
``created_at``.

Every method here blocks on HTTP calls to the dashboard: the routes run them on worker threads.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pipelines.config.jobs import ServeJobsConfig
from serve_app.schemas import APIError

#: ``metadata["kind"]`` of the Ray Jobs this endpoint submits; others are never shown.
KIND = "raywhisper"
#: Ray's statuses of a job that is queued or running.
ACTIVE = frozenset({"PENDING", "RUNNING"})


@dataclass(frozen=True)
class JobRecord:
    """What Ray knows of one job: ``ray_status`` (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), Ray's
    ``message``, start and end times (Unix seconds) and the submission's metadata."""

    id: str
    ray_status: str
    message: Optional[str]
    start_s: Optional[float]
    end_s: Optional[float]
    metadata: dict

    @classmethod
    def of(cls, details: Any) -> "JobRecord":
        """From Ray's ``JobDetails``."""
        status = getattr(details.status, "value", details.status)
        return cls(id=details.submission_id or details.job_id or "", ray_status=str(status), message=details.message,
                   start_s=None if details.start_time is None else details.start_time / 1000,
                   end_s=None if details.end_time is None else details.end_time / 1000,
                   metadata=dict(details.metadata or {}))

    @property
    def created_s(self) -> float:
        """When it was submitted (Unix seconds)."""
        try:
            return float(self.metadata["created_at"])
        except (KeyError, ValueError):
            return self.start_s or 0.0

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.ray_status in ACTIVE


def entrypoint(manifest: str, output: str, job_id: str, overrides: list[str], job_config: Optional[str],
               webhook_url: Optional[str], python: Optional[str] = None) -> str:
    """The job's shell command: ``<python> -m pipelines.transcribe --manifest M --output O --run-id ID
    [--config C] [--set k=v]... [--webhook-url URL]``, every argument shell-quoted; ``python`` defaults to this
    process's interpreter. The run id is the job id, so the output's progress object and ``_runs/<id>.json`` name
    the job."""
    args = [python or sys.executable, "-m", "pipelines.transcribe", "--manifest", manifest, "--output", output, "--run-id", job_id]
    if job_config:
        args += ["--config", job_config]
    for item in overrides:
        args += ["--set", item]
    if webhook_url:
        args += ["--webhook-url", webhook_url]
    return " ".join(shlex.quote(a) for a in args)


def _client_error(exc: BaseException) -> APIError:
    return APIError(503, "the Ray Jobs API cannot be reached; retry shortly", code="jobs_backend_unavailable",
                    headers={"Retry-After": "5"})


class RayJobs:
    """The Ray Jobs API as the endpoint uses it. ``client_factory`` makes the client (default: a
    ``JobSubmissionClient`` at ``cfg.dashboard_address``, made on first use: its constructor calls the
    dashboard)."""

    def __init__(self, cfg: ServeJobsConfig, client_factory: Optional[Callable[[], Any]] = None):
        self.cfg = cfg
        self._factory = client_factory or self._default_client
        self._client = None
        self._mutex = threading.Lock()

    def _default_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.cfg.dashboard_address)

    def client(self):
        """The client, made once.

        Raises:
            APIError: 503 ``jobs_backend_unavailable`` when the dashboard does not answer.
        """
        with self._mutex:
            if self._client is None:
                try:
                    self._client = self._factory()
                except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError from the version check
                    raise _client_error(exc) from exc
            return self._client

    def _call(self, what: str, *args) -> Any:
        try:
            return getattr(self.client(), what)(*args)
        except APIError:
            raise
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                raise APIError(404, f"no job {args[0] if args else ''!r}", code="job_not_found", param="id") from exc
            raise _client_error(exc) from exc
        except Exception as exc:  # noqa: BLE001 - requests' ConnectionError and the like
            raise _client_error(exc) from exc

    def submit(self, job_id: str, command: str, metadata: dict[str, str]) -> None:
        """Submit the job ``job_id`` (its submission id) running ``command``.

        Raises:
            APIError: 503 when the Ray Jobs API cannot be reached or refuses it.
        """
        try:
            self.client().submit_job(entrypoint=command, submission_id=job_id,
                                     metadata=metadata | {"kind": KIND}, runtime_env=dict(self.cfg.runtime_env))
        except APIError:
            raise
        except Exception as exc:  # noqa: BLE001 - RuntimeError from the API, ConnectionError
            raise _client_error(exc) from exc

    def get(self, job_id: str, owner: str) -> JobRecord:
        """The job ``job_id`` if it is one of this endpoint's and ``owner``'s.

        Raises:
            APIError: 404 ``job_not_found`` (also for another caller's job: its existence is not revealed).
        """
        record = JobRecord.of(self._call("get_job_info", job_id))
        if record.metadata.get("kind") != KIND or record.metadata.get("owner") != owner:
            raise APIError(404, f"no job {job_id!r}", code="job_not_found", param="id")
        return record

    def list(self, owner: Optional[str]) -> list[JobRecord]:
        """This endpoint's jobs (``owner``'s only, unless None), newest first."""
        records = [JobRecord.of(d) for d in self._call("list_jobs")]
        mine = [r for r in records if r.metadata.get("kind") == KIND
                and (owner is None or r.metadata.get("owner") == owner)]
        return sorted(mine, key=lambda r: (r.created_s, r.id), reverse=True)

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job (SIGTERM to its driver, SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S``, 3 s);
        returns whether it was running."""
        return bool(self._call("stop_job", job_id))

    def log_tail(self, job_id: str, lines: int) -> str:
        """The last ``lines`` lines of the job's log ("" when it cannot be read)."""
        if lines <= 0:
            return ""
        try:
            text = self._call("get_job_logs", job_id) or ""
        except APIError:
            return ""
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def job_metadata(owner: str, output: str, source: str, files: int) -> dict[str, str]:
    """The metadata stored with a job (strings only): owner hash, output, what was submitted, row count, time."""
    return {"owner": owner, "output": output, "input": source, "files": str(files), "created_at": f"{time.time():.3f}"}
