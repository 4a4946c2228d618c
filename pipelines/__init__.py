"""raywhisper: batch transcription of audio corpora with Ray Data and faster-whisper.

Sub-packages:
- ``pipelines.core``: the Ray-free stages (decode, chunk, transcribe, stitch) and the output schema.
- ``pipelines.io``: manifests, storage and output writing.
- ``pipelines.transcribe``: the Ray Data job (``python -m pipelines.transcribe``).
"""

__version__ = "0.1.0"
