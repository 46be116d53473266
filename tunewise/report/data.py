"""The report's data: a run's result plus its per-example rows, shaped for HTML and JSON.

Nothing here computes a metric: scores, CIs, verdicts and costs are read from the result the
ladder stored. The one derived view is the calibration plot's bins, which come from
``evaluate.reliability`` over the stored per-example label probabilities.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.evaluate import reliability

MAX_ERROR_ROWS = 300


def load_run(store: Any, run_id: str) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """A finished run's result dict and its per-example rows from the store."""
    row = store.run(run_id)
    if not row["result_json"]:
        raise TunewiseError(f"run {row['id']} has not finished; there is nothing to report yet")
    result = json.loads(row["result_json"])
    return result, store.predictions(row["id"])


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _first(d: Mapping[str, Any] | None, *keys: str) -> Any:
    """The first of ``keys`` present in ``d`` (cost keys differ between versions)."""
    for k in keys:
        if d and d.get(k) is not None:
            return d[k]
    return None


def cost_by_rung(result: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per-rung cost figures from ``result["cost"]`` (or from each rung's own ``cost``)."""
    cost = result.get("cost") or {}
    per: dict[str, Any] = {}
    table = cost.get("rungs") if isinstance(cost, Mapping) else None
    if isinstance(table, list):
        per = {r.get("name") or r.get("rung"): r for r in table if isinstance(r, Mapping)}
    elif isinstance(table, Mapping):
        per = dict(table)
    for r in result.get("rungs", []):
        if isinstance(r.get("cost"), Mapping) and r["name"] not in per:
            per[r["name"]] = r["cost"]
    out: dict[str, dict[str, float | None]] = {}
    for name, c in per.items():
        if not isinstance(c, Mapping):
            continue
        out[name] = {
            "per_request": _num(_first(c, "per_request_usd", "usd_per_request", "per_request",
                                       "cost_per_request")),
            "daily": _num(_first(c, "daily_usd", "usd_per_day", "daily", "daily_cost")),
            "upfront": _num(_first(c, "upfront_usd", "upfront", "upfront_cost")),
        }
    return out


def _rung_row(r: Mapping[str, Any], target: float, cost: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": r["name"], "family": r.get("family", ""),
                           "status": r.get("status", ""), "reason": r.get("reason", "")}
    if r.get("status") != "done":
        return row
    c = cost.get(r["name"], {})
    tokens = r.get("tokens") or {}
    latency = r.get("latency_ms") or {}
    row.update({
        "metric": r.get("metric"), "value": r["value"], "ci_low": r["ci_low"],
        "ci_high": r["ci_high"], "n": r.get("n"), "meets_target": r["value"] >= target,
        "vs_zero_shot": r.get("vs_zero_shot"),
        "tokens_in": tokens.get("prompt_mean"), "tokens_out": tokens.get("completion_mean"),
        "shared_prefix": tokens.get("shared_prefix"),
        "latency_p50": latency.get("p50"), "latency_p95": latency.get("p95"),
        "cost_per_request": c.get("per_request"), "daily_cost": c.get("daily"),
        "upfront_usd": c.get("upfront"), "upfront_s": r.get("upfront_s"),
        "ece": r.get("ece"), "calls_made": r.get("calls_made"),
        "cache_hits": r.get("cache_hits"),
    })
    return row


def label_only(models: list[Mapping[str, Any]]) -> bool:
    """Whether a side-by-side run scored labels without the end-of-turn token (backend ids
    say so: ``:label-only`` or ``:score=forced``)."""
    return any(":label-only" in str(m.get("backend")) or ":score=forced" in str(m.get("backend"))
               for m in models)


def models_side_by_side(result: Mapping[str, Any], target: float) -> dict[str, Any] | None:
    """The matrix of rungs x models (``result["models"]``: the first model's rungs are the
    run's own), each cell with its score, CI, significance and its own model's cost (from
    ``result["cells"]``). None with one model."""
    models = [m for m in result.get("models") or [] if isinstance(m, Mapping)]
    if len(models) < 2:
        return None
    per = [{r["name"]: r for r in result.get("rungs", [])}]
    per += [{r["name"]: r for r in m.get("rungs") or []} for m in models[1:]]
    names: list[str] = []
    for p in per:  # rungs in ladder order, each once, whichever model ran it
        names += [n for n, r in p.items() if n not in names]
    costs = {(c.get("rung"), c.get("model")): c.get("cost") or {}
             for c in result.get("cells") or [] if isinstance(c, Mapping)}
    choice = (result.get("verdict") or {}).get("choice") or {}
    rows = []
    for name in names:
        cells = []
        for m, p in zip(models, per, strict=True):
            r = p.get(name)
            if r is None or r.get("status", "done") != "done":
                cells.append(None)
                continue
            vs = r.get("vs_zero_shot") or {}
            cost = costs.get((name, m.get("model")), {})
            cells.append({"value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                          "n": r.get("n"), "meets_target": r["value"] >= target,
                          "diff": vs.get("diff"), "p_value": vs.get("p_value"),
                          "per_1k": _num(cost.get("per_request_usd")) * 1000
                          if _num(cost.get("per_request_usd")) is not None else None,
                          "total": _num(cost.get("total_usd")),
                          "chosen": choice.get("rung") == name
                          and choice.get("model") == m.get("model")})
        if any(cells):
            rows.append({"rung": name, "cells": cells})
    horizon = (result.get("verdict") or {}).get("horizon_days")
    return {"models": [{"model": m.get("model"), "backend": m.get("backend"),
                        "price": m.get("price")} for m in models],
            "rows": rows, "label_only": label_only(models), "horizon_days": horizon,
            "parity": (result.get("verdict") or {}).get("parity") or []}


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


def rung_blocks(block: Any) -> list[tuple[str, dict[str, Any]]]:
    """A freshness/forgetting section as (rung, fields) pairs, whichever shape it came in.

    Accepts one flat block (``{rung: "lora", diff: ...}``), ``{"rungs": {name: block}}``, or
    ``{name: block}``.
    """
    if not isinstance(block, Mapping) or not block:
        return []
    if isinstance(block.get("rungs"), Mapping):
        extra = {k: v for k, v in block.items() if k != "rungs"}
        return [(str(k), {**extra, **v}) for k, v in block["rungs"].items()
                if isinstance(v, Mapping)]
    if all(isinstance(v, Mapping) for v in block.values()) and not {"base", "tuned"} & set(block):
        return [(str(k), dict(v)) for k, v in block.items()]
    return [(str(block.get("rung", "")), dict(block))]


def report_data(result: Mapping[str, Any], rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (also what ``--json`` prints)."""
    task = result.get("task", {})
    target = float(task.get("target", 0.0))
    cost = cost_by_rung(result)
    table = [_rung_row(r, target, cost) for r in result.get("rungs", [])]
    done = [r["name"] for r in table if r["status"] == "done"]
    curves = {r["name"]: (r.get("info") or {}).get("learning_curve")
              for r in result.get("rungs", [])
              if r.get("status") == "done" and (r.get("info") or {}).get("learning_curve")}
    return {
        "run_id": result.get("run_id"),
        "task": dict(task),
        "backend": result.get("backend"),
        "split": result.get("split", {}),
        "labels": result.get("labels"),
        "verdict": result.get("verdict") or {},
        "rungs": table,
        "models": models_side_by_side(result, target),
        "cells": list(result.get("cells") or []),
        "cost": result.get("cost"),
        "cost_by_rung": cost,
        "learning_curves": curves,
        "calibration": calibration(rows, done) if task.get("kind") == "classification" else {},
        "data": result.get("data", {}),
        "freshness": rung_blocks(result.get("freshness")),
        "forgetting": rung_blocks(result.get("forgetting")),
        "usage": result.get("usage", {}),
        "errors": error_rows(rows, done),
    }
