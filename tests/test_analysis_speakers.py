"""Talk time and the speaker timeline of a job's output (pipelines/analysis/speakers.py, issue 17)."""

from __future__ import annotations

import pyarrow as pa

from pipelines import analysis as an
from pipelines.core.rows import rows_to_table


def _row(id_, words, speakers):
    seg = {"id": 0, "start": words[0][1] if words else 0.0, "end": words[-1][2] if words else 0.0, "text": "x",
           "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0, "temperature": 0.0,
           "speaker": words[0][3] if words else None,
           "words": [{"word": w, "start": a, "end": b, "probability": 0.9, "speaker": s} for w, a, b, s in words]}
    return {"id": id_, "audio_filepath": f"{id_}.wav", "status": "ok", "segments": [seg] if words else [],
            "speakers": speakers, "num_speakers": len(speakers) if speakers is not None else None}


def test_talk_time_and_timeline():
    a, b = "SPEAKER_00", "SPEAKER_01"
    table = rows_to_table([
        _row("f1", [(" hi", 0.0, 0.5, a), (" there", 0.6, 1.0, a), (" yes", 1.5, 2.0, b), (" again", 4.0, 4.5, b),
                    (" me", 4.6, 5.0, a)], [{"speaker": a, "speech_s": 3.0}, {"speaker": b, "speech_s": 1.0}]),
        _row("f2", [(" solo", 0.0, 1.0, a)], [{"speaker": a, "speech_s": 1.0}]),
        _row("off", [(" plain", 0.0, 1.0, None)], None),
    ])
    talk = an.talk_time(table)
    assert list(talk.columns) == an.TALK_TIME_COLUMNS
    assert talk[["file_id", "speaker"]].values.tolist() == [["f1", a], ["f1", b], ["f2", a]]
    assert talk["share"].round(3).tolist() == [0.75, 0.25, 1.0]
    timeline = an.speaker_timeline(table)
    assert timeline[["file_id", "speaker", "start", "end", "n_words"]].values.tolist() == [
        ["f1", a, 0.0, 1.0, 2], ["f1", b, 1.5, 2.0, 1], ["f1", b, 4.0, 4.5, 1], ["f1", a, 4.6, 5.0, 1],
        ["f2", a, 0.0, 1.0, 1]]  # a pause over 1 s starts a new turn; words without a speaker are left out


def test_outputs_without_speakers_give_empty_tables():
    old = pa.table({"id": ["a"], "segments": pa.array([[]], pa.list_(pa.struct([("id", pa.int32()),
                                                                                ("words", pa.list_(pa.struct(
                                                                                    [("word", pa.string())])))])))})
    assert an.talk_time(old).empty and an.speaker_timeline(old).empty
    off = rows_to_table([_row("off", [(" plain", 0.0, 1.0, None)], None)])
    assert an.talk_time(off).empty and an.speaker_timeline(off).empty
