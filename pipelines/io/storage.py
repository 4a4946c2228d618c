"""Read input bytes through fsspec (local paths, ``file://``, ``s3://``...) and hash them.

The SHA-256 of the source bytes is the content key of a row (``sha256``), used for resume. Both readers refuse
what would hang or exhaust memory before opening it: a directory, a FIFO or device (reading a FIFO blocks
forever, ``/dev/zero`` never ends), a file above ``max_bytes``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Optional

import fsspec

from pipelines.core.errors import AudioDecodeError, AudioLimitError

#: Bytes per read while hashing (the hash pass never holds a whole file).
HASH_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceBytes:
    """The bytes of one input and their hex SHA-256."""

    content: bytes
    sha256: str


def _local(uri: str) -> Optional[str]:
    """The local path of ``uri``, or None for a remote URL."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return None if "://" in path else path


def _check_local(uri: str, path: str, max_bytes: Optional[int]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise AudioDecodeError(f"{uri}: no such file") from exc
    except PermissionError as exc:
        raise AudioDecodeError(f"{uri}: permission denied") from exc
    except OSError as exc:
        raise AudioDecodeError(f"{uri}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise AudioDecodeError(f"{uri}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise AudioDecodeError(f"{uri}: is {kind}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise AudioLimitError(f"{uri}: {st.st_size / 1e9:.2f} GB, above the limit of {max_bytes / 1e9:.2f} GB "
                              "(guards.max_file_bytes)")


def _open_errors(uri: str, exc: OSError) -> AudioDecodeError:
    if isinstance(exc, FileNotFoundError):
        return AudioDecodeError(f"{uri}: no such file")
    if isinstance(exc, PermissionError):
        return AudioDecodeError(f"{uri}: permission denied")
    if isinstance(exc, IsADirectoryError):
        return AudioDecodeError(f"{uri}: is a directory, not an audio file")
    return AudioDecodeError(f"{uri}: cannot be read ({exc.strerror or exc})")


def read_audio_bytes(uri: str, storage_options: Optional[dict] = None,
                     max_bytes: Optional[int] = None) -> SourceBytes:
    """Read a whole input file.

    Args:
        uri: local path, ``file://`` or any fsspec URL.
        storage_options: fsspec options.
        max_bytes: refuse larger files (checked before reading where the size is known, and while reading).

    Raises:
        AudioDecodeError: the path does not exist, is a directory, a FIFO or device, is empty, or cannot be read
            (permissions...), with the reason in the message.
        AudioLimitError: the file is larger than ``max_bytes``.
    """
    local = _local(uri)
    if local is not None:
        _check_local(uri, local, max_bytes)
    try:
        with fsspec.open(local or uri, "rb", **(storage_options or {})) as f:
            content = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as exc:
        raise _open_errors(uri, exc) from exc
    if max_bytes is not None and len(content) > max_bytes:
        raise AudioLimitError(f"{uri}: larger than the limit of {max_bytes / 1e9:.2f} GB (guards.max_file_bytes)")
    if not content:
        raise AudioDecodeError(f"{uri}: file is empty (0 bytes)")
    return SourceBytes(content, hashlib.sha256(content).hexdigest())


def hash_source(uri: str, storage_options: Optional[dict] = None, max_bytes: Optional[int] = None) -> str:
    """The hex SHA-256 of an input's bytes, read in blocks of :data:`HASH_BLOCK_BYTES` (never the whole file at
    once): the same value :func:`read_audio_bytes` gives, and it raises where that raises (so a file that cannot
    be read has no hash on either path).

    Raises:
        AudioDecodeError, AudioLimitError: as :func:`read_audio_bytes`.
    """
    local = _local(uri)
    if local is not None:
        _check_local(uri, local, max_bytes)
    digest = hashlib.sha256()
    size = 0
    try:
        with fsspec.open(local or uri, "rb", **(storage_options or {})) as f:
            while block := f.read(HASH_BLOCK_BYTES):
                digest.update(block)
                size += len(block)
                if max_bytes is not None and size > max_bytes:
                    raise AudioLimitError(
                        f"{uri}: larger than the limit of {max_bytes / 1e9:.2f} GB (guards.max_file_bytes)")
    except OSError as exc:
        raise _open_errors(uri, exc) from exc
    if not size:
        raise AudioDecodeError(f"{uri}: file is empty (0 bytes)")
    return digest.hexdigest()
