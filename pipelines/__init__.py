"""raywhisper: batch transcription of audio corpora with Ray Data and faster-whisper.

Sub-packages:
- ``pipelines.core``: the Ray-free stages (decode, chunk, transcribe, stitch) and the output schema.
- ``pipelines.io``: manifests, storage and output writing.
- ``pipelines.job``: the Ray Data job (run, Ray Data wiring, sink, summary, console); its command line is
  ``python -m pipelines.transcribe``; :mod:`pipelines.stages` holds its map stages.
"""

__version__ = "0.1.0"
