"""Prometheus-style metrics through Ray's metrics API (``ray.util.metrics``).

Ray exports them from every node's metrics agent (``ray start --metrics-export-port``), prefixed ``ray_``;
Serve's own request metrics (``ray_serve_*``) sit beside them. The objects are made in replica constructors,
never at import.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

#: Latency buckets in seconds (a short clip on CPU is ~0.3 s; a long file minutes).
LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300]
#: Requests per @serve.batch call.
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


class IngressMetrics:
    """What the HTTP ingress records per request.

    - ``raywhisper_requests``: requests answered, by ``response_format`` and HTTP ``status``.
    - ``raywhisper_errors``: error responses by ``code`` (``invalid_audio``, ``file_too_large``,
      ``server_overloaded``...) and ``status``.
    - ``raywhisper_audio_seconds``: seconds of decoded audio transcribed.
    - ``raywhisper_request_latency_s``: wall time from request to response (s), by ``response_format``.
    """

    def __init__(self) -> None:
        self.requests = Counter("raywhisper_requests", description="Transcription requests answered.",
                                tag_keys=("response_format", "status"))
        self.errors = Counter("raywhisper_errors", description="Error responses by error code.",
                              tag_keys=("code", "status"))
        self.audio_seconds = Counter("raywhisper_audio_seconds", description="Seconds of audio transcribed.")
        self.latency = Histogram("raywhisper_request_latency_s", description="Request latency (s).",
                                 boundaries=LATENCY_BOUNDARIES_S, tag_keys=("response_format",))

    def record(self, response_format: str, status: int, latency_s: float, audio_s: float = 0.0,
               error_code: str | None = None) -> None:
        """Record one answered request."""
        self.requests.inc(1, tags={"response_format": response_format, "status": str(status)})
        self.latency.observe(latency_s, tags={"response_format": response_format})
        if audio_s > 0:
            self.audio_seconds.inc(audio_s)
        if error_code is not None or status >= 400:
            self.errors.inc(1, tags={"code": error_code or "unknown", "status": str(status)})


class ModelMetrics:
    """What the model deployment records per @serve.batch call.

    - ``raywhisper_batch_requests``: requests merged into one batch.
    - ``raywhisper_batch_latency_s``: wall time of a batch's transcription (s).
    - ``raywhisper_model_calls``: model calls (encoder + beam search batches) run.
    """

    def __init__(self) -> None:
        self.batch_requests = Histogram("raywhisper_batch_requests", description="Requests per batch.",
                                        boundaries=BATCH_BOUNDARIES)
        self.batch_latency = Histogram("raywhisper_batch_latency_s", description="Batch transcription time (s).",
                                       boundaries=LATENCY_BOUNDARIES_S)
        self.model_calls = Counter("raywhisper_model_calls", description="Model calls (batched generate) run.")

    def record(self, n_requests: int, latency_s: float, model_calls: int) -> None:
        """Record one batch."""
        self.batch_requests.observe(n_requests)
        self.batch_latency.observe(latency_s)
        if model_calls:
            self.model_calls.inc(model_calls)
