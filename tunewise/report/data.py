"""The report's data: a run's result plus its per-example rows, shaped for HTML and JSON.

Nothing here computes a metric: scores, CIs, verdicts and costs are read from the typed
result (``tunewise.results``) the ladder stored. The one derived view is the calibration
plot's bins, which come from ``evaluate.reliability`` over the stored per-example label
probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.evaluate import reliability
from tunewise.results import (
    Forgetting,
    Freshness,
    Latency,
    RungResult,
    RunResult,
    Tokens,
    load_result,
)

MAX_ERROR_ROWS = 300


def load_run(store: Any, run_id: str) -> tuple[RunResult, list[Mapping[str, Any]]]:
    """A finished run's typed result and its per-example rows from the store."""
    row = store.run(run_id)
    if not row["result_json"]:
        raise TunewiseError(f"run {row['id']} has not finished; there is nothing to report yet")
    result = load_result(json.loads(row["result_json"]), where=f"run {row['id']}")
    return result, store.predictions(row["id"])


def cost_by_rung(result: RunResult) -> dict[str, dict[str, float | None]]:
    """Per-rung cost figures from the result's cost section."""
    rungs = result.cost.rungs if result.cost else {}
    return {name: {"per_request": c.per_request, "daily": c.daily, "upfront": c.upfront,
                   "total": c.total_over_horizon}
            for name, c in rungs.items()}


def _rung_row(r: RungResult, target: float, cost: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": r.name, "family": r.family, "status": r.status,
                           "reason": r.reason}
    if not r.done:
        return row
    c = cost.get(r.name, {})
    tokens = r.tokens or Tokens()
    single = r.latency or Latency()
    row.update({
        "metric": r.metric, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
        "n": r.n, "meets_target": (r.value or 0.0) >= target,
        "vs_zero_shot": r.vs_zero_shot.model_dump() if r.vs_zero_shot else None,
        "tokens_in": tokens.prompt_mean, "tokens_out": tokens.completion_mean,
        "shared_prefix": tokens.shared_prefix,
        "latency_p50": single.single_p50_ms if single.single_p50_ms is not None
        else (r.latency_ms.p50 if r.latency_ms else None),
        "latency_p95": single.single_p95_ms if single.single_p95_ms is not None
        else (r.latency_ms.p95 if r.latency_ms else None),
        "latency_single": single.single_p95_ms is not None,
        "latency_replayed": single.replayed,
        "throughput_items_s": r.throughput_items_s,
        "cost_per_request": c.get("per_request"), "daily_cost": c.get("daily"),
        "upfront_usd": c.get("upfront"), "total_cost": c.get("total"),
        "upfront_s": r.upfront_s, "ece": r.ece, "calls_made": r.calls_made,
        "cache_hits": r.cache_hits, "degenerate": r.degenerate, "truncated": r.truncated,
    })
    return row


def label_only(models: list[Mapping[str, Any]]) -> bool:
    """Whether a side-by-side run scored labels without the end-of-turn token (backend ids
    say so: ``:label-only`` or ``:score=forced``)."""
    return any(":label-only" in str(m.get("backend")) or ":score=forced" in str(m.get("backend"))
               for m in models)


def models_side_by_side(result: RunResult, target: float) -> dict[str, Any] | None:
    """Prompt portability: each prompting rung that ran on several models, one column per
    model (``result.models``: the first model's rungs are the run's own). None with one
    model."""
    models = result.models or []
    if len(models) < 2:
        return None
    per = [{r.name: r for r in result.rungs}]
    per += [{r.name: r for r in m.rungs} for m in models[1:]]
    names = [n for n in per[0] if any(n in p for p in per[1:])]
    rows = []
    for name in names:
        cells = []
        for p in per:
            r = p.get(name)
            if r is None or not r.done:
                cells.append(None)
                continue
            vs = r.vs_zero_shot
            cells.append({"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                          "n": r.n, "meets_target": (r.value or 0.0) >= target,
                          "diff": vs.diff if vs else None,
                          "p_value": vs.p_value if vs else None})
        rows.append({"rung": name, "cells": cells})
    dumped = [m.model_dump() for m in models]
    return {"models": [{"model": m.model, "backend": m.backend} for m in models],
            "rows": rows, "label_only": label_only(dumped)}


