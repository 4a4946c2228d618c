"""Request preparation: the validated form -> the audio's bytes (the upload or a ``url``) -> a
:class:`~serve_app.schemas.TranscriptionJob`, through :func:`pipelines.core.engine.prepare`, the batch job's own
decode -> guards -> VAD chunks (docs/architecture.md, invariant 1).

The endpoint's input limits are the job's stream guards (``guards``: sample rate, channels; the same
:class:`~pipelines.core.engine.InputLimits` checks) and a duration limit, the smaller of
``guards.max_audio_duration_s`` and ``chunking.max_audio_duration_s``; the size limit is ``http.max_upload_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
import uuid
from typing import Optional

import numpy as np

from pipelines.config import ServeConfig
from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.engine import FileSpec, InputLimits, prepare
from pipelines.core.errors import AudioDecodeError, AudioLimitError, AudioTooLongError
from pipelines.io.storage import Storage
from serve_app.schemas import APIError, TranscriptionJob, TranscriptionRequest, effective_decoding
from serve_app.url_input import read_url

MAX_REFERENCE_BYTES = 1_000_000  # a known speaker's reference clip, decoded from its data URL (bytes)
MAX_REFERENCE_AUDIO_S = 30.0  # its decoded duration (s); OpenAI asks for 2-10 s clips
REFERENCE_SPEECH_S = 10.0  # the speech kept from a reference after the VAD (s): the voice's embedding is its mean
REFERENCES_PARAM = "known_speaker_references[]"
_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)


def input_limits(cfg: ServeConfig) -> InputLimits:
    """The endpoint's :class:`InputLimits`: the stream guards of ``cfg.guards`` and the smaller duration limit,
    named by the setting it comes from."""
    guards, chunking = cfg.guards, cfg.chunking
    if guards.max_audio_duration_s <= chunking.max_audio_duration_s:
        max_s, field = guards.max_audio_duration_s, "guards.max_audio_duration_s"
    else:
        max_s, field = chunking.max_audio_duration_s, "chunking.max_audio_duration_s"
    return InputLimits(max_duration_s=max_s, min_sample_rate_hz=guards.min_sample_rate_hz,
                       max_sample_rate_hz=guards.max_sample_rate_hz, max_channels=guards.max_channels,
                       duration_field=field)


def prepare_job(data: bytes, filename: str, request: TranscriptionRequest, cfg: ServeConfig) -> TranscriptionJob:
    """Prepare the upload with :func:`pipelines.core.engine.prepare` under :func:`input_limits`: a fresh key, the
    request's language and prompt, and a pack group of its own (its chunks never share a window with another
    caller's audio).

    Raises:
        APIError: 400 ``invalid_audio`` (not decodable audio), ``audio_out_of_limits`` (sample rate or channels
            outside ``guards``; the message names the field) or ``audio_too_long`` (above the duration limit; the
            message names the setting).
    """
    key = uuid.uuid4().hex
    spec = FileSpec(key=key, name=filename, language=request.language, prompt=request.prompt, pack_group=key)
    try:
        prepared = prepare(data, spec, cfg.chunking, input_limits(cfg))
    except AudioTooLongError as exc:
        raise APIError(400, str(exc), code="audio_too_long", param="file") from exc
    except AudioLimitError as exc:
        raise APIError(400, str(exc), code="audio_out_of_limits", param="file") from exc
    except AudioDecodeError as exc:
        raise APIError(400, f"the file is not audio that can be decoded: {exc}", code="invalid_audio",
                       param="file") from exc
    known = tuple((name, reference_speech(i, name, ref, cfg))
                  for i, (name, ref) in enumerate(zip(request.known_speaker_names, request.known_speaker_references)))
    return TranscriptionJob(prepared, effective_decoding(cfg.decoding, request), request.language,
                            request.speaker_count if request.wants_speakers else None, known)


def reference_speech(index: int, name: str, reference: str, cfg: ServeConfig) -> np.ndarray:
    """The speech of one known speaker's reference: its data URL's bytes (at most :data:`MAX_REFERENCE_BYTES`)
    decoded by :func:`pipelines.core.engine.prepare` under :func:`input_limits` with the duration capped at
    :data:`MAX_REFERENCE_AUDIO_S`, its VAD chunks joined and cut to the first :data:`REFERENCE_SPEECH_S`.

    Returns:
        float32, shape (n,), 16 kHz mono speech, n <= REFERENCE_SPEECH_S * 16000.

    Raises:
        APIError: 400 ``invalid_value`` naming ``known_speaker_references[]`` and the reference (index, name): not
            a base64 data URL, too large, not decodable, outside the guards, too long, or without speech.
    """
    where = f"known_speaker_references[{index}] (for {name!r})"

    def bad(why: str) -> APIError:
        return APIError(400, f"{where} {why}", code="invalid_value", param=REFERENCES_PARAM)

    head = _DATA_URL.match(reference)
    if head is None:
        raise bad("is not a base64 data URL such as 'data:audio/wav;base64,...'")
    encoded = reference[head.end():]
    if len(encoded) > (MAX_REFERENCE_BYTES + 2) // 3 * 4 + 4:
        raise bad(f"is larger than {MAX_REFERENCE_BYTES / 1e6:g} MB")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad(f"is not valid base64: {exc}") from exc
    if len(data) > MAX_REFERENCE_BYTES:
        raise bad(f"is larger than {MAX_REFERENCE_BYTES / 1e6:g} MB")
    if not data:
        raise bad("is empty")
    base = input_limits(cfg)
    limits = dataclasses.replace(base, max_duration_s=min(base.max_duration_s or MAX_REFERENCE_AUDIO_S,
                                                          MAX_REFERENCE_AUDIO_S),
                                 duration_field="known speaker references")
    spec = FileSpec(key=uuid.uuid4().hex, name=f"reference-{index}", language=None, prompt=None)
    try:
        prepared = prepare(data, spec, cfg.chunking, limits)
    except AudioTooLongError as exc:
        raise bad(f"is longer than {limits.max_duration_s:g} s") from exc
    except (AudioLimitError, AudioDecodeError) as exc:
        raise bad(f"is not audio that can be used: {exc}") from exc
    if not prepared.num_chunks:
        raise bad("holds no speech")
    return np.concatenate(prepared.chunk_samples).astype(np.float32)[:int(REFERENCE_SPEECH_S * SAMPLE_RATE)]


def check_request(request: TranscriptionRequest, has_file: bool, cfg: ServeConfig) -> None:
    """The checks on a valid form that need the config: a served model name, and either a file or a ``url``.

    Raises:
        APIError: 400 ``model_not_found``, ``invalid_value`` (both file and url), ``missing_required_parameter``,
            ``diarization_unavailable`` (diarization asked for where ``diarization.enabled`` is off),
            ``invalid_value`` for known speakers without diarization, names and references whose counts differ,
            or a name given twice.
    """
    if request.wants_speakers and not cfg.diarization.enabled:
        param = "response_format" if request.response_format == "diarized_json" else "diarize"
        raise APIError(400, "speaker diarization is not enabled on this server (diarization.enabled in its config)",
                       code="diarization_unavailable", param=param)
    names, references = request.known_speaker_names, request.known_speaker_references
    if (names or references) and not request.wants_speakers:
        param = "known_speaker_names[]" if names else REFERENCES_PARAM
        raise APIError(400, "known speakers need diarization: response_format=diarized_json or diarize=true",
                       code="invalid_value", param=param)
    if len(names) != len(references):
        raise APIError(400, f"give one known_speaker_references[] per known_speaker_names[], in the same order "
                            f"({len(names)} names, {len(references)} references)", code="invalid_value",
                       param=REFERENCES_PARAM if names else "known_speaker_names[]")
    if len(set(names)) != len(names):
        raise APIError(400, "known_speaker_names[] holds a name twice", code="invalid_value",
                       param="known_speaker_names[]")
    served = (cfg.model.name, *cfg.http.model_aliases)
    if request.model not in served:
        raise APIError(400, f"model {request.model!r} is not served here; use one of {list(served)}",
                       code="model_not_found", param="model")
    if request.url is not None and has_file:
        raise APIError(400, "give either 'file' or 'url', not both", code="invalid_value", param="url")
    if request.url is None and not has_file:
        alternative = " or 'url'" if cfg.http.url_input.enabled else ""
        raise APIError(400, f"missing required parameter 'file' (the audio, as a multipart file){alternative}",
                       code="missing_required_parameter", param="file")


def load_input(request: TranscriptionRequest, upload: Optional[tuple[bytes, str]], cfg: ServeConfig,
               storage: Storage) -> tuple[bytes, str]:
    """The audio's bytes and file name: the upload's, or the object ``request.url`` names (read with
    :func:`~serve_app.url_input.read_url`; blocking: call it on a worker thread).

    Raises:
        APIError: 413 ``file_too_large`` (above ``http.max_upload_bytes``), 400 ``empty_file``, and
            :func:`~serve_app.url_input.read_url`'s errors.
    """
    limit = cfg.http.max_upload_bytes
    if upload is None:
        data, filename = read_url(request.url, cfg.http.url_input, storage, limit)
    else:
        data, filename = upload
    if len(data) > limit:
        raise APIError(413, f"the file is too large ({len(data) / 1e6:.1f} MB); the limit is {limit / 1e6:.1f} MB",
                       code="file_too_large", param="file")
    if not data:
        raise APIError(400, f"the file {filename!r} is empty (0 bytes)", code="empty_file", param="file")
    return data, filename
