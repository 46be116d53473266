"""The learning curve: how the tuned model's score grows with the training examples.

Adapters are trained on nested subsets of the training split (its first n examples, which
are already shuffled) and scored on the same test split as every rung, so the curve
answers "how many examples did this need, and would more help?". The largest point is
the ``lora`` rung itself, never trained twice; every point's adapter is cached like the
main one, so a re-run costs only what changed.
"""

from __future__ import annotations

from typing import Any

from tunewise.backends.base import CachedBackend
from tunewise.evaluate import evaluate
from tunewise.rungs.base import RunContext, answer
from tunewise.rungs.lora import load_tuned, release, train_adapter, train_prompt


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


def learning_curve(ctx: RunContext, main: dict[str, Any]) -> dict[str, Any]:
    """Score adapters trained on growing subsets; ``main`` is the finished ``lora`` result.

    Returns ``{"metric", "points": [{n, value, ci_low, ci_high, train_seconds, steps,
    trained_now}], "examples_to_target", "monotone"}``.
    """
    task, test = ctx.task, ctx.split.test
    gold = [e.output for e in test]
    prompts = [train_prompt(ctx, e) for e in test]
    points: list[dict[str, Any]] = []
    for n in curve_sizes(task.lora.curve, len(ctx.split.train)):
        label = f"lora@{n}"
        ctx.log(f"learning curve: training on {n} examples")
        adapter, _ = train_adapter(ctx, ctx.split.train[:n], label=label)
        tuned = load_tuned(ctx, adapter)
        backend = CachedBackend(tuned, ctx.store, ctx.run_id or None, label)
        preds = answer(ctx, backend, test, prompts)
        release(tuned)
        del tuned, backend
        score = evaluate([p.text for p in preds], gold, task.metric)
        points.append({"n": n, "value": score.value, "ci_low": score.ci_low,
                       "ci_high": score.ci_high, "train_seconds": adapter.train_seconds,
                       "steps": adapter.log.get("steps_done"),
                       "trained_now": adapter.trained_now})
    info = main.get("info", {})
    points.append({"n": len(ctx.split.train), "value": main["value"], "ci_low": main["ci_low"],
                   "ci_high": main["ci_high"], "train_seconds": info.get("train_seconds"),
                   "steps": info.get("steps"), "trained_now": info.get("trained_now")})
    return {"metric": task.metric, "points": points,
            "examples_to_target": examples_to_target(points, task.target),
            "monotone": monotone_within_ci(points), "slope_per_100": slope_per_100(points)}
