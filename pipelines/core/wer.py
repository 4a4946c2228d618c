"""Word error rate with jiwer after OpenAI Whisper's English text normaliser (the ``whisper-normalizer``
package's copy of ``whisper.normalizers.EnglishTextNormalizer``), the normalisation used for Whisper's published
WER figures."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


@lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize(text: str | None) -> str:
    """Whisper's English normalisation of ``text`` (lower case, spelled-out numbers unified, punctuation out)."""
    return _normalizer()(text or "")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (0..1+): total edits / total reference words, after :func:`normalize` on both sides.

    Pairs whose normalised reference is empty are skipped (jiwer cannot score them).

    Raises:
        ValueError: the sequences differ in length, or no pair has a non-empty reference.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(normalize(r), normalize(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        raise ValueError("no non-empty reference to score")
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])
