"""Request shapes of ``POST /v1/audio/transcriptions`` (OpenAI's), the job sent to the model, and the error body.

The form is validated once into :class:`TranscriptionForm` (FastAPI reads it: :mod:`serve_app.routes`); its
fields without the file are a :class:`TranscriptionRequest`; the ingress prepares the upload into a
:class:`TranscriptionJob` for the model deployment (:mod:`serve_app.preparation`). Responses are rendered by
:mod:`pipelines.core.export`, the batch export's renderer (``verbose_json`` segments are the Parquet rows'
``segments``, field for field: docs/architecture.md, invariant 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
from fastapi import UploadFile
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.config import DecodingConfig
from pipelines.core.constants import SAMPLE_RATE
from pipelines.core.diarization import SpeakerCount
from pipelines.core.engine import LANGUAGE_CODES, PreparedFile

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json", "diarized_json"]
Granularity = Literal["segment", "word"]
MAX_KNOWN_SPEAKERS = 4  # known_speaker_names[] / known_speaker_references[] per request (OpenAI's limit)


# ------------------------------------------------------------------------------------------------------- errors
class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str = Field(description="What went wrong, for a person.")
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx).")
    param: Optional[str] = Field(None, description="The request field at fault, if one is.")
    code: Optional[str] = Field(None, description="A stable machine-readable code, e.g. 'invalid_audio'.")
    error_id: Optional[str] = Field(
        None, description="5xx only: a random id (uuid4 hex) also written to the server's log with the full error; "
                          "quote it when reporting the problem. Absent from 4xx bodies.")


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields; the ingress turns it into an :class:`ErrorBody`.

    May be raised in the model deployment: it reaches the ingress wrapped by Ray (still an instance of this class,
    the original under ``.cause``); use :func:`api_error_of` to get the fields back.

    A 5xx error's ``message`` is generic (never an exception's text: a Ray task error carries a pid, a node's IP
    and a remote traceback); ``error_id`` links its body to the log line that holds the details (see
    ``serve_app.app.server_error``).
    """

    def __init__(self, status_code: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                 type: Optional[str] = None, headers: Optional[dict[str, str]] = None,  # noqa: A002 - OpenAI's name
                 error_id: Optional[str] = None):
        super().__init__(status_code, message, code, param, type, headers, error_id)  # all in args: picklable
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ("server_error" if status_code >= 500 else "invalid_request_error")
        self.headers = headers or {}
        self.error_id = error_id

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        """The JSON error body; a 5xx with an ``error_id`` names it in the message and in ``error.error_id``."""
        message = self.message if self.error_id is None else f"{self.message} (error id {self.error_id})"
        detail = ErrorDetail(message=message, type=self.type, param=self.param, code=self.code,
                             error_id=self.error_id).model_dump()
        if self.error_id is None:
            del detail["error_id"]  # 4xx bodies keep OpenAI's four fields
        return {"error": detail}


def api_error_of(exc: BaseException) -> Optional[APIError]:
    """The :class:`APIError` in ``exc``: the cause a Ray task error wraps, or ``exc`` itself; None if neither."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, APIError):
        return cause
    return exc if isinstance(exc, APIError) else None


# ------------------------------------------------------------------------------------------------------ request
class TranscriptionRequest(BaseModel):
    """The form fields of ``POST /v1/audio/transcriptions`` except ``file`` (OpenAI's names and meanings, plus
    Groq's ``url``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    model: str = Field(min_length=1, description="Model name: the configured model.name or one of http.model_aliases.")
    language: Optional[str] = Field(None, description="ISO-639-1 code of the audio's language; None detects it.")
    prompt: Optional[str] = Field(None, max_length=4000, description="Text to condition the first window on.")
    temperature: float = Field(
        0.0, ge=0.0, le=1.0,
        description="0: the config's fallback schedule (start at 0, raise it when a decode fails the quality "
                    "tests, as OpenAI describes); above 0: sample at this temperature only.",
    )
    response_format: ResponseFormat = Field("json", description=(
        "json, text, srt, vtt, verbose_json or diarized_json (OpenAI's: segments with speaker; implies diarize)."))
    diarize: bool = Field(False, description=(
        "raywhisper's extension: diarize (who spoke when) with any response_format: speaker on verbose_json's "
        "segments and words and a speakers list, speaker prefixes in srt/text, voice tags in vtt. Needs "
        "diarization.enabled in the server's config."))
    num_speakers: Optional[int] = Field(None, ge=1, le=32, description="With diarization: the exact speaker count.")
    min_speakers: Optional[int] = Field(None, ge=1, le=32, description="With diarization: at least this many.")
    max_speakers: Optional[int] = Field(None, ge=1, le=32, description="With diarization: at most this many.")
    known_speaker_names: tuple[Annotated[str, StringConstraints(min_length=1, max_length=64)], ...] = Field(
        (), alias="known_speaker_names[]", max_length=MAX_KNOWN_SPEAKERS,
        validation_alias=AliasChoices("known_speaker_names[]", "known_speaker_names"),
        description="With diarization (OpenAI's): up to 4 speaker names, one known_speaker_references[] each, in the "
                    "same order; diarized speakers whose voice matches a reference get its name (others keep "
                    "SPEAKER_NN). Repeat the field for each name.")
    known_speaker_references: tuple[str, ...] = Field(
        (), alias="known_speaker_references[]", max_length=MAX_KNOWN_SPEAKERS,
        validation_alias=AliasChoices("known_speaker_references[]", "known_speaker_references"),
        description="With known_speaker_names[]: each name's voice, a data URL (data:audio/wav;base64,...) of 2-10 s "
                    "of that speaker alone; decoded under the server's guards (at most 30 s and 1 MB each; the "
                    "first 10 s of speech are used).")
    timestamp_granularities: tuple[Granularity, ...] = Field(
        ("segment",), alias="timestamp_granularities[]",
        validation_alias=AliasChoices("timestamp_granularities[]", "timestamp_granularities"),
        description="'segment' and/or 'word' (word needs response_format=verbose_json); repeat the field for both.",
    )
    url: Optional[str] = Field(
        None, max_length=2048,
        description="Instead of 'file': an s3:// or file:// URL of the audio, read by the server; only where "
                    "http.url_input allows it (off by default; then only under its allowed_prefixes, else 403).",
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        code = value.strip().lower()
        if code not in LANGUAGE_CODES:
            raise ValueError(f"unknown language code {value!r}; use an ISO-639-1 code such as 'en' or 'fr'")
        return code

    @field_validator("timestamp_granularities", "known_speaker_names", "known_speaker_references", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("timestamp_granularities")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value)) or ("segment",)

    @model_validator(mode="after")
    def _words_need_verbose(self) -> "TranscriptionRequest":
        if "word" in self.timestamp_granularities and self.response_format != "verbose_json":
            raise ValueError("timestamp_granularities=word needs response_format=verbose_json")
        return self

    @model_validator(mode="after")
    def _speaker_counts(self) -> "TranscriptionRequest":
        self.speaker_count  # num_speakers or min/max, min <= max
        return self

    @property
    def wants_speakers(self) -> bool:
        """Whether the request asks for diarization (``diarize`` or ``response_format=diarized_json``)."""
        return self.diarize or self.response_format == "diarized_json"

    @property
    def speaker_count(self) -> SpeakerCount:
        """The request's speaker count hint.

        Raises:
            ValueError: inconsistent counts (a 400 through the form's validation).
        """
        return SpeakerCount(num_speakers=self.num_speakers, min_speakers=self.min_speakers,
                            max_speakers=self.max_speakers)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict):  # a form's empty or blank text field counts as absent
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    @classmethod
    def from_form(cls, fields: dict[str, Any]) -> "TranscriptionRequest":
        """Validate the form's text fields (empty strings count as absent).

        Raises:
            APIError: 400 naming the first bad field (an unknown field, a bad value, a missing ``model``).
        """
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise request_error(exc.errors()) from exc


