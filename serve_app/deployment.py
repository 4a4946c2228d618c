"""The model deployment: one :class:`~pipelines.core.engine.Engine` per replica, fed by ``@serve.batch`` so that
concurrent requests are transcribed in one call (docs/serving.md).

A batch of requests (up to ``deployment.max_batch_size``, waiting at most ``deployment.batch_wait_timeout_s``) is
grouped by effective decoding options, and each group goes to :meth:`Engine.transcribe_isolated`, the batch
job's own call: the chunks of every request in the group are transcribed together (cross-request batching, like
the job's cross-file batching) and stitched back per request; if that fails, each request is retried alone, so one
bad request fails alone. The model runs on a worker thread, so the replica's event loop keeps queueing requests
and answering health checks while a batch runs.

:class:`ModelServer` holds that logic without Ray (tests run it in process); :class:`TranscriberDeployment` is the
Serve deployment around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import numpy as np
from ray import serve

from pipelines.config import DecodingConfig, ServeConfig
from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.diarization import Diarizer, diarize_prepared, name_known_speakers, with_speakers
from pipelines.core.errors import DiarizationError
from pipelines.core.engine import Engine, FileSpec, Outcome, PreparedFile
from pipelines.core.schema import Transcript
from serve_app.metrics import ModelMetrics
from serve_app.schemas import APIError, TranscriptionJob

log = logging.getLogger("ray.serve")  # lands in the replica's Serve log

WARMUP_S = 1.0  # seconds of synthetic audio the readiness inference transcribes
MAX_CONSECUTIVE_FAILURES = 3  # failed batches in a row before check_health reports the replica unhealthy
RETRIES_ALONE = 0  # more tries of a request alone after its batch and its first try alone failed


def warmup_file() -> PreparedFile:
    """A tiny synthetic input as one chunk (no VAD): 1 s of a 220 Hz tone with faint noise, float32 16 kHz."""
    t = np.arange(int(WARMUP_S * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    samples = (0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.shape[0])).astype(np.float32)
    return PreparedFile(FileSpec("warmup", "warmup"), WARMUP_S, SAMPLE_RATE, 1, (0.0,), (samples,))


class ModelServer:
    """The replica's work, without Ray: admit a request, transcribe a batch of requests through the engine, count.

    Args:
        cfg: the Serve config (model, decoding).
        engine: an engine already made (tests); None loads ``cfg.model`` here.
        metrics: where batches are recorded (None: not recorded).
        diarizer: a diarizer already loaded (tests); None loads one when ``cfg.diarization.enabled``.

    Raises (from ``__init__``):
        ModelLoadError: the model cannot be loaded.
        DiarizationUnavailableError: diarization is enabled but the ``diarize`` extra is missing.
    """

    def __init__(self, cfg: ServeConfig, engine: Optional[Engine] = None, metrics: Optional[ModelMetrics] = None,
                 diarizer: Optional[Diarizer] = None):
        self.cfg = cfg
        t0 = time.perf_counter()
        self.engine = engine or Engine(cfg.model, cfg.decoding)
        self.diarizer = diarizer or (Diarizer(cfg.diarization.options) if cfg.diarization.enabled else None)
        self.load_s = time.perf_counter() - t0
        self.metrics = metrics
        self.warmup_s = 0.0
        self.failures_in_a_row = 0
        self._calls_at_start = self.engine.transcriber.calls
        self._stats = {"requests": 0, "batches": 0, "max_batch_requests": 0, "chunks": 0, "audio_s": 0.0}

    def warm_up(self) -> None:
        """One tiny inference through the engine, timed; model calls before now are not counted in :meth:`stats`.

        Raises:
            TranscriptionError: the model failed on it.
        """
        t0 = time.perf_counter()
        self.engine.transcribe([warmup_file()])
        self.warmup_s = time.perf_counter() - t0
        self._calls_at_start = self.engine.transcriber.calls

    def admit(self, job: TranscriptionJob) -> Union[Transcript, APIError, None]:
        """Check ``job`` before it queues: its transcript at once when it has no speech (no model call), else None.

        Raises:
            APIError: 400 ``unsupported_language`` for a language this model cannot transcribe.
        """
        language = job.language
        if language is not None and not self.engine.multilingual and language != "en":
            raise APIError(400, f"model {self.cfg.model.name!r} is English-only; language {language!r} is not "
                                "supported (omit language or use 'en')", code="unsupported_language",
                           param="language")
        if not job.num_chunks:
            (transcript,), _ = self.engine.transcribe([job.prepared], job.decoding)
            return self._speakers(job, transcript)
        return None

    def _speakers(self, job: TranscriptionJob, transcript: Transcript) -> Union[Transcript, APIError]:
        """``transcript`` with its speakers when ``job`` asks for them (:func:`diarize_prepared`, the job's own
        call), named after the job's known speakers where their references match (:func:`name_known_speakers`);
        a reference without speech for the diarizer's VAD is a 400 ``invalid_value`` naming it; a diarizer failure
        is a 500 ``diarization_failed`` with an ``error_id`` (the cause in the log)."""
        if job.speakers is None:
            return transcript
        if self.diarizer is None:
            return APIError(400, "speaker diarization is not enabled on this server", code="diarization_unavailable")
        try:
            references = {}
            for i, (name, samples) in enumerate(job.known_speakers):
                try:
                    references[name] = self.diarizer.embed(samples)
                except DiarizationError as exc:
                    return APIError(400, f"known_speaker_references[{i}] (for {name!r}): {exc}", code="invalid_value",
                                    param="known_speaker_references[]")
            diarization = diarize_prepared(self.diarizer, job.prepared, job.speakers)
            if references:
                diarization = name_known_speakers(diarization, references,
                                                  self.diarizer.options.known_speaker_min_similarity)
            return with_speakers(transcript, diarization)
        except Exception as exc:  # noqa: BLE001 - this request fails alone
            error_id = uuid.uuid4().hex
            log.error("error_id=%s request %s: diarization failed: %s", error_id, job.key, exc)
            return APIError(500, "speaker diarization failed", code="diarization_failed", error_id=error_id)

    def run_batch(self, jobs: list[TranscriptionJob]) -> list[Union[Transcript, APIError]]:
        """Transcribe a batch (blocking): one :meth:`Engine.transcribe_isolated` call per decoding group; one result
        per job, in order: its transcript, or a 500 ``transcription_failed`` :class:`APIError` with a generic
        message and an ``error_id`` (the failure's text is in this replica's log under that id)."""
        t0 = time.perf_counter()
        calls_before = self.engine.transcriber.calls
        groups: dict[DecodingConfig, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.decoding].append(i)
        results: list[Union[Transcript, APIError, None]] = [None] * len(jobs)
        for decoding, members in groups.items():
            outcomes = self.engine.transcribe_isolated([jobs[i].prepared for i in members], decoding, RETRIES_ALONE)
            for i, outcome in zip(members, outcomes):
                result = self._result(outcome)
                results[i] = result if isinstance(result, APIError) else self._speakers(jobs[i], result)
        self.failures_in_a_row = self.failures_in_a_row + 1 if all(isinstance(r, APIError) for r in results) else 0
        self._count(jobs, self.engine.transcriber.calls - calls_before, time.perf_counter() - t0)
        return results  # type: ignore[return-value]

    @staticmethod
    def _result(outcome: Outcome) -> Union[Transcript, APIError]:
        if outcome.transcript is not None:
            return outcome.transcript
        error_id = uuid.uuid4().hex
        failure = outcome.failure
        detail = f"{failure.error_type}: {failure.message}" if failure else "no transcript produced"
        log.error("error_id=%s request %s failed: %s", error_id, outcome.key, detail)
        return APIError(500, "transcription failed", code="transcription_failed", error_id=error_id)

    def _count(self, jobs: list[TranscriptionJob], calls: int, elapsed: float) -> None:
        chunks, audio_s = sum(j.num_chunks for j in jobs), sum(j.audio_s for j in jobs)
        if self.metrics is not None:
            self.metrics.record(len(jobs), elapsed, calls)
        log.info("batch of %d requests (%d chunks, %.1f s of audio): %d model calls in %.2f s", len(jobs), chunks,
                 audio_s, calls, elapsed)
        st = self._stats
        st.update(requests=st["requests"] + len(jobs), batches=st["batches"] + 1, chunks=st["chunks"] + chunks,
                  max_batch_requests=max(st["max_batch_requests"], len(jobs)), audio_s=st["audio_s"] + audio_s)

    def ready(self) -> dict:
        """What /health/ready reports (see :meth:`TranscriberDeployment.ready`)."""
        model = self.cfg.model
        return {"status": "ready", "model": model.name, "device": model.device, "compute_type": model.compute_type,
                "multilingual": self.engine.multilingual, "load_s": round(self.load_s, 3),
                "warmup_s": round(self.warmup_s, 3)}

    def stats(self) -> dict:
        """Counters since the warm-up: requests, batches (@serve.batch calls), the largest batch, chunks, audio
        seconds, and ``model_calls`` (batched model calls)."""
        return dict(self._stats, model_calls=self.engine.transcriber.calls - self._calls_at_start)


@serve.deployment(name="TranscriberDeployment")
class TranscriberDeployment:
    """Loads the model and runs a tiny inference in ``__init__`` (a replica is ready only after both); serves
    :meth:`transcribe`. Options (replicas, CPUs/GPUs, max ongoing/queued requests) are set by ``build_app``.

    Raises (from ``__init__``):
        ModelLoadError: the model cannot be loaded; TranscriptionError: the warm-up inference failed.
    """

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.server = ModelServer(cfg, metrics=ModelMetrics())
        self._batched.set_max_batch_size(cfg.deployment.max_batch_size)
        self._batched.set_batch_wait_timeout_s(cfg.deployment.batch_wait_timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transcribe")
        self.server.warm_up()

    async def transcribe(self, job: TranscriptionJob) -> Transcript:
        """The transcript of one request (segments in file time), batched with concurrent requests.

        Raises:
            APIError: 400 for a language this model cannot transcribe; 500 when the model fails on the request
                (a generic message and an ``error_id``; the failure is in this replica's log under that id).
        """
        done = self.server.admit(job)
        if isinstance(done, BaseException):
            raise done
        if done is not None:
            return done
        result = await self._batched(job)
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)  # both set from the config in __init__
    async def _batched(self, jobs: list[TranscriptionJob]) -> list[Union[Transcript, APIError]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.server.run_batch, jobs)

    def ready(self) -> dict:
        """What /health/ready reports: the model is loaded and the warm-up inference passed (else no replica
        would be running), with load and warm-up times in seconds."""
        return self.server.ready()

    def stats(self) -> dict:
        """This replica's counters (:meth:`ModelServer.stats`)."""
        return self.server.stats()

    def check_health(self) -> None:
        """Serve's periodic health check.

        Raises:
            RuntimeError: the last ``MAX_CONSECUTIVE_FAILURES`` batches all failed (Serve then restarts the replica).
        """
        if self.server.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(f"the last {self.server.failures_in_a_row} batches all failed; the model looks broken")
