"""The helpers that compare two transcriptions of the same audio (tests/compare.py) pass what the system promises
and catch what it does not."""

from __future__ import annotations

import pytest

from tests.compare import assert_segments_in_chunks, assert_spans_close, assert_texts_agree

TEXT = ("The examination and testimony of the experts enabled the commission to conclude that five shots may have "
        "been fired, and the prisoners were debtors")


def test_one_word_in_a_few_clips_passes_a_different_transcript_fails():
    other = TEXT.replace("debtors", "debtor")
    assert 0 < assert_texts_agree({"a": (TEXT, other), "b": ("ask not what your country", "ask not what your country")})
    with pytest.raises(AssertionError, match="WER"):
        assert_texts_agree({"a": (TEXT, "the quick brown fox jumps over the lazy dog")})
    with pytest.raises(AssertionError, match="one side is empty"):
        assert_texts_agree({"a": (TEXT, "")})


def test_times_within_tolerance():
    a = [{"start": 0.0, "end": 5.0}, {"start": 27.744, "end": 40.0}]
    b = [{"start": 0.1, "end": 5.2}, {"start": 27.564, "end": 40.3}]
    assert_spans_close(a, b, "x")
    with pytest.raises(AssertionError, match="last segment end"):
        assert_spans_close(a, [{"start": 0.0, "end": 30.0}], "x")
    assert_segments_in_chunks(a, [(0.0, 25.0), (25.5, 40.2)], "x")
    with pytest.raises(AssertionError, match="in no chunk"):
        assert_segments_in_chunks(a, [(0.0, 25.0), (30.0, 40.0)], "x")
    with pytest.raises(AssertionError, match="hold no segment"):
        assert_segments_in_chunks(a[:1], [(0.0, 25.0), (25.5, 40.2)], "x")
