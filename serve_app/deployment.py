"""The model deployment: one shared :class:`~pipelines.core.transcriber.Transcriber` per replica, fed by
``@serve.batch`` so that concurrent requests are transcribed in one call.

A batch of requests (up to ``deployment.max_batch_size``, waiting at most ``deployment.batch_wait_timeout_s``) is
grouped by effective decoding options; the chunks of every request in a group go to the transcriber together
(cross-request batching, like the job's cross-file batching), and each request's chunks are stitched back into
its transcript. If a group's call fails, each of its requests is retried alone, so one bad request fails alone.
The model runs on a worker thread, so the replica's event loop keeps queueing requests and answering health
checks while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import numpy as np
from ray import serve

from pipelines.config import DecodingConfig, ServeConfig
from pipelines.core.schema import Transcript
from pipelines.core.stitch import stitch_file
from pipelines.core.transcriber import Chunk, Transcriber
from serve_app.metrics import ModelMetrics
from serve_app.schemas import APIError, TranscriptionJob

log = logging.getLogger("ray.serve")  # lands in the replica's Serve log

WARMUP_S = 1.0  # seconds of synthetic audio the readiness inference transcribes
MAX_CONSECUTIVE_FAILURES = 3  # failed batches in a row before check_health reports the replica unhealthy


def warmup_chunk() -> Chunk:
    """A tiny synthetic input: 1 s of a 220 Hz tone with faint noise, float32, shape (16000,)."""
    t = np.arange(int(WARMUP_S * 16000), dtype=np.float32) / 16000
    rng = np.random.default_rng(0)
    samples = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.shape[0])
    return Chunk(key="warmup", index=0, offset_s=0.0, samples=samples.astype(np.float32))


@serve.deployment(name="TranscriberDeployment")
class TranscriberDeployment:
    """Loads the model and runs a tiny inference in ``__init__`` (a replica is ready only after both); serves
    :meth:`transcribe`. Options (replicas, CPUs/GPUs, max ongoing/queued requests) are set by ``build_app``.

    Raises (from ``__init__``):
        ModelLoadError: the model cannot be loaded; TranscriptionError: the warm-up inference failed.
    """

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        t0 = time.perf_counter()
        self.transcriber = Transcriber(cfg.model, cfg.decoding)
        self.load_s = time.perf_counter() - t0
        self._batched.set_max_batch_size(cfg.deployment.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transcribe")
        self.metrics = ModelMetrics()
        t1 = time.perf_counter()
        self.transcriber.transcribe_chunks([warmup_chunk()])
        self.warmup_s = time.perf_counter() - t1
        self._calls_at_start = self.transcriber.calls
        self._failures_in_a_row = 0
        self._stats = {"requests": 0, "batches": 0, "max_batch_requests": 0, "chunks": 0, "audio_s": 0.0}

    # ----------------------------------------------------------------------------------------------- serving
    async def transcribe(self, job: TranscriptionJob) -> Transcript:
        """The transcript of one request (segments in file time), batched with concurrent requests.

        Raises:
            APIError: 400 for a language this model cannot transcribe; 500 when the model fails on the request
                (a generic message and an ``error_id``; the exception is in this replica's log under that id).
        """
        language = job.language
        if language is not None and not self.transcriber.multilingual and language != "en":
            raise APIError(400, f"model {self.cfg.model.name!r} is English-only; language {language!r} is not "
                                "supported (omit language or use 'en')", code="unsupported_language",
                           param="language")
        if not job.chunks:  # no speech: nothing for the model to do
            known = language or (None if self.transcriber.multilingual else "en")
            return stitch_file([], job.duration_s, known, 1.0 if known else None)
        result = await self._batched(job)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # both set from the config in __init__
    async def _batched(self, jobs: list[TranscriptionJob]) -> list[Union[Transcript, APIError]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_batch, jobs)

    def _run_batch(self, jobs: list[TranscriptionJob]) -> list[Union[Transcript, APIError]]:
        """Transcribe a batch on the worker thread; one outcome per job, in order."""
        t0 = time.perf_counter()
        calls_before = self.transcriber.calls
        groups: dict[DecodingConfig, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.decoding].append(i)
        outcomes: list[Union[Transcript, APIError, None]] = [None] * len(jobs)
        for decoding, members in groups.items():
            try:
                done = self._transcribe_jobs([jobs[i] for i in members], decoding)
                outcomes_group = list(done)
            except Exception:  # noqa: BLE001 - isolate the failing request(s)
                log.warning("batch of %d requests failed; retrying each alone", len(members), exc_info=True)
                outcomes_group = []
                for i in members:
                    try:
                        outcomes_group.extend(self._transcribe_jobs([jobs[i]], decoding))
                    except Exception:  # noqa: BLE001 - the text goes to this log only, under the error id
                        error_id = uuid.uuid4().hex
                        log.exception("error_id=%s request %s failed", error_id, jobs[i].key)
                        outcomes_group.append(APIError(500, "transcription failed", code="transcription_failed",
                                                       error_id=error_id))
            for i, outcome in zip(members, outcomes_group):
                outcomes[i] = outcome
        failed = all(isinstance(o, APIError) for o in outcomes)
        self._failures_in_a_row = self._failures_in_a_row + 1 if failed else 0
        calls = self.transcriber.calls - calls_before
        elapsed = time.perf_counter() - t0
        self.metrics.record(len(jobs), elapsed, calls)
        log.info("batch of %d requests (%d chunks, %.1f s of audio): %d model calls in %.2f s", len(jobs),
                 sum(len(j.chunks) for j in jobs), sum(j.audio_s for j in jobs), calls, elapsed)
        st = self._stats
        st["requests"] += len(jobs)
        st["batches"] += 1
        st["max_batch_requests"] = max(st["max_batch_requests"], len(jobs))
        st["chunks"] += sum(len(j.chunks) for j in jobs)
        st["audio_s"] += sum(j.audio_s for j in jobs)
        return outcomes  # type: ignore[return-value]

    def _transcribe_jobs(self, jobs: list[TranscriptionJob], decoding: DecodingConfig) -> list[Transcript]:
        """One transcriber call over every chunk of ``jobs``, stitched per job.

        Raises:
            TranscriptionError: the model failed on a batch.
        """
        chunks = [chunk for job in jobs for chunk in job.chunks]
        results = self.transcriber.transcribe_chunks(chunks, decoding)
        by_key = defaultdict(list)
        for res in results:
            by_key[res.key].append(res)
        return [stitch_file(by_key[job.key], job.duration_s) for job in jobs]

    # ------------------------------------------------------------------------------------------------ health
    def ready(self) -> dict:
        """What /health/ready reports: the model is loaded and the warm-up inference passed (else no replica
        would be running), with load and warm-up times in seconds."""
        model = self.cfg.model
        return {
            "status": "ready",
            "model": model.name,
            "device": model.device,
            "compute_type": model.compute_type,
            "multilingual": self.transcriber.multilingual,
            "load_s": round(self.load_s, 3),
            "warmup_s": round(self.warmup_s, 3),
        }

    def stats(self) -> dict:
        """Counters of this replica since it started: requests, batches (@serve.batch calls), the largest batch,
        chunks, audio seconds, and ``model_calls`` (batched model calls, warm-up excluded)."""
        return dict(self._stats, model_calls=self.transcriber.calls - self._calls_at_start)

    def check_health(self) -> None:
        """Serve's periodic health check.

        Raises:
            RuntimeError: the last ``MAX_CONSECUTIVE_FAILURES`` batches all failed (Serve then restarts the replica).
        """
        if self._failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"the last {self._failures_in_a_row} batches all failed; the model looks broken")
