"""Manifests: JSONL/CSV/Parquet, folder and glob inputs, path resolution, errors naming file and line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.core.errors import ManifestError
from pipelines.io.manifest import read_manifest


def test_dev_corpus_manifest(corpus):
    rows = read_manifest(str(corpus / "manifest.jsonl"))
    assert len(rows) == 172
    first = rows[0]
    assert first.audio_filepath == "ljspeech/LJ001-0001.wav"
    assert first.uri == str(corpus / "ljspeech" / "LJ001-0001.wav")
    assert first.reference.startswith("Printing") and first.id == first.audio_filepath and first.line == 1
    assert len({r.id for r in rows}) == 172


def test_jsonl_csv_parquet_agree(tmp_path):
    records = [{"audio_filepath": "a/x.wav", "id": "x", "language": "en", "text": "hello"},
               {"path": "/abs/y.flac", "prompt": "Zyx"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    pd.DataFrame([{"audio_filepath": "a/x.wav", "id": "x", "language": "en", "text": "hello", "prompt": None},
                  {"audio_filepath": "/abs/y.flac", "id": None, "language": None, "text": None, "prompt": "Zyx"}]
                 ).to_csv(tmp_path / "m.csv", index=False)
    pd.read_csv(tmp_path / "m.csv").to_parquet(tmp_path / "m.parquet")
    parsed = {ext: read_manifest(str(tmp_path / f"m.{ext}")) for ext in ("jsonl", "csv", "parquet")}
    for ext, rows in parsed.items():
        assert [r.id for r in rows] == ["x", "/abs/y.flac"], ext
        assert rows[0].uri == str(tmp_path / "a" / "x.wav") and rows[0].reference == "hello", ext
        assert rows[1].uri == "/abs/y.flac" and rows[1].prompt == "Zyx" and rows[1].language is None, ext


def test_duplicate_paths_get_unique_ids(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav"}\n{"path": "a.wav"}\n')
    assert [r.id for r in read_manifest(str(tmp_path / "m.jsonl"))] == ["a.wav", "a.wav#2"]


@pytest.mark.parametrize(
    "content, match",
    [('{"path": "a.wav"}\n{"path": "b.wav"\n', r"line 2: not valid JSON"),
     ('{"path": "a.wav"}\n{"id": "z"}\n', r"line 2: the row has no 'audio_filepath'"),
     ('{"path": "a.wav", "id": "k"}\n{"path": "b.wav", "id": "k"}\n', r"line 2: id 'k' is already used on line 1"),
     ('[1, 2]\n', r"line 1: expected an object"),
     ('\n\n', r"has no rows")],
)
def test_bad_manifests_name_the_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(str(path))
    assert str(path) in str(info.value)


def test_csv_without_path_column(tmp_path):
    (tmp_path / "m.csv").write_text("file,text\na.wav,hi\n")
    with pytest.raises(ManifestError, match="line 1: the CSV header"):
        read_manifest(str(tmp_path / "m.csv"))


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(str(tmp_path / "nope.jsonl"))


def test_folder_and_glob(corpus):
    rows = read_manifest(str(corpus / "an4" / "fjlp"))
    assert rows and all(r.uri.endswith(".flac") for r in rows)
    assert rows[0].audio_filepath == rows[0].id and not rows[0].audio_filepath.startswith("/")
    glob_rows = read_manifest(str(corpus / "ljspeech" / "*.mp3"))
    assert glob_rows and all(r.uri.endswith(".mp3") for r in glob_rows)


def test_empty_folder(tmp_path):
    with pytest.raises(ManifestError, match="no audio files"):
        read_manifest(str(tmp_path))
