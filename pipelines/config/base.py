"""What every config section shares: frozen pydantic models (from the core's options) and the refusal of a field
that has moved to another section."""

from __future__ import annotations

from typing import Any

from pipelines.core.options import FrozenModel as Frozen  # noqa: F401 - the base of every section

__all__ = ["URL_INPUT_SCHEMES", "Frozen", "check_url_prefixes", "refuse_moved"]

#: Schemes of the URLs a request may name (the endpoint's ``url`` input, a job's manifest, audio and output):
#: local files and object stores (never http(s): no server-side fetching).
URL_INPUT_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def check_url_prefixes(value: tuple[str, ...], schemes: frozenset[str] = URL_INPUT_SCHEMES,
                       example: str = "'file:///absolute/dir/' or 's3://bucket/prefix/'") -> tuple[str, ...]:
    """Check allowed URL prefixes (a pydantic field check): each ``scheme://rest`` with a scheme of ``schemes``, a
    non-empty rest, an absolute path for ``file://``, and no ``.``/``..`` segments.

    Raises:
        ValueError: naming the prefix at fault.
    """
    for prefix in value:
        scheme, sep, rest = prefix.partition("://")
        if not sep or not scheme or not rest.strip("/"):
            raise ValueError(f"{prefix!r}: expected {example}")
        if scheme not in schemes:
            raise ValueError(f"{prefix!r}: the scheme must be one of {', '.join(sorted(schemes))}"
                             + (" (the server never fetches http(s) URLs)" if "http" not in schemes else ""))
        if scheme == "file" and not rest.startswith("/"):
            raise ValueError(f"{prefix!r}: a file:// prefix needs an absolute path (file:///srv/audio/)")
        if any(part in (".", "..") for part in rest.split("/")) or "::" in prefix:
            raise ValueError(f"{prefix!r}: '.', '..' and '::' are not allowed in a prefix")
    return value


def refuse_moved(data: Any, section: str, moved: dict[str, str]) -> Any:
    """Refuse a field that has moved elsewhere, saying where (a pydantic ``mode="before"`` check)."""
    if isinstance(data, dict):
        for old, new in moved.items():
            if old in data:
                raise ValueError(f"{section}.{old} has moved to {new}: set {new} instead (one knob for the job and "
                                 "the endpoint)")
    return data
