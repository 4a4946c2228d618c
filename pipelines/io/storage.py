"""Read input bytes through fsspec (local paths, ``file://``, ``s3://``...) and hash them.

The SHA-256 of the source bytes is the content key of a row (``sha256``), used for resume.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import fsspec

from pipelines.core.errors import AudioDecodeError


@dataclass(frozen=True)
class SourceBytes:
    """The bytes of one input and their hex SHA-256."""

    content: bytes
    sha256: str


def read_audio_bytes(uri: str, storage_options: Optional[dict] = None) -> SourceBytes:
    """Read a whole input file.

    Raises:
        AudioDecodeError: the path does not exist, is a directory, is empty, or cannot be read (permissions...),
            with the reason in the message.
    """
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    if "://" not in local and os.path.isdir(local):
        raise AudioDecodeError(f"{uri}: is a directory, not an audio file")
    try:
        with fsspec.open(local, "rb", **(storage_options or {})) as f:
            content = f.read()
    except FileNotFoundError as exc:
        raise AudioDecodeError(f"{uri}: no such file") from exc
    except PermissionError as exc:
        raise AudioDecodeError(f"{uri}: permission denied") from exc
    except IsADirectoryError as exc:
        raise AudioDecodeError(f"{uri}: is a directory, not an audio file") from exc
    except OSError as exc:
        raise AudioDecodeError(f"{uri}: cannot be read ({exc})") from exc
    if not content:
        raise AudioDecodeError(f"{uri}: file is empty (0 bytes)")
    return SourceBytes(content, hashlib.sha256(content).hexdigest())
