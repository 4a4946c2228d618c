"""Look at a job's Parquet output: load it, flatten segments and words into tables, score WER, flag segments
that look like hallucinations, and summarise status, audio, languages and per-stage timings.

The notebooks in ``notebooks/`` import these functions and only plot. Three tables (pandas DataFrames):

- **files** (:func:`files_frame`): one row per transcript, the schema's columns less ``segments``, plus
  ``n_segments``, ``n_words``, ``words_per_min`` and ``folder``.
- **segments** (:func:`segments_frame`): one row per segment, keyed by ``file_id`` and ``segment`` (the segment's
  ``id`` within its file), with its ``start``/``end`` (seconds of file time), text and quality fields, plus
  ``duration_s``, ``n_words`` and ``words_per_s``.
- **words** (:func:`words_frame`): one row per timed word, keyed by ``file_id``, ``segment`` and ``word_index``.

Words are counted as whitespace-separated tokens of the text (``"3-3-1-0."`` is one word), so the counts do not
depend on whether word timestamps were on.

Nothing here starts Ray or touches MLflow (see :mod:`pipelines.bench_runs` for the benchmark runs).

The functions live in :mod:`~pipelines.analysis.load` (reading the output), :mod:`~pipelines.analysis.frames`
(the three tables), :mod:`~pipelines.analysis.speakers` (talk time, speaker timeline), :mod:`~pipelines.analysis.summaries`, :mod:`~pipelines.analysis.scoring` (WER) and
:mod:`~pipelines.analysis.hallucinations`; all are importable from here, as the notebooks do. See docs/analysis.md.
"""

from pipelines.analysis.frames import (
    SEGMENT_FIELDS,
    WORD_FIELDS,
    count_words,
    files_frame,
    folder_of,
    segments_frame,
    words_frame,
)
from pipelines.analysis.hallucinations import (
    HallucinationRule,
    flag_hallucinations,
    mark_hallucinations,
    max_ngram_count,
)
from pipelines.analysis.load import load_table, open_dataset, part_files
from pipelines.analysis.scoring import wer_per_file, wer_per_folder
from pipelines.analysis.speakers import TALK_TIME_COLUMNS, TIMELINE_COLUMNS, speaker_timeline, talk_time
from pipelines.analysis.summaries import (
    STAGE_COLUMNS,
    audio_summary,
    coverage_summary,
    error_breakdown,
    error_rows,
    language_stats,
    status_breakdown,
    timing_summary,
)

__all__ = [
    "SEGMENT_FIELDS", "STAGE_COLUMNS", "WORD_FIELDS", "HallucinationRule",
    "audio_summary", "count_words", "coverage_summary", "error_breakdown", "error_rows", "files_frame", "flag_hallucinations",
    "folder_of", "language_stats", "load_table", "mark_hallucinations", "max_ngram_count", "open_dataset",
    "part_files", "segments_frame", "status_breakdown", "timing_summary", "wer_per_file", "wer_per_folder",
    "words_frame", "TALK_TIME_COLUMNS", "TIMELINE_COLUMNS", "speaker_timeline", "talk_time",
]
