"""Retrying storage calls: which errors are transient (:func:`is_transient`) and how they are retried
(:class:`RetryPolicy`: exponential backoff with jitter, tenacity). Shared by input reads, output writes, the lock
and the endpoint's ``url`` reads; see docs/storage.md."""

from __future__ import annotations

import http.client
import logging
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import tenacity

from pipelines.config import StorageRetryConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Error codes of S3-compatible services that mean "try again later".
RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "ProvisionedThroughputExceededException",
})


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> tuple[Optional[int], Optional[str]]:
    """(HTTP status, error code) of a botocore ClientError or aiohttp ClientResponseError; (None, None) else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, response["Error"].get("Code")
    status = getattr(exc, "status", None)
    if isinstance(status, int) and type(exc).__module__.startswith("aiohttp"):
        return status, None
    return None, None


def _transient_types() -> tuple[type, ...]:
    types: list[type] = [ConnectionError, TimeoutError, http.client.IncompleteRead]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError, ResponseParserError

        types += [BotoConnectionError, HTTPClientError, ResponseParserError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError

        types += [ClientConnectionError, ClientPayloadError]
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(types)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection refused/reset/closed, timeouts, a truncated body, throttling
    (429, SlowDown...) and 5xx answers, found anywhere in the exception's cause chain. False for a missing
    object, access denied, a directory, and anything else."""
    transient = _transient_types()
    for err in _chain(exc):
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        status, code = _http_status(err)
        if status is not None or code is not None:
            return code in RETRYABLE_CODES or (status is not None and (status >= 500 or status in (408, 429)))
        if isinstance(err, transient):
            return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a storage operation on transient errors (:func:`is_transient`): at most ``attempts`` tries,
    exponential backoff with jitter from ``initial_backoff_s`` up to ``max_backoff_s``, and no new try once
    ``max_elapsed_s`` would be passed. Other errors are raised at once."""

    attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    max_elapsed_s: float = 120.0

    @classmethod
    def from_config(cls, cfg: StorageRetryConfig) -> "RetryPolicy":
        return cls(cfg.attempts, cfg.initial_backoff_s, cfg.max_backoff_s, cfg.max_elapsed_s)

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried as described; the last error is raised as is."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s: try %d of %d failed (%s: %s); retrying in %.1f s", what, state.attempt_number,
                        self.attempts, type(exc).__name__, exc, state.next_action.sleep if state.next_action else 0)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts) | tenacity.stop_before_delay(self.max_elapsed_s),
            wait=tenacity.wait_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s)
            + tenacity.wait_random(0, self.initial_backoff_s),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(fn)

