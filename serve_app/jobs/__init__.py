"""Asynchronous transcription jobs over HTTP (``/v1/jobs``, docs/jobs.md): each job a Ray Job running the batch
job's entry point, followed through Ray's job status and the progress object the job writes in its output folder.

Modules: :mod:`~serve_app.jobs.routes` (the endpoints), :mod:`~serve_app.jobs.policy` (what a request may ask
for), :mod:`~serve_app.jobs.staging` (the checked manifest and uploads), :mod:`~serve_app.jobs.cluster` (the Ray
Jobs API), :mod:`~serve_app.jobs.view` (a job as the API shows it), :mod:`~serve_app.jobs.rows` (transcripts),
:mod:`~serve_app.jobs.models` (request and response shapes).
"""
