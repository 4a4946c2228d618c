"""The faster-whisper adapter: the one module that imports ``faster_whisper`` or ``ctranslate2`` and touches their
internals (tests/test_import_contracts.py holds that line).

Written against faster-whisper 1.2.1 and CTranslate2 4.8.5, the exact pins of ``pyproject.toml``. Besides their
public API it relies on pieces that may change in any release:

- ``WhisperModel._split_segments_by_timestamps`` (private) to cut a decode into segments;
- ``WhisperModel.add_word_timestamps`` called with a *batch* (one list of segments per item, one frame count per
  item) although its signature declares one item's segments and one ``int``;
- the CTranslate2 model behind ``WhisperModel.model`` (``generate``, ``detect_language``), driven directly;
- ``faster_whisper.tokenizer._LANGUAGE_CODES`` (private), the language codes the tokenizer accepts.

tests/core/test_whisper_contract.py checks the installed versions against the pins, the parameter names of every
callable used here, and golden output on two clips, so an upgrade fails loudly there instead of quietly changing
transcripts. Times in seconds; audio is float32 mono at :data:`~pipelines.core.constants.SAMPLE_RATE`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens
from faster_whisper.vad import VadOptions, get_speech_timestamps

from pipelines.core.constants import N_FRAMES, SAMPLE_RATE
from pipelines.core.errors import ModelLoadError
from pipelines.core.models import resolve_model_path
from pipelines.core.options import ModelConfig

__all__ = [
    "EncoderOutput", "Generation", "LANGUAGE_CODES", "PINS", "SearchParams", "Split", "SubSegment", "Tokenizer",
    "WhisperAdapter", "Baseline", "cuda_device_count", "library_versions", "speech_timestamps",
    "supported_compute_types",
]

#: The versions this adapter was written and tested against (``pyproject.toml`` pins them exactly).
PINS = {"faster-whisper": "1.2.1", "ctranslate2": "4.8.5"}

#: Whisper's language codes: the ones faster-whisper's tokenizer accepts ("en", "de", "yue"...).
LANGUAGE_CODES: frozenset[str] = frozenset(_LANGUAGE_CODES)

#: The encoder's output for a batch: a ``ctranslate2.StorageView``, float, shape (batch, 1500, d_model), on the
#: model's device. Opaque outside this module: pass it back to :class:`WhisperAdapter`'s methods.
EncoderOutput = Any

#: One segment of a decode as faster-whisper builds it: ``seek`` (mel frame the decode started at), ``start`` and
#: ``end`` (seconds, of the piece's audio), ``tokens`` (ids, text and timestamps); :meth:`WhisperAdapter.
#: add_word_timestamps` adds ``words`` (dicts of ``word``, ``start``, ``end``, ``probability``) and may move
#: ``start``/``end`` to the first and last word.
SubSegment = dict


@dataclass(frozen=True)
class SearchParams:
    """CTranslate2 search settings of one :meth:`WhisperAdapter.generate` call (names of ``WhisperModel.
    transcribe``). ``max_length`` counts prompt and generated tokens; ``max_initial_timestamp_index`` is in units of
    :attr:`WhisperAdapter.time_precision`; ``suppress_tokens`` is the full set (see
    :meth:`WhisperAdapter.suppressed_tokens`)."""

    beam_size: int
    best_of: int
    patience: float
    length_penalty: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    max_length: int
    suppress_blank: bool
    suppress_tokens: tuple[int, ...]
    max_initial_timestamp_index: int


@dataclass(frozen=True)
class Generation:
    """The best hypothesis of one batch item: generated ``tokens`` (text and timestamp ids, prompt excluded), their
    ``avg_logprob`` (sum of log-probabilities over length + 1, as faster-whisper computes it from CTranslate2's
    length-penalised score) and the model's ``no_speech_prob`` (0..1)."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


class Split(NamedTuple):
    """A decode cut at its timestamp tokens (:meth:`WhisperAdapter.split_segments`)."""

    segments: list[SubSegment]
    seek: int  # mel frame to resume from: the last timestamp, or the piece's end when the decode finished it
    single_timestamp_ending: bool  # the decode ended on one timestamp: no speech after it


