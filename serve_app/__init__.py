"""raywhisper's Ray Serve endpoint: an OpenAI-compatible ``POST /v1/audio/transcriptions`` over the batch job's
engine (:mod:`pipelines.core.engine`) and config models (docs/architecture.md, invariant 1; docs/serving.md).

- :mod:`serve_app.app`: ``create_app`` (the FastAPI ingress) and the application builder ``build_app(args)``.
- :mod:`serve_app.routes`: the routes; :mod:`serve_app.preparation`: form -> audio -> ``engine.prepare``.
- :mod:`serve_app.auth` (API key), :mod:`serve_app.upload` (upload size and time), :mod:`serve_app.errors`
  (error bodies, error ids, exception handlers).
- :mod:`serve_app.schemas`: the form, the job sent to the model, the error body, :class:`APIError`.
- :mod:`serve_app.deployment`: the model deployment (``@serve.batch`` over ``Engine.transcribe_isolated``).
- :mod:`serve_app.loadtest`: a bounded load test on loopback.

Start it with ``serve run configs/serve.yaml``. Importing this package starts nothing.
"""
