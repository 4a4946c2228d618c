"""The input guards: what an input may be before it is decoded. The stream limits are shared by the job
(``JobConfig.guards``) and the endpoint (``ServeConfig.guards``); see docs/security.md."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from pipelines.config.base import Frozen as _Frozen


class StreamGuardsConfig(_Frozen):
    """What an input's audio stream may be, checked from its header before it is decoded (and again on the first
    decoded frame): the part of the guards that the job (``JobConfig.guards``) and the endpoint
    (``ServeConfig.guards``) share, applied by the same code (``pipelines.core.audio.decode_audio``, ``limits``).
    A refused input becomes an error row in the job and a 400 at the endpoint."""

    min_sample_rate_hz: int = Field(
        4000, ge=1, description="Streams below this sample rate are refused (a 100 Hz 'wav' upsamples 160x; a 1 Hz "
                                "one 16000x: 3.6 KB declaring 1 Hz would decode to an hour, 230 MB of float32)."
    )
    max_sample_rate_hz: int = Field(384000, ge=1, description="Streams above this sample rate are refused.")
    max_channels: int = Field(64, ge=1, description="Streams with more channels than this are refused.")


class GuardsConfig(StreamGuardsConfig):
    """Limits that turn a hostile or broken input into an error row before it can exhaust memory, and the job's
    error-rate alarm. (The duration limit is ``chunking.max_audio_duration_s``.)"""

    max_file_bytes: int = Field(
        4 * 1024**3, ge=1, description=(
            "Files larger than this become error rows without being read (bytes; default 4 GiB: a 4 h 48 kHz stereo "
            "16-bit wav is 2.8 GB): local files by their stat, remote objects (s3://...) by their size from the "
            "storage (a HEAD). A decode actor holds a whole file in memory."
        ),
    )
    max_error_rate: Optional[float] = Field(
        None, ge=0, le=1, description=(
            "Fail the job (summary in capitals, exit code 3) when more than this fraction of the manifest's rows "
            "are error rows after the run; None: off."
        ),
    )



class ServeGuardsConfig(StreamGuardsConfig):
    """The endpoint's input guards: the job's stream limits (sample rate, channels; same type, same checks) and a
    duration limit for one request. The size limit is ``http.max_upload_bytes`` (uploads and ``url`` reads)."""

    max_audio_duration_s: float = Field(
        1800.0, gt=0,
        description="Longest audio one request may carry (s); refused with 400 audio_too_long before decoding when "
                    "the container declares its duration, else once decoding passes it. The job allows "
                    "chunking.max_audio_duration_s (4 h); the endpoint takes the smaller of the two. 30 min bounds "
                    "what one request costs: 115 MB of float32 samples in the ingress while it is chunked, and a "
                    "transcription that ends well inside http.request_timeout_s. The upload limit does not bound "
                    "duration: 25 MB of 32 kb/s Opus is 1.7 h.",
    )
