"""The batch job (docs/job.md), one module per concern: :mod:`~pipelines.job.run` (one run, end to end, and the
end-of-run check), :mod:`~pipelines.job.dataset` (Ray and Ray Data: start or join, the hash pass, the decode ->
transcribe dataset, the retry pass for files whose worker died), :mod:`~pipelines.job.sink` (rows to Parquet parts
as they arrive), :mod:`~pipelines.job.summary` (the run's counts and what the CLI prints) and
:mod:`~pipelines.job.console` (the job's console; Ray's logging to its log folder). The command line is
``python -m pipelines.transcribe``.
"""
