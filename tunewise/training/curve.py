"""The learning curve: how the tuned model's score grows with the training examples.

Adapters are trained on nested subsets of the training split (its first n examples, which
are already shuffled) and scored on the same test split as every rung, so the curve
answers "how many examples did this need, and would more help?". The largest point is
the ``lora`` rung itself, never trained twice; every point's adapter is cached like the
main one, so a re-run costs only what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tunewise.evaluate import evaluate


def curve_sizes(requested: list[int], n_train: int) -> list[int]:
    """The subset sizes to train, smallest first: requested sizes below the full set."""
    return sorted({n for n in requested if 0 < n < n_train})


def monotone_within_ci(points: list[dict[str, Any]]) -> bool:
    """True when no point scores below the CI of a point trained on fewer examples."""
    return all(later["value"] >= earlier["ci_low"] - 1e-9
               for i, earlier in enumerate(points) for later in points[i + 1:])


def examples_to_target(points: list[dict[str, Any]], target: float) -> int | None:
    """The fewest examples whose point reaches the target (None: more data needed)."""
    return next((p["n"] for p in points if p["value"] >= target), None)


def slope_per_100(points: list[dict[str, Any]]) -> float | None:
    """Score gained per 100 more examples between the two largest points (None: one point).

    The verdict names it: a curve still climbing at its largest size says more data helps.
    """
    if len(points) < 2 or points[-1]["n"] == points[-2]["n"]:
        return None
    p, q = points[-2], points[-1]
    return (q["value"] - p["value"]) / (q["n"] - p["n"]) * 100


def learning_curve(sizes: Sequence[int], gold: Sequence[str], metric: str, target: float,
                   full: dict[str, Any], *, train: Callable[[int, str], Any],
                   predict: Callable[[Any, str], list[str]],
                   log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Score adapters trained on growing subsets, given the pieces that train and answer.

    Like a torchtune recipe, the curve is handed its pieces rather than the run: it knows
    nothing of rungs, stores or prompts.

    Args:
        sizes: subset sizes to train, smallest first (see :func:`curve_sizes`).
        gold: the test answers every point is scored against.
        metric: the task's metric.
        target: the task's target (for ``examples_to_target``).
        full: the finished result trained on the whole training split (the last point,
            never trained twice): ``value``, ``ci_low``, ``ci_high``, ``n`` and ``info``.
        train: ``train(n, label)`` -> the adapter trained on the first ``n`` examples
            (``train_seconds``, ``log``, ``trained_now``).
        predict: ``predict(adapter, label)`` -> the tuned model's answers to the test items.
        log: progress lines.

    Returns:
        ``{"metric", "points": [{n, value, ci_low, ci_high, train_seconds, steps,
        trained_now}], "examples_to_target", "monotone", "slope_per_100"}``.
    """
    points: list[dict[str, Any]] = []
    for n in sizes:
        label = f"lora@{n}"
        log(f"learning curve: training on {n} examples")
        adapter = train(n, label)
        score = evaluate(predict(adapter, label), list(gold), metric)
        points.append({"n": n, "value": score.value, "ci_low": score.ci_low,
                       "ci_high": score.ci_high, "train_seconds": adapter.train_seconds,
                       "steps": adapter.log.get("steps_done"),
                       "trained_now": adapter.trained_now})
    info = full.get("info", {})
    points.append({"n": full["n"], "value": full["value"], "ci_low": full["ci_low"],
                   "ci_high": full["ci_high"], "train_seconds": info.get("train_seconds"),
                   "steps": info.get("steps"), "trained_now": info.get("trained_now")})
    return {"metric": metric, "points": points,
            "examples_to_target": examples_to_target(points, target),
            "monotone": monotone_within_ci(points), "slope_per_100": slope_per_100(points)}
