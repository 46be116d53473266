"""The one place metrics live: per-example scores, bootstrap CIs, paired tests, calibration.

Rungs produce predictions; only this module turns them into numbers, so every rung is
scored the same way (the lesson of DSPy's ``Evaluate`` and lm-eval's task scoring).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, gold: str) -> float:
    """1.0 when the normalised answers are identical."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after normalisation."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def parse_record(text: str) -> dict[str, str]:
    """``key: value, key: value`` (or one per line) into a dict with normalised keys."""
    fields: dict[str, str] = {}
    for part in re.split(r",\s*(?=[\w ]+:)|\n", text):
        if ":" in part:
            key, _, value = part.partition(":")
            fields[key.strip().lower()] = value.strip().lower()
    return fields


def field_f1(pred: str, gold: str) -> float:
    """F1 over (key, value) pairs of a record: partial credit for partly right records."""
    p, g = set(parse_record(pred).items()), set(parse_record(gold).items())
    if not p or not g:
        return float(p == g)
    common = len(p & g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def label_match(pred: str, gold: str) -> float:
    """Classification accuracy of one example (labels compared case-insensitively)."""
    return float(pred.strip().lower() == gold.strip().lower())


PER_EXAMPLE = {
    "accuracy": label_match,
    "exact_match": exact_match,
    "token_f1": token_f1,
    "field_f1": field_f1,
}


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
    """A metric's value on a test set with its bootstrap confidence interval."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    per_example: list[float]

    def to_dict(self, with_rows: bool = False) -> dict:
        """Plain data; per-example values only when asked (they live in the store)."""
        d = asdict(self)
        if not with_rows:
            d.pop("per_example")
        return d


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return 0.0, 0.0
    idx = _rng(seed).integers(0, len(x), size=(N_BOOTSTRAP, len(x)))
    means = x[idx].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def evaluate(predictions: Sequence[str], gold: Sequence[str], metric: str) -> Score:
    """Score predictions against gold answers, with a 95% bootstrap CI.

    Args:
        predictions: model answers, aligned with ``gold``.
        gold: expected answers.
        metric: accuracy | macro_f1 | exact_match | token_f1 | field_f1.
    """
    if len(predictions) != len(gold):
        raise ValueError("predictions and gold differ in length")
    if metric == "macro_f1":
        per = [label_match(p, g) for p, g in zip(predictions, gold, strict=True)]
        value = macro_f1(predictions, gold)
        idx = _rng().integers(0, len(gold), size=(N_BOOTSTRAP, len(gold)))
        stats = [macro_f1([predictions[i] for i in row], [gold[i] for i in row]) for row in idx]
        alpha = (1 - CONFIDENCE) / 2
        low, high = float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
        return Score(metric, value, low, high, len(gold), per)
    fn = PER_EXAMPLE[metric]
    per = [fn(p, g) for p, g in zip(predictions, gold, strict=True)]
    low, high = bootstrap_ci(per)
    return Score(metric, float(np.mean(per)) if per else 0.0, low, high, len(per), per)


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
    """Mean of 0/1 outcomes (e.g. correct citations) with its bootstrap CI."""
    low, high = bootstrap_ci(flags)
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
