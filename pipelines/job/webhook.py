"""The job's webhook (``python -m pipelines.transcribe --webhook-url URL``, docs/jobs.md): one POST of a JSON event
when the run ends, sent by the job's driver.

The driver sends it because the driver is the one process that sees the run end whatever asks about it; the Serve
endpoint keeps no state between requests (a replica restarts, there may be several), so it could only send it by
polling, and then once per replica. A driver killed outright (SIGKILL, its node lost) sends nothing: the job's
status (``GET /v1/jobs/{id}``) stays the source of truth.

The POST is made once (no retries: a receiver that fails misses the event), with a short timeout, without
following redirects (a redirect could lead the driver to an address the endpoint never allowed), and its failure
is logged, never a reason to change the run's exit code. The endpoint accepts only URLs under
``jobs.webhook_prefixes``; the CLI itself trusts its caller.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Optional

log = logging.getLogger("raywhisper")

#: Seconds the POST may take.
WEBHOOK_TIMEOUT_S = 10.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib's hook
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl!r} not followed", headers, fp)


def job_event(run_id: Optional[str], status: str, exit_code: int, output: str,
              summary: Optional[dict] = None, error: Optional[str] = None) -> dict:
    """The event the webhook POSTs: ``{"object": "raywhisper.job.event", "type": "job.finished", "id",
    "status" (succeeded | failed | stopped), "exit_code", "output", "summary" (counts), "error"}``."""
    counts = None
    if summary is not None:
        counts = {k: summary.get(k) for k in ("files", "ok", "empty", "error", "audio_s", "wall_s", "manifest_rows",
                                                "kept", "transcribed", "copied")}
    return {"object": "raywhisper.job.event", "type": "job.finished", "id": run_id, "status": status,
            "exit_code": exit_code, "output": output, "summary": counts, "error": error}


def post_webhook(url: str, event: dict[str, Any], timeout_s: float = WEBHOOK_TIMEOUT_S) -> bool:
    """POST ``event`` as JSON to ``url`` once; returns whether the receiver answered 2xx (a failure is logged)."""
    body = json.dumps(event, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "raywhisper-job-webhook"})
    opener = urllib.request.build_opener(_NoRedirects)
    try:
        with opener.open(request, timeout=timeout_s) as response:
            ok = 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("webhook %s: not delivered (%s: %s)", url, type(exc).__name__, exc)
        return False
    if ok:
        log.info("webhook %s: delivered (%s)", url, event["status"])
    else:
        log.warning("webhook %s: answered %d", url, response.status)
    return ok
