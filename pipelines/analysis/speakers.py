"""Speakers in a job's output (issue 17; columns of schema 1.3, filled when the job ran with
``diarization.enabled``): talk time per speaker and a speaker timeline built from the words' speakers.

Outputs without diarization (older schemas, or ``diarization.enabled: false``) give empty tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.analysis.frames import _flat

#: Columns of :func:`talk_time`.
TALK_TIME_COLUMNS = ["file_id", "speaker", "speech_s", "share"]
#: Columns of :func:`speaker_timeline`.
TIMELINE_COLUMNS = ["file_id", "speaker", "start", "end", "n_words"]


def talk_time(table: pa.Table) -> pd.DataFrame:
    """One row per speaker of each diarized file: ``speech_s`` (seconds, the union of its turns, from the
    ``speakers`` column) and ``share`` of the file's speech (0..1), in order of first appearance."""
    if "speakers" not in table.column_names:
        return pd.DataFrame(columns=TALK_TIME_COLUMNS)
    flat, parents = _flat(table.column("speakers"))
    if not len(flat):
        return pd.DataFrame(columns=TALK_TIME_COLUMNS)
    frame = pd.DataFrame({
        "file_id": table.column("id").take(pa.array(parents, pa.int64())).to_numpy(zero_copy_only=False),
        "speaker": flat.field("speaker").to_numpy(zero_copy_only=False),
        "speech_s": flat.field("speech_s").to_numpy(zero_copy_only=False),
    })
    total = frame.groupby("file_id", sort=False)["speech_s"].transform("sum")
    frame["share"] = (frame["speech_s"] / total).where(total > 0, 0.0)
    return frame[TALK_TIME_COLUMNS]


def speaker_timeline(table: pa.Table, max_gap_s: float = 1.0) -> pd.DataFrame:
    """The speaker turns as transcribed: consecutive timed words of one speaker in a file joined into one turn
    (a pause over ``max_gap_s`` seconds starts a new one). Columns: ``file_id``, ``speaker``, ``start``, ``end``
    (seconds of file time) and ``n_words``. Empty when the words carry no speaker."""
    segs, seg_parents = _flat(table.column("segments"))
    words, word_parents = _flat(segs.field("words"))
    if not len(words) or "speaker" not in [f.name for f in words.type]:
        return pd.DataFrame(columns=TIMELINE_COLUMNS)
    file_ids = table.column("id").take(pa.array(seg_parents, pa.int64())).to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({
        "file_id": file_ids[word_parents],
        "speaker": pc.fill_null(words.field("speaker"), "").to_numpy(zero_copy_only=False),
        "start": words.field("start").to_numpy(zero_copy_only=False),
        "end": words.field("end").to_numpy(zero_copy_only=False),
    })
    frame = frame[frame["speaker"] != ""]
    if frame.empty:
        return pd.DataFrame(columns=TIMELINE_COLUMNS)
    prev_end = frame.groupby("file_id", sort=False)["end"].shift()
    new_turn = ((frame["file_id"] != frame["file_id"].shift()) | (frame["speaker"] != frame["speaker"].shift())
                | ((frame["start"] - prev_end) > max_gap_s))
    frame = frame.assign(turn=np.cumsum(new_turn.to_numpy()))
    turns = frame.groupby("turn", sort=True).agg(file_id=("file_id", "first"), speaker=("speaker", "first"),
                                                 start=("start", "min"), end=("end", "max"),
                                                 n_words=("start", "size"))
    return turns.reset_index(drop=True)[TIMELINE_COLUMNS]
