"""Whisper's fixed input geometry, defined once (every Whisper model shares it; faster-whisper's
``FeatureExtractor`` defaults and openai/whisper's ``whisper/audio.py`` give the same numbers).

Audio reaches the model as float32 mono at :data:`SAMPLE_RATE`; the log-Mel front end takes one frame every
:data:`HOP_LENGTH` samples, and the encoder always sees a window of :data:`CHUNK_LENGTH_S` seconds
(:data:`N_FRAMES` frames), padded with silence when the audio is shorter.
"""

from __future__ import annotations

SAMPLE_RATE = 16000  # Hz, Whisper's input rate
HOP_LENGTH = 160  # samples between two log-Mel frames (10 ms)
CHUNK_LENGTH_S = 30  # seconds in the encoder's window

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 log-Mel frames a second
N_SAMPLES = CHUNK_LENGTH_S * SAMPLE_RATE  # 480000 samples in a window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 log-Mel frames in a window
