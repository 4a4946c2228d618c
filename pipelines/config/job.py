"""The batch job's config (``python -m pipelines.transcribe``): where it runs, its Ray stages, its output, and
:class:`JobConfig` holding every section."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, model_validator

from pipelines.config.base import Frozen as _Frozen
from pipelines.config.base import refuse_moved
from pipelines.config.guards import GuardsConfig
from pipelines.config.storage import StorageConfig
from pipelines.core.diarization import DiarizationOptions, SpeakerCount
from pipelines.core.options import ChunkingConfig, DecodingConfig, ModelConfig


class RayConfig(_Frozen):
    """Where the job runs."""

    address: Optional[str] = Field(
        None, description=(
            "Ray address to join ('auto', 'ray://host:10001'); None joins RAY_ADDRESS if set, else starts a local "
            "Ray; 'local' always starts a new local Ray."
        ),
    )
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of a local Ray started by the job (None: all).")
    include_dashboard: bool = Field(False, description="Start the dashboard with a local Ray.")
    node_ip_address: Optional[str] = Field(
        None, description="IP a local Ray started by the job binds to ('127.0.0.1' keeps it on loopback); None: Ray's choice."
    )


class DecodeStageConfig(_Frozen):
    """The CPU stage that decodes and VAD-chunks files (Ray Data ``map_batches`` actor pool)."""

    concurrency: int = Field(1, ge=1, description="Number of decode actors.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per decode actor.")
    files_per_batch: int = Field(4, ge=1, description="Files per decode call.")
    max_task_retries: int = Field(
        3, ge=0, description=(
            "Times Ray retries a batch whose decode actor died (killed, out of memory, node lost); the actor is "
            "restarted each time. See transcribe.max_task_retries for what happens after that."
        ),
    )


class TranscribeStageConfig(_Frozen):
    """The transcription actor pool (one model per actor)."""

    min_actors: int = Field(1, ge=1, description="Actors at start.")
    max_actors: int = Field(1, ge=1, description="Actors at most (autoscaling between min and max).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on GPU nodes).")
    max_cluster_gpus: Optional[float] = Field(
        None, ge=0, description=(
            "GPUs the cluster's autoscaler can reach (its GPU worker group's max_workers x GPUs per node), for the "
            "GPU pre-flight check: with too few GPUs in the cluster now, the job waits for the autoscaler when this "
            "is at least num_gpus, and stops at once otherwise. None: unknown (only GPUs present now count). Ray "
            "has no public API that reads the autoscaler's limits, so the config says it."),
    )
    files_per_batch: int = Field(16, ge=1, description="Files handed to an actor per call (their chunks are pooled).")
    max_retries_per_file: int = Field(1, ge=0, description="Retries of a file alone after its batch failed.")
    max_task_retries: int = Field(
        3, ge=0, description=(
            "Times Ray retries a batch whose transcription actor died (killed, out of memory, node lost); the "
            "actor is restarted each time. A batch that still fails is dropped and its files are retried one per "
            "batch; a file that kills its actor every time becomes an error row (WorkerDiedError). Finite, so a "
            "file that crashes the model cannot keep a job restarting actors forever."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return refuse_moved(data, "transcribe", {"batch_size": "model.batch_size"})


class OutputConfig(_Frozen):
    """How results are written."""

    rows_per_file: int = Field(256, ge=1, description="Rows per Parquet part file (a part is written atomically).")
    compression: str = Field("zstd", description="Parquet compression codec.")
    flush_interval_s: float = Field(
        60.0, gt=0,
        description="Longest a finished row waits in memory (s): once the oldest buffered row is this old, the rows "
                    "in hand are written as a part even if fewer than rows_per_file (checked on every write and by a "
                    "timer while no rows arrive). A killed driver loses at most about this much finished work.",
    )
    lock_stale_s: float = Field(
        300.0, gt=0,
        description="A run holds the output folder's lock (DIR/_lock.json) and refreshes it every lock_heartbeat_s; "
                    "a lock not refreshed for this long (s) is stale: its run is taken for dead and the next run "
                    "takes the lock over. Hosts writing one folder need clocks within a small part of this. A "
                    "lock left by a process of this host that is gone is taken over at once.",
    )
    lock_heartbeat_s: float = Field(
        30.0, gt=0,
        description="How often (s) a run refreshes its lock; at most a third of lock_stale_s. A run whose refresh "
                    "has failed for lock_stale_s stops writing (another run may have taken the folder over).",
    )

    progress_interval_s: float = Field(
        5.0, gt=0,
        description="How often (s) the run rewrites its progress object DIR/_progress.json (files and audio done, "
                    "rows ok/empty/error; read by GET /v1/jobs/{id}); also written at the run's end.",
    )

    @model_validator(mode="after")
    def _heartbeat_below_stale(self) -> "OutputConfig":
        if self.lock_heartbeat_s * 3 > self.lock_stale_s:
            raise ValueError(f"lock_heartbeat_s ({self.lock_heartbeat_s}) must be at most a third of lock_stale_s "
                             f"({self.lock_stale_s}), so a live run never looks stale")
        return self

class DiarizationConfig(_Frozen):
    """Speaker diarization (who spoke when; the ``diarize`` extra): a CPU actor pool between the decode and the
    transcription stages. Off by default; off, the output's speaker columns are null and the fingerprint is the
    one it always was."""

    enabled: bool = Field(False, description="Run the diarization stage and fill the speaker columns.")
    num_speakers: Optional[int] = Field(None, ge=1, le=32, description=(
        "Every file's exact number of speakers, if known (a manifest row's num_speakers/min_speakers/"
        "max_speakers replace these for that row)."))
    min_speakers: Optional[int] = Field(None, ge=1, le=32, description="At least this many speakers per file.")
    max_speakers: Optional[int] = Field(None, ge=1, le=32, description="At most this many speakers per file.")
    options: DiarizationOptions = Field(default_factory=DiarizationOptions, description=(
        "How the diarizer runs (threads, embedding step, smoothing, merge similarity)."))
    concurrency: int = Field(1, ge=1, description="Diarization actors (one model each, about 150 MB).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per diarization actor.")
    files_per_batch: int = Field(4, ge=1, description="Files per diarization call.")
    max_task_retries: int = Field(3, ge=0, description="Times Ray retries a batch whose diarization actor died.")

    @model_validator(mode="after")
    def _counts(self) -> "DiarizationConfig":
        self.count  # raises on inconsistent counts
        return self

    @property
    def count(self) -> SpeakerCount:
        """The job-wide speaker count."""
        return SpeakerCount(num_speakers=self.num_speakers, min_speakers=self.min_speakers,
                            max_speakers=self.max_speakers)

    def fingerprint_payload(self) -> Optional[dict]:
        """What enters the config fingerprint: the settings that change the speaker labels, or None when
        diarization is off (throughput settings and the known-speaker threshold left out)."""
        if not self.enabled:
            return None
        return {"count": self.count.model_dump(mode="json"),
                "options": self.options.model_dump(mode="json", exclude={"cpu_threads",
                                                                         "known_speaker_min_similarity"})}


class JobConfig(_Frozen):
    """The whole batch job: every setting ``python -m pipelines.transcribe`` uses."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    decode: DecodeStageConfig = Field(default_factory=DecodeStageConfig)
    transcribe: TranscribeStageConfig = Field(default_factory=TranscribeStageConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    guards: GuardsConfig = Field(default_factory=GuardsConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    diarization: DiarizationConfig = Field(default_factory=DiarizationConfig)
    progress: bool = Field(True, description="Show Ray Data progress bars and a line per written part.")

