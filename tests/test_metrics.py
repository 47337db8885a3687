"""WA / UA / F1 / confusion matrices against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ser_core.errors import InputError
from ser_core.metrics import (
    classification_report_table,
    confusion_matrix,
    macro_f1,
    summary,
    unweighted_accuracy,
    weighted_accuracy,
)

# Imbalanced: 8 "neu", 2 "ang"; one "ang" is called "neu".
Y_TRUE = ["neu"] * 8 + ["ang"] * 2
Y_PRED = ["neu"] * 8 + ["neu", "ang"]


def test_wa_and_ua_differ_on_imbalanced_data():
    assert weighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx(9 / 10)
    # Recall(neu) = 8/8, recall(ang) = 1/2 -> UA = (1 + 0.5) / 2.
    assert unweighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.75)


def test_ua_counts_only_true_classes():
    # A prediction of a class that never occurs ("fru") is wrong but adds no class to average.
    y_true, y_pred = ["hap", "hap", "hap", "sad"], ["hap", "fru", "hap", "sad"]
    assert weighted_accuracy(y_true, y_pred) == pytest.approx(3 / 4)
    assert unweighted_accuracy(y_true, y_pred) == pytest.approx((2 / 3 + 1) / 2)


def test_macro_f1_by_hand():
    # neu: P = 8/9, R = 1 -> F1 = 16/17; ang: P = 1, R = 1/2 -> F1 = 2/3.
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((16 / 17 + 2 / 3) / 2)
    # Adding a class with no support and no predictions contributes F1 = 0.
    assert macro_f1(Y_TRUE, Y_PRED, labels=["neu", "ang", "sad"]) == pytest.approx((16 / 17 + 2 / 3) / 3)


def test_confusion_matrix_counts_and_normalised():
    counts = confusion_matrix(Y_TRUE, Y_PRED, labels=["ang", "neu"])
    np.testing.assert_array_equal(counts, [[1, 1], [0, 8]])
    rows = confusion_matrix(Y_TRUE, Y_PRED, labels=["ang", "neu", "sad"], normalize="true")
    np.testing.assert_allclose(rows, [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # Default labels: sorted union of both.
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED), counts)


def test_classification_report_table():
    table = classification_report_table(Y_TRUE, Y_PRED, labels=["neu", "ang"])
    assert [row["label"] for row in table] == ["neu", "ang"]
    neu, ang = table
    assert neu["precision"] == pytest.approx(8 / 9) and neu["recall"] == 1.0 and neu["support"] == 8
    assert ang["precision"] == 1.0 and ang["recall"] == 0.5 and ang["f1"] == pytest.approx(2 / 3)
    assert ang["support"] == 2 and isinstance(ang["support"], int)


def test_integer_labels_and_summary():
    s = summary([0, 0, 0, 1], [0, 0, 1, 1])
    assert s == pytest.approx({"wa": 0.75, "ua": (2 / 3 + 1) / 2, "macro_f1": (0.8 + 2 / 3) / 2, "n": 4})


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs, message",
    [
        ([], [], {}, "empty"),
        (["hap"], ["hap", "sad"], {}, "must match"),
        (["hap", "sad"], [0, 1], {}, "mix string and numeric"),
        (["hap"], ["hap"], {"normalize": "rows"}, "normalize"),
        (["hap"], ["hap"], {"labels": ["sad"]}, "None of the labels"),
    ],
)
def test_bad_input(y_true, y_pred, kwargs, message):
    with pytest.raises(InputError, match=message):
        confusion_matrix(y_true, y_pred, **kwargs)


def test_the_margin_of_a_ua_bounds_what_resampling_the_clips_gives():
    from ser_core.metrics import ua_margin, unweighted_accuracy

    # 4 classes x 28 clips, per-class recalls 0.9 / 0.8 / 0.7 / 0.6: UA 0.75
    rng = np.random.default_rng(0)
    recalls = [0.9, 0.8, 0.7, 0.6]
    uas = []
    for _ in range(4000):  # draw the test clips again: each right with its class's recall
        y_true = np.repeat(np.arange(4), 28)
        right = rng.random(112) < np.repeat(recalls, 28)
        y_pred = np.where(right, y_true, (y_true + 1) % 4)
        uas.append(unweighted_accuracy(y_true, y_pred))
    spread = 1.96 * np.std(uas)
    margin = ua_margin(0.75, 112)
    assert spread <= margin <= 1.25 * spread  # an upper bound, and not a loose one
    assert ua_margin(1.0, 50) == 0.0 and ua_margin(0.5, 400) == pytest.approx(0.049, abs=1e-3)
    with pytest.raises(ValueError):
        ua_margin(0.5, 0)
