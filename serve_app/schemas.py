"""Request and response shapes of ``POST /v1/audio/transcriptions`` (OpenAI's), and the error body.

The request's form fields are validated once into :class:`TranscriptionRequest`; the ingress decodes and chunks the
upload into a :class:`TranscriptionJob` for the model deployment. ``verbose_json`` segments and words are the
:class:`~pipelines.core.schema.Segment` dicts of the Parquet rows, field for field (docs/architecture.md, invariant 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import DecodingConfig
from pipelines.core.schema import SCHEMA_VERSION, Transcript
from pipelines.core.transcriber import Chunk
from pipelines.core.whisper import LANGUAGE_CODES

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["segment", "word"]


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

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="Model name: the configured model.name or one of http.model_aliases.")
    language: Optional[str] = Field(None, description="ISO-639-1 code of the audio's language; None detects it.")
    prompt: Optional[str] = Field(None, max_length=4000, description="Text to condition the first window on.")
    temperature: float = Field(
        0.0, ge=0.0, le=1.0,
        description="0: the config's fallback schedule (start at 0, raise it when a decode fails the quality "
                    "tests, as OpenAI describes); above 0: sample at this temperature only.",
    )
    response_format: ResponseFormat = Field("json", description="json, text, srt, vtt or verbose_json.")
    timestamp_granularities: tuple[Granularity, ...] = Field(
        ("segment",), description="'segment' and/or 'word' (word needs response_format=verbose_json)."
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

    @field_validator("timestamp_granularities")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value)) or ("segment",)

    @model_validator(mode="after")
    def _words_need_verbose(self) -> "TranscriptionRequest":
        if "word" in self.timestamp_granularities and self.response_format != "verbose_json":
            raise ValueError("timestamp_granularities=word needs response_format=verbose_json")
        return self

    @classmethod
    def from_form(cls, fields: dict[str, Any]) -> "TranscriptionRequest":
        """Validate the form's text fields (empty strings count as absent).

        Raises:
            APIError: 400 naming the first bad field (an unknown field, a bad value, a missing ``model``).
        """
        cleaned = {k: v for k, v in fields.items() if not (isinstance(v, str) and not v.strip())}
        try:
            return cls.model_validate(cleaned)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            if err["type"] == "extra_forbidden":
                message = f"unknown or unsupported parameter {param!r}"
                code = "unknown_parameter"
            elif err["type"] == "missing":
                message = f"missing required parameter {param!r}"
                code = "missing_required_parameter"
            else:
                message = f"invalid {param or 'request'}: {err['msg']}"
                if err["type"] == "literal_error" and "input" in err:
                    message += f" (got {err['input']!r})"
                code = "invalid_value"
            raise APIError(400, message, code=code, param=param) from exc


def effective_decoding(base: DecodingConfig, request: TranscriptionRequest) -> DecodingConfig:
    """The config's decoding options with the request's ``temperature`` and word granularity applied.

    ``language`` and ``prompt`` travel on each :class:`Chunk` instead, so requests differing only in those still
    share a model call.
    """
    update: dict[str, Any] = {}
    if request.temperature > 0:
        update["temperatures"] = (request.temperature,)
    if "word" in request.timestamp_granularities and not base.word_timestamps:
        update["word_timestamps"] = True
    if not update:
        return base
    return DecodingConfig.model_validate(base.model_dump() | update)


@dataclass(frozen=True)
class TranscriptionJob:
    """One request's audio, decoded and chunked by the ingress exactly as the batch job does, for the model.

    ``chunks`` carry float32 16 kHz samples, shape (n,), at most ``chunking.max_chunk_s`` each, keyed by ``key``
    (unique per request); ``()`` means VAD found no speech. ``duration_s`` is the decoded file's length.
    """

    key: str
    duration_s: float
    chunks: tuple[Chunk, ...]
    decoding: DecodingConfig
    language: Optional[str] = None

    @property
    def audio_s(self) -> float:
        """Seconds of audio sent to the model (the chunks' total)."""
        return sum(c.duration_s for c in self.chunks)


# ----------------------------------------------------------------------------------------------------- response
def json_response(transcript: Transcript) -> dict:
    """``response_format=json``: ``{"text": ...}``."""
    return {"text": transcript.text}


def verbose_json_response(transcript: Transcript, granularities: tuple[str, ...], task: str) -> dict:
    """``response_format=verbose_json``: OpenAI's fields (``task``, ``language``, ``duration``, ``text``,
    ``segments``, ``words`` when asked for) plus ``language_probability`` and ``schema_version``.

    Each segment is ``Segment.to_dict()``, the Parquet ``segments`` struct field for field (its ``words`` too);
    ``words`` at the top level is every segment's words in order, when ``word`` is among ``granularities``.
    Times are seconds of file time.
    """
    segments = [seg.to_dict() for seg in transcript.segments]
    body: dict[str, Any] = {
        "task": task,
        "language": transcript.language or "",
        "language_probability": transcript.language_probability,
        "duration": round(transcript.duration_s, 3),
        "text": transcript.text,
        "segments": segments,
        "schema_version": SCHEMA_VERSION,
        "usage": {"type": "duration", "seconds": round(transcript.duration_s, 3)},
    }
    if "word" in granularities:
        body["words"] = [word for seg in segments for word in seg["words"]]
    return body
