"""The faithfulness measure's pieces: majority keep, vanilla top half, chance of a hit."""

from math import comb

import numpy as np
import pytest

from ser_core.faithfulness import _emotion_indices, chance_of_hit, text_key_records, top_half
from ser_core.kept import most_heads
from ser_core.trace import AttentionRecord, AxisLabels


def test_kept_by_majority_of_heads():
    keep = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]], bool)
    assert most_heads(keep).tolist() == [True, False, True, False]


def test_top_half_per_head_with_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [4.0, 3.0, 2.0, 1.0], [1, 1, 1, 1.0]])
    kept = top_half(scores)
    assert kept[0].tolist() == [False, True, True, True]  # tie at the threshold is kept
    assert kept[1].tolist() == [True, True, False, False]
    assert kept[2].all()
    assert top_half(np.array([[0.3, 0.7, 0.1]]))[0].tolist() == [False, True, False]  # ⌊3/2⌋ = 1


@pytest.mark.parametrize("L, n, m", [(10, 5, 1), (10, 3, 2), (6, 6, 1), (7, 1, 3)])
def test_chance_of_hit_matches_counting(L, n, m):
    expected = 1.0 if n >= L else 1 - comb(L - m, n) / comb(L, n)
    assert chance_of_hit(L, n, m) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    hits = np.mean([bool(set(rng.choice(L, n, replace=False)) & set(range(m))) for _ in range(4000)])
    assert hits == pytest.approx(expected, abs=0.03)


def test_text_key_records_and_emotion_indices():
    words = AxisLabels("words", ["a", "b"])
    frames = AxisLabels("frames", ["0.00 s"])
    w = np.ones((1, 1, 2), np.float32) / 2
    recs = [
        AttentionRecord("x", "key-sparse", "audio", "text", w, frames, words, keep=np.ones((1, 2), bool)),
        AttentionRecord("y", "self", "text", "text", np.ones((1, 2, 2)) / 2, words, words),
        AttentionRecord("z", "key-sparse", "text", "audio", np.ones((1, 2, 1)), words, frames),
    ]
    assert [r.name for r in text_key_records(recs)] == ["x"]
    assert _emotion_indices({"emotion_words": '[{"word": "mad", "index": 3}]'}) == [3]
    assert _emotion_indices({"emotion_words": []}) == []