def calibration(rows: Iterable[Mapping[str, Any]], rungs: list[str]) -> dict[str, Any]:
    """Reliability bins per rung from the stored label probabilities (classification)."""
    conf: dict[str, list[float]] = {}
    hit: dict[str, list[float]] = {}
    for row in rows:
        probs = json.loads(row["details_json"] or "{}").get("probs")
        if not probs or row["rung"] not in rungs:
            continue
        conf.setdefault(row["rung"], []).append(max(probs.values()))
        hit.setdefault(row["rung"], []).append(float(row["score"]))
    return {name: {"n": len(conf[name]), "bins": reliability(conf[name], hit[name])}
            for name in rungs if conf.get(name)}


def error_rows(rows: Iterable[Mapping[str, Any]], rungs: list[str],
               limit: int = MAX_ERROR_ROWS) -> dict[str, Any]:
    """Examples that at least one rung got wrong, with every rung's answer side by side."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        ex = by_id.setdefault(row["example_id"], {"example_id": row["example_id"],
                                                   "input": row["input"], "gold": row["gold"],
                                                   "answers": {}})
        ex["answers"][row["rung"]] = {"prediction": row["prediction"],
                                      "score": float(row["score"])}
    wrong = [ex for ex in by_id.values()
             if any(a["score"] < 1.0 for a in ex["answers"].values())]
    # Examples every rung got wrong first: they are the ones worth reading.
    wrong.sort(key=lambda ex: (sum(a["score"] for a in ex["answers"].values()),
                               ex["example_id"]))
    return {"rungs": [r for r in rungs if any(r in ex["answers"] for ex in by_id.values())],
            "n_examples": len(by_id), "n_with_errors": len(wrong), "shown": len(wrong[:limit]),
            "rows": wrong[:limit]}


def _section(block: Forgetting | Freshness | None) -> list[tuple[str, dict[str, Any]]]:
    """A forgetting/freshness section as (rung, fields) pairs for the report's tables."""
    if block is None:
        return []
    fields = block.model_dump(exclude_none=True, exclude={"examples"})
    return [(block.rung, {k: v for k, v in fields.items() if k != "rung"})]


def report_data(result: RunResult | Mapping[str, Any],
                rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (also what ``--json`` prints)."""
    res = load_result(dict(result)) if isinstance(result, Mapping) else result
    task = res.task
    target = task.target
    cost = cost_by_rung(res)
    table = [_rung_row(r, target, cost) for r in res.rungs]
    done = [r["name"] for r in table if r["status"] == "done"]
    curves = {r.name: [p.model_dump() for p in r.info.learning_curve.points]
              for r in res.done() if r.info.learning_curve and r.info.learning_curve.points}
    verdict = res.verdict.model_dump(mode="json", exclude_unset=True) if res.verdict else {}
    return {
        "schema_version": res.schema_version,
        "run_id": res.run_id,
        "task": task.model_dump(mode="json"),
        "backend": res.backend,
        "split": res.split,
        "labels": res.labels,
        "decision": res.decision,
        "verdict": verdict,
        "rungs": table,
        "models": models_side_by_side(res, target),
        "cost": res.cost.model_dump(mode="json") if res.cost else None,
        "cost_by_rung": cost,
        "learning_curves": curves,
        "calibration": calibration(rows, done) if task.kind == "classification" else {},
        "data": res.data,
        "baselines": {k: b.model_dump(exclude={"per_item"}, exclude_none=True)
                      for k, b in (res.baselines or {}).items()},
        "freshness": _section(res.freshness),
        "forgetting": _section(res.forgetting),
        "usage": res.usage.model_dump(mode="json"),
        "errors": error_rows(rows, done),
    }
