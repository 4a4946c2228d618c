"""What every config section shares: frozen pydantic models (from the core's options) and the refusal of a field
that has moved to another section."""

from __future__ import annotations

from typing import Any

from pipelines.core.options import FrozenModel as Frozen  # noqa: F401 - the base of every section

__all__ = ["Frozen", "refuse_moved"]


def refuse_moved(data: Any, section: str, moved: dict[str, str]) -> Any:
    """Refuse a field that has moved elsewhere, saying where (a pydantic ``mode="before"`` check)."""
    if isinstance(data, dict):
        for old, new in moved.items():
            if old in data:
                raise ValueError(f"{section}.{old} has moved to {new}: set {new} instead (one knob for the job and "
                                 "the endpoint)")
    return data
