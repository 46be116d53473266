"""Metrics pinned to reference implementations (issue 15, item 8) and CIs honest at the
edges (issue 14, item 4).

- accuracy and macro-F1 against scikit-learn;
- exact match and token F1 against the official SQuAD v1.1 evaluation script's functions,
  copied below verbatim (normalize_answer, f1_score, exact_match_score);
- Wilson intervals against their closed form, the bootstrap CI of a mean and the paired
  test against the textbook normal/McNemar results for the same data.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np
import pytest

from tunewise.evaluate import compare, evaluate, interval, macro_f1, wilson


# ---- the official SQuAD v1.1 script (evaluate-v1.1.py), unchanged ----------------------------
def squad_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = squad_normalize_answer(prediction).split()
    ground_truth_tokens = squad_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def squad_exact_match_score(prediction, ground_truth):
    return (squad_normalize_answer(prediction) == squad_normalize_answer(ground_truth))
# ---------------------------------------------------------------------------------------------


SQUAD_CASES = [  # (prediction, gold): fixed, one-line, plain answers as SQuAD has them
    ("Denver Broncos", "Denver Broncos"),
    ("the Denver Broncos", "Denver Broncos"),
    ("Denver Broncos.", "denver broncos"),
    ("Broncos", "Denver Broncos"),
    ("Santa Clara, California", "Santa Clara"),
    ("Levi's Stadium in the San Francisco Bay Area", "Levi's Stadium"),
    ("an apple a day", "apple"),
    ("1,000", "1000"),
    ("Carolina Panthers", "Denver Broncos"),
    ("the the the", "the"),
    ("  spaced   out  ", "spaced out"),
    ("Super Bowl 50", "Super Bowl L"),
    ("gold gold", "gold"),
    ("Beyoncé", "Beyonce"),
]


@pytest.mark.parametrize(("pred", "gold"), SQUAD_CASES)
def test_exact_match_and_token_f1_match_squad_v11(pred: str, gold: str) -> None:
    ours = evaluate([pred], [gold], "exact_match").value
    assert ours == float(squad_exact_match_score(pred, gold))
    if squad_normalize_answer(pred) and squad_normalize_answer(gold):
        assert evaluate([pred], [gold], "token_f1").value == pytest.approx(
            squad_f1_score(pred, gold))


def test_accuracy_and_macro_f1_match_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    labels = ["play_music", "get_weather", "book_restaurant", "rate_book"]
    for trial in range(20):
        n = int(rng.integers(5, 80))
        gold = [labels[i] for i in rng.integers(0, 4, n)]
        # predictions: right ~half the time; sometimes a label never in gold
        pred = [g if rng.random() < 0.5 else labels[int(rng.integers(0, 4))] for g in gold]
        if trial % 5 == 0:
            pred[0] = "add_to_playlist"
        assert evaluate(pred, gold, "accuracy").value == pytest.approx(
            sklearn_metrics.accuracy_score(gold, pred))
        assert macro_f1(pred, gold) == pytest.approx(
            sklearn_metrics.f1_score(gold, pred, average="macro", zero_division=0))
        assert evaluate(pred, gold, "macro_f1").value == pytest.approx(
            sklearn_metrics.f1_score(gold, pred, average="macro", zero_division=0))


def _wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 100), (100, 100), (1, 100), (50, 100), (17, 40),
                                      (0, 20)])
def test_wilson_interval_matches_its_closed_form(k: int, n: int) -> None:
    low, high = wilson(k, n)
    ref = _wilson_closed_form(k, n)
    assert low == pytest.approx(max(ref[0], 0.0), abs=1e-9)
    assert high == pytest.approx(min(ref[1], 1.0), abs=1e-9)


def test_a_zero_of_100_rung_has_an_honest_upper_bound() -> None:
    score = evaluate(["wrong"] * 100, ["right"] * 100, "accuracy")
    assert score.value == 0.0 and score.ci_low == 0.0
    assert score.ci_high > 0.02  # Wilson: 0.037, not the bootstrap's 0.000
    assert score.ci_high == pytest.approx(0.0370, abs=1e-3)
    assert score.ci_method == "wilson"
    perfect = evaluate(["right"] * 100, ["right"] * 100, "exact_match")
    assert perfect.ci_high == 1.0 and perfect.ci_low == pytest.approx(1 - 0.0370, abs=1e-3)
    # non-0/1 metrics: bootstrap with the stated floor at the edges
    for metric in ("token_f1", "field_f1", "macro_f1"):
        zero = evaluate(["a b"] * 100, ["c d"] * 100, metric)
        assert zero.value == 0.0 and zero.ci_high > 0.02, metric
    # one item of 100 with half credit: total credit 0.5 < 1 item -> floor applies
    low, high, method = interval([0.5] + [0.0] * 99)
    assert method == "bootstrap+floor" and high >= wilson(0, 100)[1]
    # away from the edges the bootstrap stands: 50 items at 0.2 and 50 at 0.8
    low, high, _ = interval([0.2] * 50 + [0.8] * 50)
    assert low < 0.5 < high and high - low < wilson(50, 100)[1] - wilson(50, 100)[0]


def test_bootstrap_ci_of_a_mean_matches_the_normal_textbook_interval() -> None:
    """For a large sample the percentile bootstrap of a mean agrees with mean +- 1.96 s/sqrt(n)
    (Efron & Tibshirani, ch. 13): both are the same CLT interval."""
    x = np.random.default_rng(3).uniform(0, 1, 400)
    low, high, method = interval(x)
    se = x.std(ddof=0) / math.sqrt(len(x))
    assert method == "bootstrap+floor"
    assert low == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_paired_test_matches_mcnemar_and_the_paired_proportion_interval() -> None:
    """100 paired 0/1 outcomes: B right where A is wrong on 15 items, the reverse on 5.

    Textbook results (Agresti, Categorical Data Analysis, 10.1): difference 0.10, Wald SE
    sqrt((b + c) - (b - c)^2 / n) / n = sqrt(19) / 100 = 0.0436, so 95% CI
    0.10 +- 0.0854 = [0.015, 0.185]; exact one-sided McNemar p = P(X >= 15 | X ~ Bin(20,
    1/2)) = 0.0207.
    """
    from scipy.stats import binomtest

    a = [0.0] * 15 + [1.0] * 5 + [1.0] * 40 + [0.0] * 40
    b = [1.0] * 15 + [0.0] * 5 + [1.0] * 40 + [0.0] * 40
    out = compare(a, b)
    assert out["diff"] == pytest.approx(0.10)
    assert out["ci_low"] == pytest.approx(0.015, abs=0.015)
    assert out["ci_high"] == pytest.approx(0.185, abs=0.015)
    exact = binomtest(15, 20, 0.5, alternative="greater").pvalue
    assert exact == pytest.approx(0.0207, abs=1e-3)
    assert out["p_value"] == pytest.approx(exact, abs=0.015)
    # no difference: p = 1, and the reverse direction is not significant either
    assert compare(a, a)["p_value"] == 1.0 and compare(b, a)["p_value"] == 1.0
