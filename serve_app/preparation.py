"""Request preparation: the validated form -> the audio's bytes (the upload or a ``url``) -> a
:class:`~serve_app.schemas.TranscriptionJob`, through :func:`pipelines.core.engine.prepare`, the batch job's own
decode -> guards -> VAD chunks (docs/architecture.md, invariant 1).

The endpoint's input limits are the job's stream guards (``guards``: sample rate, channels; the same
:class:`~pipelines.core.engine.InputLimits` checks) and a duration limit, the smaller of
``guards.max_audio_duration_s`` and ``chunking.max_audio_duration_s``; the size limit is ``http.max_upload_bytes``.
"""

from __future__ import annotations

import uuid
from typing import Optional

from pipelines.config import ServeConfig
from pipelines.core.engine import FileSpec, InputLimits, prepare
from pipelines.core.errors import AudioDecodeError, AudioLimitError, AudioTooLongError
from pipelines.io.storage import Storage
from serve_app.schemas import APIError, TranscriptionJob, TranscriptionRequest, effective_decoding
from serve_app.url_input import read_url


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
    return TranscriptionJob(prepared, effective_decoding(cfg.decoding, request), request.language,
                            request.speaker_count if request.wants_speakers else None)


def check_request(request: TranscriptionRequest, has_file: bool, cfg: ServeConfig) -> None:
    """The checks on a valid form that need the config: a served model name, and either a file or a ``url``.

    Raises:
        APIError: 400 ``model_not_found``, ``invalid_value`` (both file and url), ``missing_required_parameter``,
            ``diarization_unavailable`` (diarization asked for where ``diarization.enabled`` is off).
    """
    if request.wants_speakers and not cfg.diarization.enabled:
        param = "response_format" if request.response_format == "diarized_json" else "diarize"
        raise APIError(400, "speaker diarization is not enabled on this server (diarization.enabled in its config)",
                       code="diarization_unavailable", param=param)
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