class WhisperAdapter:
    """A loaded ``faster_whisper.WhisperModel`` behind a small typed surface: features, encoder, batched search,
    language detection, segment splitting, word alignment, prompts and tokenizers.

    Thread-safe as CTranslate2 is: with ``num_workers`` model replicas, that many calls run at once from Python
    threads (CTranslate2 releases the GIL).
    """

    def __init__(self, model: WhisperModel):
        self._model = model
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, cfg: ModelConfig) -> "WhisperAdapter":
        """Load the model ``cfg`` names (see :func:`pipelines.core.models.resolve_model_path`).

        Raises:
            ModelLoadError: the model cannot be found or loaded, or ``cfg.require_cuda`` is set (with device cuda
                or auto) and CTranslate2 sees no CUDA device.
        """
        if cfg.require_cuda and cfg.device in ("cuda", "auto") and cuda_device_count() < 1:
            raise ModelLoadError(
                "model.require_cuda is set but CTranslate2 sees no CUDA device on this worker "
                "(check the actor's num_gpus, CUDA_VISIBLE_DEVICES and the CUDA/cuDNN libraries)"
            )
        path = resolve_model_path(cfg.name)
        try:
            model = WhisperModel(path, device=cfg.device, compute_type=cfg.compute_type, cpu_threads=cfg.cpu_threads,
                                 num_workers=cfg.num_workers, download_root=cfg.download_root,
                                 local_files_only=cfg.local_files_only)
        except Exception as exc:  # noqa: BLE001 - any load failure is reported the same way
            raise ModelLoadError(f"cannot load model {cfg.name!r} ({path}): {exc}") from exc
        return cls(model)

    # ---------------------------------------------------------------------------------------- the model's geometry
    @property
    def is_multilingual(self) -> bool:
        """False for an English-only model (``*.en``): it transcribes English only and detects nothing."""
        return bool(self._model.model.is_multilingual)

    @property
    def frames_per_second(self) -> int:
        """Log-Mel frames per second of audio (100)."""
        return int(self._model.frames_per_second)

    @property
    def hop_length(self) -> int:
        """Audio samples per log-Mel frame (160)."""
        return int(self._model.feature_extractor.hop_length)

    @property
    def time_precision(self) -> float:
        """Seconds per timestamp token (0.02)."""
        return float(self._model.time_precision)

    @property
    def max_length(self) -> int:
        """Most tokens in a decode, prompt included (448)."""
        return int(self._model.max_length)

    # ---------------------------------------------------------------------------------------------------- tokens
    def tokenizer(self, language: str, task: str) -> Tokenizer:
        """The (cached) tokenizer for ``language`` ("en") and ``task`` ("transcribe" or "translate").

        Raises:
            ValueError: on a multilingual model, an unknown language code or task.
        """
        key = (language, task)
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer(self._model.hf_tokenizer, self.is_multilingual, task=task,
                                                  language=language)
            return self._tokenizers[key]

    @staticmethod
    def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""
        return tokenizer.encode(text)

    @staticmethod
    def text_tokens(tokenizer: Tokenizer, tokens: Sequence[int]) -> list[int]:
        """The text tokens of ``tokens`` (timestamps and special tokens dropped)."""
        return [t for t in tokens if t < tokenizer.eot]

    @staticmethod
    def text(tokenizer: Tokenizer, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (timestamps and special tokens dropped; not stripped)."""
        return tokenizer.decode([t for t in tokens if t < tokenizer.eot])

    def prompt(self, tokenizer: Tokenizer, previous_tokens: Sequence[int], without_timestamps: bool = False,
               hotwords: str | None = None) -> list[int]:
        """The decoder prompt: ``<|startofprev|>`` + hotwords + the last ``max_length // 2 - 1`` of
        ``previous_tokens`` (when there are any), then the start-of-transcript sequence (language, task), and
        ``<|notimestamps|>`` when ``without_timestamps``."""
        return self._model.get_prompt(tokenizer, list(previous_tokens), without_timestamps=without_timestamps,
                                      hotwords=hotwords)

    @staticmethod
    def suppressed_tokens(tokenizer: Tokenizer, suppress_tokens: Sequence[int]) -> tuple[int, ...]:
        """The token ids to suppress for ``suppress_tokens`` (-1 stands for Whisper's non-speech symbols), plus the
        task/start/no-speech tokens; () when ``suppress_tokens`` is empty."""
        if not suppress_tokens:
            return ()
        return tuple(get_suppressed_tokens(tokenizer, list(suppress_tokens)))

    @staticmethod
    def compression_ratio(text: str) -> float:
        """gzip (zlib) compression ratio of ``text``'s UTF-8 bytes: above ~2.4 the text repeats itself."""
        return float(get_compression_ratio(text))

    # ------------------------------------------------------------------------------------------------- the model
    def features(self, samples: np.ndarray) -> np.ndarray:
        """Log-Mel features of ``samples`` (float32, shape (n,), at most 30 s), padded or trimmed to the 30 s
        window: float32, shape (n_mels, N_FRAMES) (n_mels 80, or 128 for large-v3)."""
        return pad_or_trim(self._model.feature_extractor(samples)[..., :-1], N_FRAMES)

    def encode(self, features: np.ndarray) -> EncoderOutput:
        """Run the encoder on ``features`` (float32, shape (batch, n_mels, N_FRAMES))."""
        return self._model.encode(features)

    def detect_language(self, encoded: EncoderOutput) -> list[tuple[str, float]]:
        """The most probable language code and its probability (0..1) for each item of ``encoded``."""
        out = []
        for ranked in self._model.model.detect_language(encoded):
            token, prob = ranked[0]  # "<|en|>", best first
            out.append((token[2:-2], float(prob)))
        return out

    def generate(self, encoded: EncoderOutput, prompts: Sequence[Sequence[int]], temperature: float,
                 params: SearchParams) -> list[Generation]:
        """One batched search over ``encoded``, one prompt per item (every prompt must have
        ``<|startoftranscript|>`` at the same position): beam search at temperature 0, else ``best_of`` samples at
        ``temperature``; the best hypothesis of each item.

        Raises:
            RuntimeError, ValueError: from CTranslate2 (out of memory, bad prompt...).
        """
        if temperature > 0:
            search: dict[str, Any] = {"beam_size": 1, "num_hypotheses": params.best_of, "sampling_topk": 0,
                                      "sampling_temperature": temperature}
        else:
            search = {"beam_size": params.beam_size, "patience": params.patience}
        outputs = self._model.model.generate(
            encoded, [list(p) for p in prompts], length_penalty=params.length_penalty,
            repetition_penalty=params.repetition_penalty, no_repeat_ngram_size=params.no_repeat_ngram_size,
            max_length=params.max_length, return_scores=True, return_no_speech_prob=True,
            suppress_blank=params.suppress_blank, suppress_tokens=list(params.suppress_tokens),
            max_initial_timestamp_index=params.max_initial_timestamp_index, **search,
        )
        generations = []
        for out in outputs:
            tokens = list(out.sequences_ids[0])
            n = len(tokens)
            avg_logprob = out.scores[0] * (n**params.length_penalty) / (n + 1)
            generations.append(Generation(tokens, float(avg_logprob), float(out.no_speech_prob)))
        return generations

    def split_segments(self, tokenizer: Tokenizer, tokens: Sequence[int], seek: int, segment_size: int) -> Split:
        """Cut one decode at its timestamp tokens (``WhisperModel.generate_segments``'s rule).

        Args:
            tokens: the generated ids of a decode that started at mel frame ``seek`` of its audio.
            segment_size: frames of audio the decode covered (at most N_FRAMES).

        Returns:
            The segments (times in seconds of the audio, from ``seek``'s time on), where to resume, and whether the
            decode ended on a single timestamp.
        """
        fps = self.frames_per_second
        segments, next_seek, single_ending = self._model._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=list(tokens), time_offset=seek / fps, segment_size=segment_size,
            segment_duration=segment_size / fps, seek=seek,
        )
        return Split(segments, next_seek, single_ending)

    def add_word_timestamps(self, items: list[list[SubSegment]], tokenizer: Tokenizer, encoded: EncoderOutput,
                            num_frames: Sequence[int], prepend_punctuations: str, append_punctuations: str) -> None:
        """Add ``words`` to every segment of ``items`` (one list of segments per batch item of ``encoded``, in
        order; ``num_frames`` the frames of audio per item), by cross-attention alignment and DTW; in place.

        faster-whisper's method needs one entry per batch item, each with at least one segment: an item without
        segments gets a placeholder without tokens (aligned to nothing), not returned.
        """
        if not any(items):
            return
        padded = [segs or [{"tokens": [], "start": 0.0, "end": 0.0, "seek": 0, "placeholder": True}]
                  for segs in items]
        self._model.add_word_timestamps(padded, tokenizer, encoded, list(num_frames), prepend_punctuations,
                                        append_punctuations, 0.0)


# ----------------------------------------------------------------------------------------------- the runtime
def cuda_device_count() -> int:
    """CUDA devices CTranslate2 can see in this process (0 without a driver, libraries or GPU)."""
    return int(ctranslate2.get_cuda_device_count())


def supported_compute_types(device: str) -> tuple[str, ...]:
    """Compute types CTranslate2 supports on ``device`` ("cpu" or "cuda", device 0), sorted.

    Raises:
        RuntimeError: from CTranslate2, e.g. no CUDA device.
    """
    return tuple(sorted(ctranslate2.get_supported_compute_types(device)))


def library_versions() -> dict[str, str]:
    """The installed faster-whisper and CTranslate2 versions (compare :data:`PINS`)."""
    return {"faster-whisper": faster_whisper.__version__, "ctranslate2": ctranslate2.__version__}


# ------------------------------------------------------------------------------------------------------- VAD
def speech_timestamps(samples: np.ndarray, *, threshold: float, min_speech_duration_ms: int,
                      max_speech_duration_s: float, min_silence_duration_ms: int, speech_pad_ms: int,
                      sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Speech runs of ``samples`` (float32, shape (n,)) by the Silero VAD bundled with faster-whisper:
    ``(start, end)`` in samples, end exclusive, in order. Runs longer than ``max_speech_duration_s`` are split at
    the quietest point the VAD finds."""
    options = VadOptions(threshold=threshold, min_speech_duration_ms=min_speech_duration_ms,
                         max_speech_duration_s=max_speech_duration_s, min_silence_duration_ms=min_silence_duration_ms,
                         speech_pad_ms=speech_pad_ms)
    return [(int(s["start"]), int(s["end"])) for s in get_speech_timestamps(samples, options,
                                                                            sampling_rate=sample_rate)]


# ------------------------------------------------------------------------------------------ bench baselines
class Baseline:
    """Plain faster-whisper, as a user runs it, for the bench: ``WhisperModel.transcribe`` or, with ``batched``,
    ``BatchedInferencePipeline.transcribe(batch_size=...)``, file after file."""

    def __init__(self, cfg: ModelConfig, cpu_threads: int, batched: bool = False, batch_size: int = 8):
        self.model = WhisperModel(resolve_model_path(cfg.name), device=cfg.device, compute_type=cfg.compute_type,
                                  cpu_threads=cpu_threads)
        self.batched = BatchedInferencePipeline(self.model) if batched else None
        self.batch_size = batch_size

    def transcribe(self, path: str, beam_size: int) -> tuple[str, float]:
        """The text of the file at ``path`` (segments joined, stripped) and its duration (s).

        Raises:
            Exception: whatever faster-whisper raises on the file.
        """
        if self.batched is not None:
            segments, info = self.batched.transcribe(path, beam_size=beam_size, batch_size=self.batch_size)
        else:
            segments, info = self.model.transcribe(path, beam_size=beam_size)
        return "".join(s.text for s in segments).strip(), float(info.duration)
