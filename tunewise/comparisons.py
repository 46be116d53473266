"""Paired comparisons behind the verdict: the task's own metric, resampled item by item.

Each comparison is a paired bootstrap over the test items both sides answered: draw the
items with replacement, recompute the *task's metric* for both sides on the same draw
(for macro-F1 the whole macro-F1, not per-item accuracy), keep the difference. The 95% CI
is the percentile interval of those differences; ``p`` is two-sided (the share of
centred resampled differences at least as far from 0 as the observed one). With B
resamples nothing below 1/B can be resolved, so such a p is reported as "p < 1/B".

Multiple comparisons: the verdict states a family of comparisons (chosen vs runner-up,
rag vs few-shot, lora vs prompting, combinations vs parts, each rung vs the best, the
forgetting check, the baseline). ``holm`` adjusts their p-values together (Holm-Bonferroni,
family-wise error ``decision.alpha``); ``significant`` uses the adjusted p and requires the
CI to exclude 0. Ties (the choice rule) use the unadjusted CI: a rung is tied with the best
when the CI of their difference includes 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tunewise.evaluate import N_BOOTSTRAP

CONFIDENCE = 0.95


def p_text(p: float, resamples: int = N_BOOTSTRAP) -> str:
    """p as printed: "p < 0.0005" at the bootstrap floor, else "p = 0.012"."""
    floor = 1.0 / resamples
    return f"p < {floor:.2g}" if p <= floor else f"p = {p:.2g}"


def _macro_f1_rows(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Macro-F1 of each row of (B, n) integer label arrays (labels in gold or predictions)."""
    labels = np.union1d(np.unique(pred), np.unique(gold))
    total = np.zeros(pred.shape[0])
    present = np.zeros(pred.shape[0])
    for label in labels:
        p, g = pred == label, gold == label
        tp = (p & g).sum(axis=1)
        fp = (p & ~g).sum(axis=1)
        fn = (~p & g).sum(axis=1)
        seen = (p | g).any(axis=1)
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        total += np.where(seen, f1, 0.0)
        present += seen
    return total / np.maximum(present, 1)


def _encode(*columns: Sequence[str]) -> list[np.ndarray]:
    """Labels as integers (case and outer spaces ignored, as ``evaluate.label_match`` does)."""
    vocab: dict[str, int] = {}
    return [np.array([vocab.setdefault(str(x).strip().lower(), len(vocab)) for x in col])
            for col in columns]


def paired_bootstrap(a: Mapping[str, Any], b: Mapping[str, Any], metric: str,
                     resamples: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """metric(b) - metric(a) on the same items, with its 95% CI and a two-sided p.

    Args:
        a, b: per item id, ``{"score": float, "prediction": str, "gold": str}`` (the
            store's prediction rows); only items both sides answered are compared.
        metric: the task's metric; ``macro_f1`` is recomputed on each resample, every
            other metric is the mean of per-item scores.
        resamples: bootstrap resamples (B).
        seed: resampling seed (fixed: the same run gives the same numbers).
    """
    ids = [i for i in a if i in b]
    n = len(ids)
    if n == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0, "n": 0,
                "b_resamples": resamples}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    if metric == "macro_f1":
        pa, pb, g = _encode([a[i]["prediction"] for i in ids], [b[i]["prediction"] for i in ids],
                            [a[i]["gold"] for i in ids])
        observed = float(_macro_f1_rows(pb[None], g[None])[0] - _macro_f1_rows(pa[None],
                                                                               g[None])[0])
        boots = _macro_f1_rows(pb[idx], g[idx]) - _macro_f1_rows(pa[idx], g[idx])
    else:
        d = np.array([float(b[i]["score"]) - float(a[i]["score"]) for i in ids])
        observed = float(d.mean())
        boots = d[idx].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    centred = boots - boots.mean()
    p = float((np.abs(centred) >= abs(observed) - 1e-12).mean()) if observed != 0 else 1.0
    return {"diff": observed, "ci_low": float(np.quantile(boots, alpha)),
            "ci_high": float(np.quantile(boots, 1 - alpha)),
            "p": max(p, 1.0 / resamples), "n": n, "b_resamples": resamples}


def holm(ps: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def finish(comparisons: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Number the family, Holm-adjust it, mark what is significant and word each p."""
    adjusted = holm([c["p"] for c in comparisons])
    for i, (c, adj) in enumerate(zip(comparisons, adjusted, strict=True)):
        c["id"] = f"#{i + 1}"
        c["p_adjusted"] = adj
        c["significant"] = bool(adj < alpha and (c["ci_low"] > 0 or c["ci_high"] < 0))
        c["p_text"] = p_text(c["p"], c.get("b_resamples") or N_BOOTSTRAP)
    return comparisons


def tied(c: Mapping[str, Any]) -> bool:
    """A difference whose 95% CI includes 0 (the choice rule's tie)."""
    return c["ci_low"] <= 0 <= c["ci_high"]


def describe(c: Mapping[str, Any]) -> str:
    """The comparison in words, with its id: "(comparison #2: +0.031, 95% CI ..., p ...)"."""
    if "id" not in c:  # not yet numbered (the verdict's first pass)
        return ""
    sig = "significant" if c["significant"] else "not significant"
    return (f"(comparison {c['id']}: {c['diff']:+.3f}, 95% CI {c['ci_low']:+.3f} to "
            f"{c['ci_high']:+.3f}, {c['p_text']}, {sig} after Holm)")
