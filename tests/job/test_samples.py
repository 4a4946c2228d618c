"""The demo sample `make demo` transcribes: espeak-ng speech in several formats, a long-form file, silence."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines.core.audio import decode_audio
from pipelines.core.transcriber import Chunk
from pipelines.samples import make_demo

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng missing: `make test` installs it (apt-get install espeak-ng)")


def test_demo_sample(tmp_path, transcriber):
    manifest = make_demo(tmp_path / "demo")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {r["audio_filepath"].rsplit(".", 1)[1] for r in rows} >= {"wav", "flac", "mp3", "m4a", "opus"}
    audio = {r["id"]: decode_audio(manifest.parent / r["audio_filepath"]) for r in rows}
    assert audio["long_form"].duration_s > 30 and audio["silence"].samples.max() == 0
    (res,) = transcriber.transcribe_chunks([Chunk("s", 0, 0.0, audio["sentence_00"].samples)])
    text = "".join(s.text for s in res.segments).lower()
    assert "quick brown fox" in text
