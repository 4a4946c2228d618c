"""Import contracts (docs/architecture.md, invariants 1 and 2), read from the source with ``ast``: no import is run.

Every ``import`` and ``from ... import`` in ``pipelines/`` and ``serve_app/`` counts, also inside functions and
``TYPE_CHECKING`` blocks (a lazy import is still a dependency). To add a contract, add a :class:`Rule` to
:data:`RULES`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import ROOT

PACKAGES = ("pipelines", "serve_app")


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@dataclass(frozen=True)
class Rule:
    """Modules under ``importers`` (minus ``exempt``) may not import modules under ``forbidden``, except those
    under ``allowed`` (prefixes of dotted names: ``"ray"`` covers ``ray.data``). ``why`` says what it protects."""

    name: str
    importers: tuple[str, ...]
    forbidden: tuple[str, ...]
    why: str
    allowed: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()

    def applies_to(self, importer: str) -> bool:
        return _under(importer, self.importers) and not _under(importer, self.exempt)

    def forbids(self, module: str) -> bool:
        return _under(module, self.forbidden) and not _under(module, self.allowed)


#: What serve_app may import of pipelines: the engine, its option, result and error types, the renderer of results,
#: the constants (the sample rate), storage, the config, the diarizer's entry points (pipelines.core.diarization,
#: issue 17: a diarizer per replica, like the engine), and the scrubber (pipelines.redact: a failed job's log tail,
#: issue 18). Not audio, chunking, transcriber, stitch, decoding,
#: whisper, rows...: those are the engine's to call.
SERVE_MAY_IMPORT = ("pipelines.core.engine", "pipelines.core.options", "pipelines.core.schema",
                    "pipelines.core.errors", "pipelines.core.export", "pipelines.core.constants", "pipelines.io",
                    "pipelines.config", "pipelines.core.diarization", "pipelines.redact")

RULES = (
    Rule("core-is-ray-free", ("pipelines.core",), ("ray", "fastapi", "starlette", "mlflow"),
         "the core runs and is tested without Ray, FastAPI or MLflow"),
    Rule("core-imports-only-the-core", ("pipelines.core",), ("pipelines", "serve_app"),
         "the core owns its options and knows nothing of the job's config, storage or the endpoint "
         "(pipelines.config, pipelines.io, serve_app)", allowed=("pipelines.core",)),
    Rule("one-faster-whisper-adapter", PACKAGES, ("faster_whisper", "ctranslate2"),
         "faster-whisper's internals are driven in one place, pinned and contract-tested",
         exempt=("pipelines.core.whisper",)),
    Rule("io-does-not-reach-the-endpoint", ("pipelines.io",), ("serve_app",),
         "storage and output are shared by the job and the endpoint, never the other way round"),
    Rule("no-ray-private-api", PACKAGES, ("ray._private",),
         "Ray's private modules change without notice between releases"),
    Rule("endpoint-through-the-engine", ("serve_app",), ("pipelines",),
         "the endpoint reaches the pipeline only through the engine (and the types of what it takes and gives), "
         "storage and the config; never decode, chunk, transcribe or stitch itself",
         allowed=SERVE_MAY_IMPORT),
)


def module_name(path: Path) -> str:
    """``pipelines/core/whisper.py`` -> ``pipelines.core.whisper``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, importer: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import in ``source``; ``from m import n`` yields ``m`` and ``m.n`` (``n``
    may be a submodule: ``from pipelines import config``); relative imports are resolved against ``importer``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = importer.split(".") if is_package else importer.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def _source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def violations(rule: Rule) -> list[str]:
    """``file:line imports module`` for each import statement that breaks ``rule`` (its shortest forbidden name)."""
    found: dict[tuple[str, int], str] = {}
    for path in _source_files():
        importer = module_name(path)
        if not rule.applies_to(importer):
            continue
        for line, module in imported_modules(path.read_text(), importer, path.name == "__init__.py"):
            where = (str(path.relative_to(ROOT)), line)
            if rule.forbids(module) and len(module) < len(found.get(where, module + ".")):
                found[where] = module
    return [f"{file}:{line} imports {module}" for (file, line), module in sorted(found.items())]


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_import_contract(rule):
    found = violations(rule)
    assert not found, f"{rule.name} ({rule.why}):\n  " + "\n  ".join(found)


def test_the_checker_sees_every_form_of_import():
    source = (
        "import ray._private.state\n"
        "from pipelines import config\n"
        "from ..io.storage import Storage\n"
        "def lazy():\n"
        "    from faster_whisper.tokenizer import _LANGUAGE_CODES\n"
    )
    seen = {m for _, m in imported_modules(source, "pipelines.core.chunking")}
    assert {"ray._private.state", "pipelines.config", "pipelines.io.storage", "faster_whisper.tokenizer"} <= seen
    rules = {r.name: r for r in RULES}
    assert rules["core-imports-only-the-core"].forbids("pipelines.config")
    assert not rules["core-imports-only-the-core"].forbids("pipelines.core.options")
    assert rules["no-ray-private-api"].forbids("ray._private.state")
    assert not rules["no-ray-private-api"].forbids("ray.util.state")
    assert not rules["one-faster-whisper-adapter"].applies_to("pipelines.core.whisper")
    serve = rules["endpoint-through-the-engine"]
    assert serve.forbids("pipelines.core.audio") and serve.forbids("pipelines.core.transcriber")
    assert serve.forbids("pipelines.core.whisper") and serve.forbids("pipelines.stages")
    assert not serve.forbids("pipelines.core.engine") and not serve.forbids("pipelines.io.storage")


def test_every_source_file_is_checked():
    names = {module_name(p) for p in _source_files()}
    assert {"pipelines.core.whisper", "pipelines.core.transcriber", "pipelines.preflight", "serve_app.schemas",
            "pipelines.io.resume", "pipelines.core"} <= names
