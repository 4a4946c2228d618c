"""A small real job output for the analysis, export and notebook tests, built once per session without Ray.

Five short real clips of the dev corpus in three folders (``jfk``, ``ljspeech``, ``an4/fjlp``), plus one
synthetic silent file (an ``empty`` row) and one missing file (an ``error`` row), decoded and transcribed with
:class:`~pipelines.stages.DecodeChunkStage` and :class:`~pipelines.stages.TranscribeStage` called directly (the
job's own stages, without Ray) and written with the job's :class:`~pipelines.io.output.PartWriter` in two parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import CORPUS, corpus_rows
from tests.helpers import write_audio

#: The dev-corpus clips used (paths relative to the corpus folder), about 22 s of speech in all.
CLIPS = (
    "jfk/jfk.flac",
    "ljspeech/LJ001-0002.flac",
    "ljspeech/LJ001-0004.wav",
    "ljspeech/LJ002-0035.wav",
    "an4/fjlp/cen7-fjlp-b.flac",
)
SILENT_ID = "synthetic/silence 2s.wav"  # a space and a '/' on purpose: the export must make it a safe file name
MISSING_ID = "missing/nothing-here.flac"
RUN_ID = "test-analysis"

_cache: dict[str, Path] = {}


def manifest_rows(silence_path: Path) -> list[dict]:
    """Rows for the stages (the keys of :data:`pipelines.stages.MANIFEST_FIELDS`)."""
    refs = {row["path"]: row["reference"] for row in corpus_rows()}
    rows = [
        {"id": clip, "audio_filepath": clip, "uri": str(CORPUS / clip), "language": None, "prompt": None,
         "reference": refs[clip], "line": i + 1}
        for i, clip in enumerate(CLIPS)
    ]
    rows.append({"id": SILENT_ID, "audio_filepath": str(silence_path), "uri": str(silence_path), "language": None,
                 "prompt": None, "reference": None, "line": len(rows) + 1})
    rows.append({"id": MISSING_ID, "audio_filepath": MISSING_ID, "uri": str(CORPUS / MISSING_ID), "language": None,
                 "prompt": None, "reference": "there is no file", "line": len(rows) + 1})
    return rows


def build_output(base: Path, job_config, transcriber) -> Path:
    """Transcribe the clips into ``base/out`` (once per process; later calls return the same folder).

    Returns the output folder: ``part-*.parquet`` files in ``TRANSCRIPT_SCHEMA``, and ``manifest.json`` beside it
    (outside the dataset) listing the rows used.
    """
    if "out" in _cache:
        return _cache["out"]
    from pipelines.io.output import PartWriter
    from pipelines.stages import DecodeChunkStage, TranscribeStage

    base.mkdir(parents=True, exist_ok=True)
    silence = write_audio(base / "silence.wav", np.zeros(2 * 16000, np.float32), 16000, "pcm_s16le", "s16")
    rows = manifest_rows(silence)
    decode = DecodeChunkStage(job_config)
    transcribe = TranscribeStage(job_config, RUN_ID, transcriber=transcriber)
    out = base / "out"
    writer = PartWriter(str(out), RUN_ID, rows_per_file=4)
    writer.write(transcribe(decode(rows)))
    writer.close()
    (base / "manifest.json").write_text(json.dumps(rows, indent=1))
    _cache["out"] = out
    return out
