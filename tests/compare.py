"""Comparing two transcriptions of the same audio by two code paths or batchings (the job and the endpoint, S3 and
local disk, one batch and another) for what the system promises, not for byte equality.

A transcript depends on which chunks share an encoder batch or a packed window and on the CPU's int8 kernels
(CTranslate2 picks them by instruction set), so two paths on one machine, or one path on two machines, can differ
by a word ("debtors" / "debtor") or a timestamp token (a segment start 27.744 / 27.564 s). What must hold: the same
ids and statuses, the same chunks (VAD runs on the same decoded audio), text within :data:`MAX_WER` of each other,
and times within :data:`TIME_TOL_S`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipelines.core.wer import word_error_rate

#: Largest word error rate between two transcriptions of the same audio (one word in twenty).
MAX_WER = 0.05
#: Largest difference between two times of the same audio (s): a Whisper timestamp token is 0.02 s, and word
#: alignment moves a boundary by a few tenths at most.
TIME_TOL_S = 0.5


def assert_texts_agree(pairs: Mapping[str, tuple[str, str]], max_wer: float = MAX_WER) -> float:
    """The corpus WER between two transcriptions of the same files, ``{id: (text_a, text_b)}``, is at most
    ``max_wer`` (``text_a`` taken as the reference); returns it. Each file must have words on both sides or on
    neither."""
    for key, (a, b) in pairs.items():
        assert bool((a or "").strip()) == bool((b or "").strip()), f"{key}: one side is empty: {a!r} / {b!r}"
    refs = [a or "" for a, _ in pairs.values()]
    hyps = [b or "" for _, b in pairs.values()]
    wer = word_error_rate(refs, hyps) if any(r.strip() for r in refs) else 0.0
    detail = "\n".join(f"  {k}: {a!r}\n  {' ' * len(k)}  {b!r}" for k, (a, b) in pairs.items() if a != b)
    assert wer <= max_wer, f"WER {wer:.1%} between the two transcriptions (at most {max_wer:.0%}):\n{detail}"
    return wer


def assert_times_close(a: float, b: float, what: str, tol_s: float = TIME_TOL_S) -> None:
    """``a`` and ``b`` (s) differ by at most ``tol_s``."""
    assert abs(a - b) <= tol_s, f"{what}: {a:.3f} s vs {b:.3f} s (tolerance {tol_s} s)"


def assert_spans_close(a: Sequence[Mapping], b: Sequence[Mapping], what: str, tol_s: float = TIME_TOL_S) -> None:
    """Two segment lists (dicts with ``start``/``end`` in file seconds) cover the same stretch of the file: both
    empty, or first starts and last ends within ``tol_s``."""
    assert bool(len(a)) == bool(len(b)), f"{what}: {len(a)} vs {len(b)} segments"
    if len(a):
        assert_times_close(a[0]["start"], b[0]["start"], f"{what}: first segment start", tol_s)
        assert_times_close(a[-1]["end"], b[-1]["end"], f"{what}: last segment end", tol_s)


def assert_segments_in_chunks(segments: Sequence[Mapping], chunks: Sequence[tuple[float, float]], what: str,
                              tol_s: float = TIME_TOL_S) -> None:
    """Every segment (dict with ``start``/``end`` in file seconds) lies inside one of the ``chunks``
    (``(offset_s, end_s)`` in file seconds) give or take ``tol_s``, and every chunk holds at least one segment
    start: the transcript was cut into those chunks and put back at their offsets."""
    used = set()
    for seg in segments:
        inside = [i for i, (lo, hi) in enumerate(chunks)
                  if lo - tol_s <= seg["start"] and seg["end"] <= hi + tol_s and seg["start"] < hi]
        assert inside, f"{what}: segment {seg['start']:.2f}-{seg['end']:.2f} s is in no chunk of {chunks}"
        used.add(inside[0])
    assert used == set(range(len(chunks))), f"{what}: chunks {sorted(set(range(len(chunks))) - used)} hold no segment"
