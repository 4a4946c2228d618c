"""Segments that look like hallucinations: the rule (:class:`HallucinationRule`, each test a named flag) and its
verdicts on a :func:`~pipelines.analysis.frames.segments_frame`."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import pandas as pd


@dataclass(frozen=True)
class HallucinationRule:
    """When a segment looks like a hallucination. A segment is flagged when ANY of these holds (each is a column
    ``flag_<name>`` in :func:`mark_hallucinations`):

    - ``compression``: ``compression_ratio > max_compression_ratio`` (2.4, openai/whisper's threshold): the text
      gzips too well, i.e. it repeats itself.
    - ``no_speech``: ``avg_logprob < min_avg_logprob`` (-1.0) AND ``no_speech_prob > max_no_speech_prob`` (0.6):
      Whisper's own "this was silence" test, yet text was kept.
    - ``too_fast``: more than ``max_words_per_s`` (6) words per second over a segment of at least
      ``min_words_for_rate`` (3) words; people speak about 2-4.
    - ``too_slow``: fewer than ``min_words_per_s`` (0.3) words per second over a segment of at least
      ``min_slow_duration_s`` (10 s): a few words stretched over music or silence ("Thank you.").
    - ``repeated_ngram``: some ``ngram``-word sequence (3) occurs more than ``max_ngram_repeats`` (2) times in the
      segment (lower-cased words, punctuation dropped): a decoding loop.
    - ``repeats_previous``: the same text (normalised) as the previous segment of the file, at least
      ``min_words_for_repeat`` (3) words long.
    """

    max_compression_ratio: float = 2.4
    min_avg_logprob: float = -1.0
    max_no_speech_prob: float = 0.6
    max_words_per_s: float = 6.0
    min_words_for_rate: int = 3
    min_words_per_s: float = 0.3
    min_slow_duration_s: float = 10.0
    ngram: int = 3
    max_ngram_repeats: int = 2
    min_words_for_repeat: int = 3

    #: the flag names, in the order they are tested
    FLAGS = ("compression", "no_speech", "too_fast", "too_slow", "repeated_ngram", "repeats_previous")

    def describe(self) -> str:
        """The rule in words, with this instance's thresholds (for notebooks and reports)."""
        return (
            "A segment is flagged as a likely hallucination when any of these holds:\n"
            f"  compression:      compression_ratio > {self.max_compression_ratio} (repetitive text)\n"
            f"  no_speech:        avg_logprob < {self.min_avg_logprob} and no_speech_prob > "
            f"{self.max_no_speech_prob} (Whisper's silence test)\n"
            f"  too_fast:         > {self.max_words_per_s} words/s over >= {self.min_words_for_rate} words\n"
            f"  too_slow:         < {self.min_words_per_s} words/s over a segment >= {self.min_slow_duration_s} s\n"
            f"  repeated_ngram:   a {self.ngram}-word sequence occurs > {self.max_ngram_repeats} times in the "
            "segment\n"
            f"  repeats_previous: same text as the previous segment (>= {self.min_words_for_repeat} words)"
        )


_WORD_RE = re.compile(r"[\w']+")


def max_ngram_count(text: str, n: int) -> int:
    """How often the most frequent ``n``-word sequence occurs in ``text`` (lower-cased ``[\\w']+`` words;
    0 when the text has fewer than ``n`` words)."""
    words = _WORD_RE.findall((text or "").lower())
    grams: Iterable[tuple[str, ...]] = zip(*(words[i:] for i in range(n)))
    counts = Counter(grams)
    return max(counts.values(), default=0)


def mark_hallucinations(segments: pd.DataFrame, rule: HallucinationRule = HallucinationRule()) -> pd.DataFrame:
    """Every segment of a :func:`segments_frame` with the rule's verdicts added: one boolean column
    ``flag_<name>`` per test of ``rule`` (see :class:`HallucinationRule`), ``flagged`` (any of them) and
    ``reasons`` (the names that fired, comma-separated; ``""`` when none)."""
    out = segments.copy()
    wps = out["words_per_s"]
    out["flag_compression"] = out["compression_ratio"] > rule.max_compression_ratio
    out["flag_no_speech"] = (out["avg_logprob"] < rule.min_avg_logprob) & \
        (out["no_speech_prob"] > rule.max_no_speech_prob)
    out["flag_too_fast"] = (out["n_words"] >= rule.min_words_for_rate) & (wps > rule.max_words_per_s)
    out["flag_too_slow"] = (out["duration_s"] >= rule.min_slow_duration_s) & \
        (out["n_words"] / out["duration_s"].where(out["duration_s"] > 0) < rule.min_words_per_s)
    out["flag_repeated_ngram"] = out["text"].map(lambda t: max_ngram_count(t, rule.ngram)) > rule.max_ngram_repeats
    norm = out["text"].map(lambda t: " ".join(_WORD_RE.findall(t.lower())))
    ordered = out.sort_values(["file_id", "segment"])
    previous = norm.loc[ordered.index].groupby(ordered["file_id"]).shift(1)
    out["flag_repeats_previous"] = (norm == previous.reindex(out.index)) & \
        (out["n_words"] >= rule.min_words_for_repeat)
    flag_cols = [f"flag_{name}" for name in rule.FLAGS]
    out[flag_cols] = out[flag_cols].fillna(False).astype(bool)
    out["flagged"] = out[flag_cols].any(axis=1)
    out["reasons"] = [",".join(name for name, hit in zip(rule.FLAGS, hits) if hit)
                      for hits in out[flag_cols].itertuples(index=False)]
    return out


def flag_hallucinations(segments: pd.DataFrame, rule: HallucinationRule = HallucinationRule()) -> pd.DataFrame:
    """Only the segments :func:`mark_hallucinations` flags, with their ``reasons``."""
    marked = mark_hallucinations(segments, rule)
    return marked[marked["flagged"]].reset_index(drop=True)
