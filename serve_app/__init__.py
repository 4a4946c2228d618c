"""raywhisper's Ray Serve endpoint: an OpenAI-compatible ``POST /v1/audio/transcriptions`` over the same
:class:`~pipelines.core.transcriber.Transcriber` and config models as the batch job (docs/architecture.md,
invariant 1).

- :mod:`serve_app.schemas`: request/response models in OpenAI's shape, the error body, :class:`APIError`.
- :mod:`serve_app.deployment`: the model deployment (``@serve.batch`` over the shared transcriber).
- :mod:`serve_app.app`: the FastAPI ingress (``create_app``) and the application builder ``build_app(args)``.
- :mod:`serve_app.loadtest`: a bounded load test on loopback.

Start it with ``serve run configs/serve.yaml``. Importing this package starts nothing.
"""
