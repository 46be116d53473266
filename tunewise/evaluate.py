"""The one place metrics live: per-example scores, bootstrap CIs, paired tests, calibration.

Rungs produce predictions; only this module turns them into numbers, so every rung is
scored the same way (the lesson of DSPy's ``Evaluate`` and lm-eval's task scoring).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tunewise.answers import (
    answer_text,
    canonical,
    pair_f1,
    parse_record,  # noqa: F401  (re-exported: the verdict and tests import it from here)
    parse_structured,
    structure_of,
)
from tunewise.errors import TunewiseError

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the answers are identical: structured answers (JSON objects or ``key: value``
    records) on their canonical form (key order, spacing and fences do not matter), text
    after SQuAD normalisation of the answering part (see :func:`answers.answer_text`)."""
    shape = structure_of(gold)
    if shape is not None:
        g, p = parse_structured(gold, shape), parse_structured(pred, shape)
        if g:
            return float(p is not None and canonical(p) == canonical(g))
    return float(normalize_answer(answer_text(pred, gold)) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (SQuAD v1.1).

    Structured answers are compared on their canonical key/value text, so key order and
    fences do not cost tokens.
    """
    shape = structure_of(gold)
    g_fields = parse_structured(gold, shape)
    p_fields = parse_structured(pred, shape) if g_fields else None
    if g_fields and p_fields:
        pred, gold = _as_text(p_fields), _as_text(g_fields)
    p, g = normalize_answer(answer_text(pred, gold)).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def _as_text(fields: dict[str, str]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(fields.items()))


def field_f1(pred: str, gold: str) -> float:
    """F1 over the (key, value) pairs of a record or JSON object: partial credit per key.

    A gold answer that is not structured has no fields; it is scored by exact match.
    """
    shape = structure_of(gold)
    g = parse_structured(gold, shape)
    if not g:
        return exact_match(pred, gold)
    return pair_f1(parse_structured(pred, shape) or {}, g)


def label_match(pred: str, gold: str) -> float:
    """Classification accuracy of one example (labels compared case-insensitively)."""
    return float(pred.strip().lower() == gold.strip().lower())


PER_EXAMPLE = {
    "accuracy": label_match,
    "exact_match": exact_match,
    "token_f1": token_f1,
    "field_f1": field_f1,
}


def user_metric(metric: str) -> Callable[[str, str], float]:
    """A plugin's or the user's metric (``metric: package.module:function`` or a name
    registered under ``tunewise.metrics``) as a per-item scorer, checked item by item.

    The function is called as ``fn(prediction, reference)`` for each test item and returns
    a number in [0, 1] (a bool counts as 0 or 1). Per-item scores are what make the rest
    work unchanged: the mean is the rung's score, 0/1 scores get Wilson intervals, others a
    floored bootstrap, and rungs are compared by paired bootstrap on the same items.

    Raises:
        TunewiseError: the metric does not load, raises, or returns something else (one
            line naming the metric).
    """
    from tunewise.plugins import metric_function

    fn = metric_function(metric)
    if fn is None:
        raise TunewiseError(f"unknown metric '{metric}'", field="metric")

    def scored(prediction: str, reference: str) -> float:
        try:
            value = fn(prediction, reference)
        except Exception as exc:  # the user's code: say what failed, in one line
            raise TunewiseError(f"metric '{metric}' failed on a test item: "
                                f"{type(exc).__name__}: {exc}", field="metric") from None
        if not isinstance(value, (int, float, np.number)) or not 0.0 <= float(value) <= 1.0:
            raise TunewiseError(f"metric '{metric}' returned {value!r} for a test item; a "
                                "metric returns a number in [0, 1]", field="metric")
        return float(value)

    return scored


def macro_f1(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over the labels present in gold or predictions."""
    preds = [p.strip().lower() for p in preds]
    golds = [g.strip().lower() for g in golds]
    scores = []
    for label in set(golds) | set(preds):
        tp = sum(p == label and g == label for p, g in zip(preds, golds, strict=True))
        fp = sum(p == label and g != label for p, g in zip(preds, golds, strict=True))
        fn = sum(p != label and g == label for p, g in zip(preds, golds, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@dataclass
class Score:
    """A metric's value on a test set with its 95% confidence interval.

    ``ci_method`` says how the interval was made (see :func:`interval`).
    """

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    per_example: list[float]
    ci_method: str = "bootstrap"

    def to_dict(self, with_rows: bool = False) -> dict:
        """Plain data; per-example values only when asked (they live in the store)."""
        d = asdict(self)
        if not with_rows:
            d.pop("per_example")
        return d


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy): honest at 0/n and n/n, where a
    bootstrap or normal interval collapses to a point (0/100 gives 0.000-0.037)."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(successes), int(n)).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def _floored(value: float, n: int, low: float, high: float) -> tuple[float, float]:
    """The bootstrap floor: a bootstrap cannot show variation the sample lacks, so when the
    items' total credit is less than one item from 0 (or from n), the interval reaches at
    least the Wilson bound for 0 of n (n of n) items; when every item scored the same, it is
    the Wilson interval at that value."""
    if n and high - low <= 0:
        return wilson(round(value * n), n)
    if n and value * n < 1:
        high = max(high, wilson(0, n)[1])
    if n and (1 - value) * n < 1:
        low = min(low, wilson(n, n)[0])
    return low, high


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (no floor; see :func:`interval`)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return 0.0, 0.0
    idx = _rng(seed).integers(0, len(x), size=(N_BOOTSTRAP, len(x)))
    means = x[idx].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def interval(values: Sequence[float], seed: int = 0) -> tuple[float, float, str]:
    """95% CI of a mean of per-item scores in [0, 1], and the method used.

    0/1 scores (accuracy, exact match, any hit/miss) get the Wilson interval; other scores
    (token F1, field F1, MRR) a percentile bootstrap with the floor of :func:`_floored`.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return 0.0, 1.0, "none"
    if np.isin(x, (0.0, 1.0)).all():
        return (*wilson(int(x.sum()), n), "wilson")
    low, high = _floored(float(x.mean()), n, *bootstrap_ci(x, seed))
    return low, high, "bootstrap+floor"


def evaluate(predictions: Sequence[str], gold: Sequence[str], metric: str) -> Score:
    """Score predictions against gold answers, with a 95% CI (see :func:`interval`).

    Args:
        predictions: model answers, aligned with ``gold``.
        gold: expected answers.
        metric: accuracy | macro_f1 | exact_match | token_f1 | field_f1, or a plugin
            metric (see :func:`user_metric`).
    """
    if len(predictions) != len(gold):
        raise ValueError("predictions and gold differ in length")
    if metric == "macro_f1":
        per = [label_match(p, g) for p, g in zip(predictions, gold, strict=True)]
        value = macro_f1(predictions, gold)
        if not gold:
            return Score(metric, 0.0, 0.0, 1.0, 0, per, "none")
        idx = _rng().integers(0, len(gold), size=(N_BOOTSTRAP, len(gold)))
        stats = [macro_f1([predictions[i] for i in row], [gold[i] for i in row]) for row in idx]
        alpha = (1 - CONFIDENCE) / 2
        low, high = _floored(value, len(gold), float(np.quantile(stats, alpha)),
                             float(np.quantile(stats, 1 - alpha)))
        return Score(metric, value, low, high, len(gold), per, "bootstrap+floor")
    fn = PER_EXAMPLE.get(metric) or user_metric(metric)
    per = [fn(p, g) for p, g in zip(predictions, gold, strict=True)]
    low, high, method = interval(per)
    return Score(metric, float(np.mean(per)) if per else 0.0, low, high, len(per), per, method)


def compare(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Paired bootstrap test that ``b`` beats ``a`` on the same items.

    Returns the mean difference (b - a), its 95% CI, and a one-sided p-value: the share of
    resamples (of the centred differences) at least as large as the observed difference.
    """
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if len(d) == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    idx = _rng(seed).integers(0, len(d), size=(N_BOOTSTRAP, len(d)))
    boots = d[idx].mean(axis=1)
    observed = d.mean()
    p = float(((boots - observed) >= observed).mean()) if observed > 0 else 1.0
    alpha = (1 - CONFIDENCE) / 2
    return {
        "diff": float(observed),
        "ci_low": float(np.quantile(boots, alpha)),
        "ci_high": float(np.quantile(boots, 1 - alpha)),
        "p_value": max(p, 1.0 / N_BOOTSTRAP) if observed > 0 else 1.0,
    }


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[float],
                               bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability(confidences: Sequence[float], correct: Sequence[float],
                bins: int = 10) -> list[dict[str, float]]:
    """Per-bin mean confidence and accuracy, for a calibration plot."""
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return [
        {"bin": float(edges[b]), "confidence": float(conf[which == b].mean()),
         "accuracy": float(hit[which == b].mean()), "count": int((which == b).sum())}
        for b in range(bins) if (which == b).any()
    ]


def contains_answer(pred: str, value: str) -> bool:
    """True when ``value`` occurs in ``pred`` as whole words, after normalisation.

    The freshness test's criterion: an answer follows an edit when it states the new value.
    """
    v, p = normalize_answer(value), normalize_answer(pred)
    return bool(v) and f" {v} " in f" {p} "


def proportion(flags: Sequence[float]) -> dict[str, float]:
    """Mean of per-item outcomes (e.g. correct citations) with its CI (:func:`interval`)."""
    low, high, _ = interval(flags)
    return {"value": float(np.mean(flags)) if len(flags) else 0.0, "ci_low": low,
            "ci_high": high, "n": len(flags)}


def retrieval_scores(ranked: Sequence[Sequence[str]], gold: Sequence[str], k: int
                     ) -> dict[str, dict[str, float]]:
    """Recall@k and MRR@k of document rankings against each query's relevant document.

    Args:
        ranked: per query, retrieved document ids, best first (repeats allowed: a document
            counts at its first position).
        gold: per query, the id of the document that holds the answer.
        k: cut-off.
    """
    hits, rr = [], []
    for ids, target in zip(ranked, gold, strict=True):
        top = list(dict.fromkeys(ids))[:k]
        hits.append(float(target in top))
        rr.append(1.0 / (top.index(target) + 1) if target in top else 0.0)
    return {f"recall@{k}": proportion(hits), f"mrr@{k}": proportion(rr)}


DEGENERATE_SHARE = 0.9  # one answer for more than this share of items: a collapsed rung
DEGENERATE_MIN_ITEMS = 10  # below this a share says nothing


def answer_spread(predictions: Sequence[str]) -> dict[str, Any]:
    """How concentrated a rung's answers are: its commonest answer and that answer's share.

    A rung that gives one answer to more than :data:`DEGENERATE_SHARE` of the items is
    ``degenerate``: its score measures how often that answer is right, not the rung.
    """
    counts = Counter(" ".join(p.split()).casefold() for p in predictions)
    if not counts:
        return {"top_answer": "", "top_share": 0.0, "degenerate": False}
    top, count = counts.most_common(1)[0]
    share = count / len(predictions)
    return {"top_answer": top, "top_share": share,
            "degenerate": len(predictions) >= DEGENERATE_MIN_ITEMS and share > DEGENERATE_SHARE}


def baseline(train_answers: Sequence[str], gold: Sequence[str], metric: str,
             classification: bool) -> dict[str, dict[str, Any]]:
    """The answer a model-free guesser would give, scored like a rung.

    Classification: the majority class of the training split (key ``majority``); other
    kinds: the most common training answer (key ``most_common``). Ties go to the
    alphabetically first answer, so the baseline does not depend on data order.
    """
    counts = Counter(a.strip() for a in train_answers if a.strip())
    if not counts or not gold:
        return {}
    answer, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    score = evaluate([answer] * len(gold), gold, metric)
    key = "majority" if classification else "most_common"
    return {key: {"label": answer, "train_count": count,
                  "train_share": count / sum(counts.values()),
                  **score.to_dict(), "per_item": score.per_example}}
