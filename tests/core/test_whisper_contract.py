"""The faster-whisper / CTranslate2 contract of pipelines/core/whisper.py: fails loudly on an upgrade.

The adapter drives private and undeclared parts of faster-whisper (see its module docstring), so an upgrade can
change transcripts without an error. These tests pin what it was written against: the installed versions equal
the exact pins of pyproject.toml, every callable it uses still takes the same parameters, and two clips decode as
recorded with the bundled tiny.en int8 model (JFK: the text; LJ Speech: the segment starts). After a deliberate
upgrade: read the libraries' changes to these callables, rerun the dev bench, then update the pins and this file.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from importlib.metadata import version

import pytest

from pipelines.core import whisper
from pipelines.core.constants import FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, N_SAMPLES, SAMPLE_RATE
from tests.conftest import CORPUS, JFK, JFK_PHRASE, ROOT, corpus_rows

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

#: Parameter names of every faster-whisper / CTranslate2 callable the adapter uses, as of the pinned versions.
SIGNATURES = {
    "faster_whisper.WhisperModel.__init__": (
        "self", "model_size_or_path", "device", "device_index", "compute_type", "cpu_threads", "num_workers",
        "download_root", "local_files_only", "files", "revision", "use_auth_token", "model_kwargs"),
    "faster_whisper.WhisperModel.encode": ("self", "features"),
    "faster_whisper.WhisperModel.get_prompt": (
        "self", "tokenizer", "previous_tokens", "without_timestamps", "prefix", "hotwords"),
    "faster_whisper.WhisperModel._split_segments_by_timestamps": (
        "self", "tokenizer", "tokens", "time_offset", "segment_size", "segment_duration", "seek"),
    "faster_whisper.WhisperModel.add_word_timestamps": (
        "self", "segments", "tokenizer", "encoder_output", "num_frames", "prepend_punctuations",
        "append_punctuations", "last_speech_timestamp"),
    "faster_whisper.WhisperModel.transcribe": (
        "self", "audio", "language", "task", "log_progress", "beam_size", "best_of", "patience", "length_penalty",
        "repetition_penalty", "no_repeat_ngram_size", "temperature", "compression_ratio_threshold",
        "log_prob_threshold", "no_speech_threshold", "condition_on_previous_text", "prompt_reset_on_temperature",
        "initial_prompt", "prefix", "suppress_blank", "suppress_tokens", "without_timestamps",
        "max_initial_timestamp", "word_timestamps", "prepend_punctuations", "append_punctuations", "multilingual",
        "vad_filter", "vad_parameters", "max_new_tokens", "chunk_length", "clip_timestamps",
        "hallucination_silence_threshold", "hotwords", "language_detection_threshold",
        "language_detection_segments"),
    "faster_whisper.BatchedInferencePipeline.__init__": ("self", "model"),
    "faster_whisper.BatchedInferencePipeline.transcribe": (
        "self", "audio", "language", "task", "log_progress", "beam_size", "best_of", "patience", "length_penalty",
        "repetition_penalty", "no_repeat_ngram_size", "temperature", "compression_ratio_threshold",
        "log_prob_threshold", "no_speech_threshold", "condition_on_previous_text", "prompt_reset_on_temperature",
        "initial_prompt", "prefix", "suppress_blank", "suppress_tokens", "without_timestamps",
        "max_initial_timestamp", "word_timestamps", "prepend_punctuations", "append_punctuations", "multilingual",
        "vad_filter", "vad_parameters", "max_new_tokens", "chunk_length", "clip_timestamps",
        "hallucination_silence_threshold", "batch_size", "hotwords", "language_detection_threshold",
        "language_detection_segments"),
    "faster_whisper.audio.pad_or_trim": ("array", "length", "axis"),
    "faster_whisper.feature_extractor.FeatureExtractor.__call__": ("self", "waveform", "padding", "chunk_length"),
    "faster_whisper.tokenizer.Tokenizer.__init__": ("self", "tokenizer", "multilingual", "task", "language"),
    "faster_whisper.tokenizer.Tokenizer.encode": ("self", "text"),
    "faster_whisper.tokenizer.Tokenizer.decode": ("self", "tokens"),
    "faster_whisper.transcribe.get_compression_ratio": ("text",),
    "faster_whisper.transcribe.get_suppressed_tokens": ("tokenizer", "suppress_tokens"),
    "faster_whisper.vad.VadOptions": (
        "threshold", "neg_threshold", "min_speech_duration_ms", "max_speech_duration_s", "min_silence_duration_ms",
        "speech_pad_ms"),
    "faster_whisper.vad.get_speech_timestamps": ("audio", "vad_options", "sampling_rate", "kwargs"),
    # CTranslate2's are pybind11 builtins: their signature is the first line of the docstring
    "ctranslate2.models.Whisper.generate": (
        "self", "features", "prompts", "asynchronous", "beam_size", "patience", "num_hypotheses", "length_penalty",
        "repetition_penalty", "no_repeat_ngram_size", "max_length", "return_scores", "return_logits_vocab",
        "return_no_speech_prob", "max_initial_timestamp_index", "suppress_blank", "suppress_tokens",
        "sampling_topk", "sampling_temperature"),
    "ctranslate2.models.Whisper.detect_language": ("self", "features"),
    "ctranslate2.get_cuda_device_count": (),
    "ctranslate2.get_supported_compute_types": ("device", "device_index"),
}

#: Attributes the adapter reads, per class or module.
ATTRIBUTES = {
    "ctranslate2.models.Whisper": ("is_multilingual", "device", "generate", "detect_language"),
    "ctranslate2.models.WhisperGenerationResult": ("sequences_ids", "scores", "no_speech_prob"),
    "faster_whisper.tokenizer.Tokenizer": ("eot",),
    "faster_whisper.tokenizer": ("_LANGUAGE_CODES",),
}

#: What the bundled tiny.en int8 model gives (configs/local.yaml, a chunk alone), measured with faster-whisper
#: 1.2.1 / CTranslate2 4.8.5 on CPU: LJ002-0018 stops at <|5.04|> and is resumed, so it exercises the segment
#: splitting, resuming and word alignment.
LJ_CLIP = "ljspeech/LJ002-0018.wav"
LJ_SEGMENT_STARTS = (0.0, 5.42)
START_TOLERANCE_S = 0.1
JFK_MAX_WER = 0.1  # int8 on CPU is not bit-deterministic: two words of 22 may move


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current] if current.strip() else parts


def parameter_names(obj) -> tuple[str, ...]:
    """Parameter names of a Python callable, or of a pybind11 builtin from its docstring's signature line."""
    try:
        return tuple(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        first = (obj.__doc__ or "").splitlines()[0]
        inner = first[first.index("(") + 1 : first.rindex(") ->")]
        names = [part.split(":")[0].split("=")[0].strip() for part in _split_top_level(inner)]
        return tuple(n for n in names if n and n != "*")


def test_installed_versions_are_the_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for package, pinned in whisper.PINS.items():
        assert f"{package}=={pinned}" in deps, f"pyproject.toml must pin {package}=={pinned} exactly"
        assert version(package) == pinned, (
            f"{package} {version(package)} is installed but the adapter was written against {pinned}: check "
            "pipelines/core/whisper.py against the release's changes, rerun the dev bench, then move the pin")
    assert whisper.library_versions() == whisper.PINS


@pytest.mark.parametrize("dotted", sorted(SIGNATURES))
def test_signature_is_what_the_adapter_was_written_against(dotted):
    assert parameter_names(_resolve(dotted)) == SIGNATURES[dotted], (
        f"{dotted} changed its parameters: pipelines/core/whisper.py calls it")


@pytest.mark.parametrize("dotted", sorted(ATTRIBUTES))
def test_attributes_the_adapter_reads_exist(dotted):
    owner = _resolve(dotted)
    missing = [name for name in ATTRIBUTES[dotted] if not hasattr(owner, name)]
    assert not missing, f"{dotted} lost {missing}: pipelines/core/whisper.py reads them"


def test_the_models_geometry_is_the_constants(transcriber):
    """The constants the core uses (pipelines/core/constants.py) are the ones faster-whisper computes."""
    w = transcriber.whisper
    assert (w.frames_per_second, w.hop_length) == (FRAMES_PER_SECOND, HOP_LENGTH) == (100, 160)
    assert (SAMPLE_RATE, N_SAMPLES, N_FRAMES) == (16000, 480000, 3000)
    assert w.time_precision == 0.02 and w.max_length == 448 and not w.is_multilingual
    import numpy as np

    feats = w.features(np.zeros(SAMPLE_RATE, np.float32))
    assert feats.shape == (80, N_FRAMES) and feats.dtype == np.float32
    assert "en" in whisper.LANGUAGE_CODES and "yue" in whisper.LANGUAGE_CODES and len(whisper.LANGUAGE_CODES) >= 99


def test_golden_jfk_text(transcriber):
    from pipelines.core.audio import decode_audio
    from pipelines.core.transcriber import Chunk
    from pipelines.core.wer import normalize, word_error_rate

    reference = next(r["reference"] for r in corpus_rows() if r["path"] == "jfk/jfk.flac")
    (res,) = transcriber.transcribe_chunks([Chunk("jfk", 0, 0.0, decode_audio(JFK).samples)])
    text = "".join(s.text for s in res.segments)
    assert normalize(JFK_PHRASE) in normalize(text), text
    assert word_error_rate([reference], [text]) <= JFK_MAX_WER, text
    assert res.language == "en" and len(res.segments) >= 1


def test_golden_lj_speech_segment_starts(transcriber):
    from pipelines.core.audio import decode_audio
    from pipelines.core.transcriber import Chunk

    (res,) = transcriber.transcribe_chunks([Chunk("lj", 0, 0.0, decode_audio(CORPUS / LJ_CLIP).samples)])
    starts = [s.start for s in res.segments]
    assert len(starts) == len(LJ_SEGMENT_STARTS), starts
    assert all(abs(a - b) <= START_TOLERANCE_S for a, b in zip(starts, LJ_SEGMENT_STARTS)), starts
    assert all(s.words for s in res.segments)  # word alignment ran on every segment
