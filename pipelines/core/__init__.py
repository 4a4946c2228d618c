"""Ray-free core of raywhisper: decode, chunk, transcribe and stitch.

Nothing in this package imports Ray, FastAPI or MLflow (docs/architecture.md, invariant 2);
tests/test_import_contracts.py holds that line.
"""