class TranscriptionForm(TranscriptionRequest):
    """OpenAI's transcription form: the audio file (or, where allowed, its url) and options."""

    file: Optional[UploadFile] = Field(None, description="The audio file (required unless 'url' is given).")

    def request(self) -> TranscriptionRequest:
        """The form's fields without the file."""
        return TranscriptionRequest.model_validate(self.model_dump(exclude={"file"}))


def request_error(errors: list[dict]) -> APIError:
    """The 400 :class:`APIError` for the first of pydantic's (or FastAPI's) validation ``errors`` of the form:
    ``unknown_parameter``, ``missing_required_parameter`` or ``invalid_value``, naming the field."""
    err = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    param = ".".join(str(p) for p in err["loc"] if p not in ("body", "query")) or None
    kind = err["type"]
    if kind == "extra_forbidden":
        return APIError(400, f"unknown or unsupported parameter {param!r}", code="unknown_parameter", param=param)
    if kind == "missing":
        return APIError(400, f"missing required parameter {param!r}", code="missing_required_parameter",
                        param=param)
    if isinstance(err.get("input"), UploadFile):
        message = f"parameter {param!r} must be a text field, not a file"
    elif param == "file":
        message = "parameter 'file' must be a file upload, not a text field"
    else:
        message = f"invalid {param or 'request'}: {err['msg']}"
        if kind == "literal_error" and "input" in err:
            message += f" (got {err['input']!r})"
    return APIError(400, message, code="invalid_value", param=param)


def effective_decoding(base: DecodingConfig, request: TranscriptionRequest) -> DecodingConfig:
    """The config's decoding options with the request's ``temperature`` and word granularity applied (word
    timestamps also for diarization: speakers are assigned word by word).

    ``language`` and ``prompt`` travel with the prepared file (:class:`~pipelines.core.engine.FileSpec`) instead,
    so requests differing only in those still share a model call.
    """
    update: dict[str, Any] = {}
    if request.temperature > 0:
        update["temperatures"] = (request.temperature,)
    if ("word" in request.timestamp_granularities or request.wants_speakers) and not base.word_timestamps:
        update["word_timestamps"] = True
    if not update:
        return base
    return DecodingConfig.model_validate(base.model_dump() | update)


@dataclass(frozen=True)
class TranscriptionJob:
    """One request for the model deployment: its upload prepared by :func:`pipelines.core.engine.prepare` exactly
    as the batch job prepares a file (decoded with the guards, VAD chunks; ``prepared.spec.key`` is unique per
    request and its chunks share windows with no other request's), the effective decoding options and the language
    asked for (None: detect)."""

    prepared: PreparedFile
    decoding: DecodingConfig
    language: Optional[str] = None
    speakers: Optional[SpeakerCount] = None  # diarize with this count hint; None: no diarization
    # known speakers: (name, float32 16 kHz speech of its reference, at most REFERENCE_SPEECH_S), in request order
    known_speakers: tuple[tuple[str, np.ndarray], ...] = ()

    @property
    def key(self) -> str:
        """The request's key (a uuid4 hex)."""
        return self.prepared.spec.key

    @property
    def duration_s(self) -> float:
        """The decoded upload's duration (s)."""
        return self.prepared.duration_s

    @property
    def num_chunks(self) -> int:
        """VAD chunks; 0 means no speech was found."""
        return self.prepared.num_chunks

    @property
    def audio_s(self) -> float:
        """Seconds of audio sent to the model (the chunks' total)."""
        return sum(len(s) for s in self.prepared.chunk_samples) / SAMPLE_RATE
