"""Ray-free core of raywhisper: decode, chunk, transcribe and stitch.

Nothing in this package imports Ray, FastAPI or MLflow (DESIGN.md, invariant 2); a test holds that line.
"""
