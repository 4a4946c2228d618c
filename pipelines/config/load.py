"""Loading a config: YAML file -> dict tree -> ``--set key=value`` overrides -> one validation, with errors that
name the field (and never echo a value given under ``storage``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipelines.config.job import JobConfig
from pipelines.config.serve import ServeConfig
from pipelines.core.errors import ConfigError


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a config tree; values are parsed as YAML (``1``, ``true``, ``[0, 0.2]``).

    Raises:
        ConfigError: an override without ``=`` or with an empty key.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. decoding.beam_size=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        _set_dotted(tree, key.strip(), value)
    return tree


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        # never echo what was given under storage: a refused value may be a credential
        given = "" if err["loc"][:1] == ("storage",) else f" (got {err.get('input')!r})"
        lines.append(f"  {field}: {err['msg']}{given}")
    return "\n".join(lines)


def load_tree(path: str | Path | None) -> dict:
    """Read a YAML config file into a dict ({} for None or an empty file).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or not a mapping.
    """
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Load a :class:`JobConfig` from a YAML file and ``--set`` overrides, validated once.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown field or bad value; the message names the field.
    """
    tree = apply_overrides(load_tree(path), overrides or [])
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path or "defaults"))) from exc


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_serve_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      inline: dict | None = None) -> ServeConfig:
    """Load a :class:`ServeConfig`: the YAML file at ``path``, then the ``inline`` sections merged over it (the
    ``args`` of ``configs/serve.yaml``), then ``section.field=value`` overrides; validated once.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown field or bad value; the message names the field.
    """
    tree = _deep_merge(load_tree(path), inline or {})
    tree = apply_overrides(tree, overrides or [])
    try:
        return ServeConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(path or "serve args"))) from exc
