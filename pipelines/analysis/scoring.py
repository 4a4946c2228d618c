"""Word error rate of a :func:`~pipelines.analysis.frames.files_frame` against the manifest's references, per file
and per folder (Whisper's English normaliser and jiwer, :mod:`pipelines.core.wer`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from pipelines.analysis.frames import folder_of
from pipelines.core.schema import STATUS_EMPTY, STATUS_OK
from pipelines.core.wer import normalize, word_error_rate


def _scored(files: pd.DataFrame) -> pd.DataFrame:
    """Rows with a non-blank reference and a hypothesis (``ok`` or ``empty``; an empty one scores as deletions)."""
    has_ref = files["reference"].fillna("").astype(str).str.strip().astype(bool) if "reference" in files \
        else pd.Series(False, index=files.index)
    return files[has_ref & files["status"].isin([STATUS_OK, STATUS_EMPTY])]


def wer_per_file(files: pd.DataFrame) -> pd.DataFrame:
    """Word error rate of each file that has a ``reference`` and is not an error row.

    Both sides go through Whisper's English normaliser (:func:`pipelines.core.wer.normalize`). Columns: ``id``,
    ``folder``, ``status``, ``ref_words`` and ``hyp_words`` (normalised word counts), ``wer`` (0..1+, NaN where
    the normalised reference is empty), ``reference``, ``text``. Worst first.
    """
    scored = _scored(files)
    rows = []
    for row in scored.itertuples(index=False):
        ref, hyp = normalize(row.reference), normalize(row.text if isinstance(row.text, str) else "")
        try:
            wer = word_error_rate([row.reference], [row.text if isinstance(row.text, str) else ""])
        except ValueError:  # the reference normalises to nothing
            wer = np.nan
        rows.append({"id": row.id, "folder": row.folder, "status": row.status, "ref_words": len(ref.split()),
                     "hyp_words": len(hyp.split()), "wer": wer, "reference": row.reference, "text": row.text})
    columns = ["id", "folder", "status", "ref_words", "hyp_words", "wer", "reference", "text"]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values("wer", ascending=False, na_position="last").reset_index(drop=True)


def wer_per_folder(files: pd.DataFrame, folder_depth: Optional[int] = None) -> pd.DataFrame:
    """Corpus WER per folder of ``audio_filepath`` (total edits / total reference words of its files, so long
    files weigh more), plus an ``(all)`` row over every scored file.

    Args:
        files: a :func:`files_frame`.
        folder_depth: group by the first ``folder_depth`` components of the folder (``1``: ``an4`` rather than
            ``an4/fjlp``); None keeps the ``folder`` column as it is.

    Columns: ``files``, ``ref_words``, ``wer``. Empty when no file has a reference.
    """
    scored = _scored(files)
    columns = ["files", "ref_words", "wer"]
    if scored.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="folder"))
    folders = scored["folder"] if folder_depth is None else scored["audio_filepath"].map(
        lambda p: folder_of(p, folder_depth))
    rows = {}
    for name, group in list(scored.groupby(folders, sort=True)) + [("(all)", scored)]:
        refs = group["reference"].astype(str).tolist()
        hyps = group["text"].fillna("").astype(str).tolist()
        try:
            wer = word_error_rate(refs, hyps)
        except ValueError:
            wer = np.nan
        rows[name] = {"files": len(group), "ref_words": sum(len(normalize(r).split()) for r in refs), "wer": wer}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    out.index.name = "folder"
    return out
