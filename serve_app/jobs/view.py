"""A job as ``GET /v1/jobs/{id}`` shows it (docs/jobs.md): Ray's status mapped to the endpoint's
(:func:`~serve_app.jobs.models.status_of`), the progress object of its output folder with an ETA, the run summary
once finished and the error once failed (scrubbed of credentials by :func:`pipelines.redact.scrub_text`).

The progress comes from ``OUT/_progress.json`` when it is this job's (its ``run_id`` is the job id); when a later
job on the same folder has replaced it, a finished job's progress is read from its run summary instead.
"""

from __future__ import annotations

import re
import time
from typing import Optional

from pipelines.io.output import read_summary
from pipelines.io.progress import Progress, read_progress
from pipelines.io.storage import Storage
from pipelines.redact import scrub, scrub_text
from serve_app.jobs.cluster import JobRecord
from serve_app.jobs.models import FINAL_STATUSES, Job, JobErrorInfo, JobProgress, status_of

#: The first line of the CLI's own error message in a job's log (``error: ...``).
_CLI_ERROR = re.compile(r"^error: .*$", flags=re.M)
#: Characters of Ray's message kept (its first line; the log tail says the rest).
MESSAGE_CHARS = 500


def eta_s(progress: Progress, now: float) -> Optional[float]:
    """Seconds left at this run's pace (files per second since it began transcribing, the files found done at its
    start left out), counted from ``now``; None before a file is done or once the run has ended."""
    if progress.phase != "transcribing" or progress.transcribing_since is None:
        return None
    done = progress.files_done - progress.files_kept
    elapsed = progress.updated_at - progress.transcribing_since
    if done <= 0 or elapsed <= 0:
        return None
    left = (progress.files_total - progress.files_done) / (done / elapsed)
    return round(max(0.0, left - max(0.0, now - progress.updated_at)), 1)


def progress_view(progress: Progress, now: float) -> JobProgress:
    """The API's view of a progress object (ETA included)."""
    return JobProgress(phase=progress.phase, files_total=progress.files_total, files_done=progress.files_done,
                       files_kept=progress.files_kept, rows=dict(progress.rows), audio_s_done=progress.audio_s_done,
                       audio_s_total=progress.audio_s_total, eta_s=eta_s(progress, now),
                       started_at=int(progress.started_at) or None, updated_at=int(progress.updated_at) or None)


def progress_of_summary(summary: dict) -> JobProgress:
    """A finished run's progress from its summary (``_runs/<id>.json``)."""
    out = summary.get("output") or {}
    status = summary.get("status")
    phase = {"done": "done", "stopped": "stopped"}.get(status, "failed")
    return JobProgress(phase=phase, files_total=int(summary.get("manifest_rows") or 0),
                       files_done=int(out.get("rows", summary.get("kept", 0) + summary.get("files", 0))),
                       files_kept=int(summary.get("kept") or 0),
                       rows={k: int(out.get(k, summary.get(k, 0)) or 0) for k in ("ok", "empty", "error")},
                       audio_s_done=float(summary.get("audio_s") or 0.0))


def job_summary(output: str, job_id: str, storage: Storage) -> Optional[dict]:
    """The job's run summary (:func:`pipelines.io.output.read_summary`, scrubbed), or None when there is none yet."""
    summary = read_summary(output, job_id, storage.options_for(output))
    return None if summary is None else scrub(summary)


def error_of(record: JobRecord, log_tail: str) -> JobErrorInfo:
    """Why a job failed: the CLI's ``error: ...`` line from its log when there is one, else Ray's message (first
    line), and the log's last lines; all scrubbed of credentials."""
    cli = _CLI_ERROR.findall(log_tail)
    ray_line = (record.message or "the job failed").strip().splitlines()[0][:MESSAGE_CHARS]
    message = f"{cli[-1][len('error: '):]} ({ray_line})" if cli else ray_line
    return JobErrorInfo(message=scrub_text(message), log_tail=scrub_text(log_tail) or None)


def job_view(record: JobRecord, storage: Storage, log_tail: str = "", with_details: bool = True) -> Job:
    """The job ``record`` as the API shows it; ``with_details`` reads its progress object and summary from the
    output folder (the list leaves them out: one storage read per job per page is not worth it)."""
    status = status_of(record.ray_status)
    meta = record.metadata
    output = meta.get("output", "")
    progress = summary = None
    if with_details and output:
        summary = job_summary(output, record.id, storage) if status in FINAL_STATUSES else None
        try:
            found = read_progress(output, storage.options_for(output))
        except Exception:  # noqa: BLE001 - the folder cannot be read now: show the job without its progress
            found = None
        if found is not None and found.run_id == record.id:
            progress = progress_view(found, time.time())
        elif summary is not None:
            progress = progress_of_summary(summary)
    error = error_of(record, log_tail) if status == "failed" else None
    return Job(id=record.id, status=status, created_at=int(record.created_s),
               finished_at=None if record.end_s is None or status not in FINAL_STATUSES else int(record.end_s),
               input=meta.get("input", ""), output=output, files=int(meta.get("files", "0") or 0),
               progress=progress, summary=summary, error=error,
               links={"self": f"/v1/jobs/{record.id}", "transcripts": f"/v1/jobs/{record.id}/transcripts"})
