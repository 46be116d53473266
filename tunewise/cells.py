"""Cells: every result is a (rung, model) pair, priced with its own model's price.

A task may name several models (``models:``); each rung runs on every model that can serve
it, so a run is a matrix of rungs x models. This module turns a run's result into that
matrix (``result["cells"]``), prices each cell with its model's entry (a distilled cell
also pays for its teacher's labelling calls), compares cells across models (break-even,
cumulative cost over a horizon), and states the verdict across models: the cheapest cell
by measured total cost over the horizon among those that meet the target, with a paired
test of its quality against the best cell of each other model.

Total cost over the horizon = upfront + daily x horizon days (daily = volume x per request
+ upkeep). The horizon and the 90% prompting rule come from the task's ``decision:``
(:mod:`tunewise.policy`), as for the one-model verdict.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tunewise.comparisons import p_text, paired_bootstrap
from tunewise.cost import (
    CHART_POINTS,
    Price,
    break_even,
    format_days,
    format_usd,
    model_price,
    request_cost,
    rung_cost,
)
from tunewise.plugins import rung_names
from tunewise.task import TaskSpec

if TYPE_CHECKING:
    from tunewise.store import Store

MAX_CANDIDATES = 3  # cells compared for break-even when fewer than two meet the target



def label(rung: str, model: str) -> str:
    """How a cell is written everywhere: ``rung@model``."""
    return f"{rung}@{model}"


def horizon_days(task: TaskSpec) -> float:
    """Days over which upfront and daily costs are added up to compare cells."""
    return float(task.decision.horizon_days)


def model_runs(result: dict[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(model name, store tag, rung results) of every model of a run, the first model first.

    A result written before models existed is one model named by its backend.
    """
    first = result.get("model") or str(result.get("backend") or "default")
    out = [(first, "", result.get("rungs") or [])]
    for m in (result.get("models") or [])[1:]:
        out.append((str(m["model"]), f"@{m['model']}", m.get("rungs") or []))
    return out


def _eval_calls(result: dict[str, Any], rung: dict[str, Any], key: str) -> int:
    used = (result.get("usage") or {}).get(key)
    if used:
        return int(used.get("calls_made", 0) or 0) + int(used.get("cache_hits", 0) or 0)
    made = int(rung.get("calls_made", 0) or 0) + int(rung.get("cache_hits", 0) or 0)
    return made or int(rung.get("n", 0) or 0)


def teacher_cost(rung: dict[str, Any], task: TaskSpec, price_name: str | None = None
                 ) -> tuple[float, str] | None:
    """USD of a distilled cell's labelling calls at its teacher's price, and how."""
    teacher = (rung.get("info") or {}).get("teacher")
    if not teacher:
        return None
    price = model_price(task, teacher.get("model"), price_name)
    calls = int(teacher.get("calls", 0) or 0)
    per = request_cost(teacher.get("tokens") or {}, price)["usd"]
    return calls * per, (f"teacher labels: {calls} calls to {teacher.get('rung')}@"
                         f"{teacher.get('model')} at {format_usd(per)} each "
                         f"(price '{price.name}')")


def cell_cost(rung: dict[str, Any], task: TaskSpec, price: Price, volume: int, n_train: int,
              eval_calls: int, horizon: float, price_name: str | None = None
              ) -> dict[str, Any]:
    """One cell's cost: the rung's cost at its model's price, plus the teacher's labels."""
    c = rung_cost(rung, task, price, volume, n_train, eval_calls)
    labelling = teacher_cost(rung, task, price_name)
    if labelling:
        usd, how = labelling
        c["upfront_parts"]["teacher_labels"] = usd
        c["upfront"] += usd
        c["basis"].append(how)
    return {
        "per_request_usd": c["per_request"], "daily_usd": c["daily"],
        "upfront_usd": c["upfront"], "maintenance_per_day_usd": c["maintenance_per_day"],
        "total_usd": c["upfront"] + c["daily"] * horizon, "horizon_days": horizon,
        "price": price.name, "price_example": price.entry.example,
        "upfront_parts": c["upfront_parts"], "basis": c["basis"],
    }


def build_cells(result: dict[str, Any], task: TaskSpec, *, volume: int | None = None,
                price_name: str | None = None) -> list[dict[str, Any]]:
    """Every finished cell of a run with its score and its own model's cost.

    Args:
        result: the run's result (``rungs``, ``models``, ``usage``, ``split``).
        task: the task (prices, volume, target).
        volume: requests/day (default: the task's).
        price_name: price entry for models that name none (``tunewise cost --price``).
    """
    volume = task.volume.requests_per_day if volume is None else volume
    n_train = int((result.get("split") or {}).get("train", 0) or 0)
    horizon = horizon_days(task)
    cells = []
    for order, (model, tag, rungs) in enumerate(model_runs(result)):
        price = model_price(task, model, price_name)
        for r in rungs:
            if r.get("status") != "done":
                continue
            cost = cell_cost(r, task, price, volume, n_train,
                             _eval_calls(result, r, r["name"] + tag), horizon, price_name)
            cells.append({
                "rung": r["name"], "model": model, "label": label(r["name"], model),
                "family": r.get("family"), "value": r["value"], "ci_low": r["ci_low"],
                "ci_high": r["ci_high"], "n": r.get("n"),
                "meets_target": r["value"] >= task.target, "tokens": r.get("tokens", {}),
                "latency_ms": r.get("latency_ms", {}), "cost": cost,
                "model_order": order, "stored_as": r["name"] + tag,
            })
    return cells


def _order(cell: dict[str, Any]) -> tuple[int, int]:
    order = rung_names()
    rank = order.index(cell["rung"]) if cell["rung"] in order else len(order)
    return rank, cell["model_order"]


def _as_cost(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell in the shape :func:`tunewise.cost.break_even` reads."""
    return {"name": cell["label"], "upfront": cell["cost"]["upfront_usd"],
            "daily": cell["cost"]["daily_usd"]}


def matrix_cost(cells: list[dict[str, Any]], task: TaskSpec, volume: int | None = None
                ) -> dict[str, Any]:
    """Break-even pairs and cumulative-cost chart across cells (and models).

    Compares the cells that meet the target; when fewer than two do, the best cells.
    """
    volume = task.volume.requests_per_day if volume is None else volume
    meeting = [c for c in cells if c["meets_target"]]
    if len(meeting) >= 2:
        chosen, basis = meeting, "cells that meet the target"
    else:
        best = sorted(cells, key=lambda c: (-c["value"], _order(c)))[:MAX_CANDIDATES]
        chosen = [c for c in cells if c in best or c in meeting]
        basis = (f"only {meeting[0]['label']} meets the target; compared with the best "
                 "other cells" if meeting else
                 f"no cell meets the target; the {len(chosen)} best cells compared")
    pairs = [break_even(_as_cost(a), _as_cost(b))
             for i, a in enumerate(chosen) for b in chosen[i + 1:]]
    horizon = horizon_days(task)
    finite = [p["days"] for p in pairs if p["days"] is not None]
    span = max(horizon, min(730, math.ceil(max(finite) * 1.5))) if finite else horizon
    days = [round(span * i / (CHART_POINTS - 1), 2) for i in range(CHART_POINTS)]
    return {
        "requests_per_day": volume, "horizon_days": horizon,
        "cells": {c["label"]: c["cost"] for c in cells},
        "break_even": {"basis": basis, "candidates": [c["label"] for c in chosen],
                       "pairs": pairs},
        "chart": {"days": days, "series": {
            c["label"]: [c["cost"]["upfront_usd"] + c["cost"]["daily_usd"] * d for d in days]
            for c in chosen}},
    }


def choose(cells: list[dict[str, Any]], target: float, prompting_enough: float = 0.9
           ) -> tuple[str, dict[str, Any] | None]:
    """The verdict's cell: (rule, cell).

    The cheapest by total cost over the horizon among cells meeting the target (ties go to
    the cheaper rung, then the earlier model). When none meets it: the best prompting cell
    if it reaches 90% of the target (improve the prompt), else the best-scoring cell.
    """
    if not cells:
        return "nothing_ran", None
    meeting = [c for c in cells if c["value"] >= target]
    if meeting:
        return "cheapest_meeting", min(meeting, key=lambda c: (c["cost"]["total_usd"],
                                                               _order(c)))
    best = max(c["value"] for c in cells)
    prompting = [c for c in cells if c["family"] == "prompting"]
    top_prompt = max((c["value"] for c in prompting), default=-1.0)
    if top_prompt >= prompting_enough * target:
        pick = [c for c in prompting if c["value"] == top_prompt]
        return "prompting_enough", min(pick, key=lambda c: (c["cost"]["total_usd"], _order(c)))
    pick = [c for c in cells if c["value"] == best]
    return "none_meets", min(pick, key=lambda c: (c["cost"]["total_usd"], _order(c)))


def _rows(store: Store | None, run_id: str | None, cell: dict[str, Any]
          ) -> dict[str, dict[str, Any]]:
    """A cell's per-item rows from the store (score, prediction, gold), by example id."""
    if store is None or not run_id:
        return {}
    return {row["example_id"]: {"score": float(row["score"]), "prediction": row["prediction"],
                                "gold": row["gold"]}
            for row in store.predictions(run_id, cell["stored_as"])}


def paired(a: dict[str, Any], b: dict[str, Any], store: Store | None, run_id: str | None,
           metric: str = "") -> dict[str, Any] | None:
    """Paired bootstrap of cell ``a`` against cell ``b`` on the test items both scored, on
    the task's metric (:func:`tunewise.comparisons.paired_bootstrap`): ``diff`` is a - b,
    ``p`` two-sided."""
    ra, rb = _rows(store, run_id, a), _rows(store, run_id, b)
    if not set(ra) & set(rb):
        return None
    test = paired_bootstrap(rb, ra, metric)  # metric(a) - metric(b)
    return {"a": a["label"], "b": b["label"], "metric": metric, "purpose": "parity",
            "diff": test["diff"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
            "p": test["p"], "p_text": p_text(test["p"], test["b_resamples"]),
            "n": test["n"], "b_resamples": test["b_resamples"]}


def _ratio_text(mine: float, theirs: float) -> str:
    if mine <= 0 or theirs <= 0:
        return "at no measurable cost per request" if mine <= 0 < theirs else ""
    if theirs >= mine:
        r = theirs / mine
        return f"at 1/{r:.0f} of the cost per request" if r >= 1.5 else \
            f"at {mine / theirs:.0%} of the cost per request"
    return f"at {mine / theirs:.1f}x the cost per request"


def parity_sentence(a: dict[str, Any], b: dict[str, Any], test: dict[str, Any] | None,
                    volume: int) -> str:
    """"lora on small reaches 96% of few_shot_knn on large (paired difference ...) at 1/30
    of the cost per request; it pays back its upfront cost after N days at V requests/day"."""
    share = a["value"] / b["value"] if b["value"] else 1.0
    text = f"{a['rung']} on {a['model']} reaches {share:.0%} of {b['rung']} on {b['model']}"
    if test:
        text += (f" (paired difference {test['diff']:+.2f}, 95% CI {test['ci_low']:+.2f} to "
                 f"{test['ci_high']:+.2f}, {test['p_text']}, {test['n']} test items)")
    ratio = _ratio_text(a["cost"]["per_request_usd"], b["cost"]["per_request_usd"])
    if ratio:
        text += " " + ratio
    extra = a["cost"]["upfront_usd"] - b["cost"]["upfront_usd"]
    saving = b["cost"]["daily_usd"] - a["cost"]["daily_usd"]
    if extra > 0 and saving > 0:
        text += (f"; it pays back its {format_usd(extra)} extra upfront cost after "
                 f"{format_days(extra / saving)} at {volume:,} requests/day")
    elif extra > 0:
        text += f"; it costs {format_usd(extra)} more upfront and never pays it back"
    elif saving > 0:
        text += f"; it saves {format_usd(saving)}/day at {volume:,} requests/day"
    return text


def references(cells: list[dict[str, Any]], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """Cells the chosen one is compared with: the best cell of every other model, and the
    best cell of its own model when that is not the chosen one."""
    out = []
    models = sorted({c["model_order"] for c in cells})
    for order in models:
        mine = [c for c in cells if c["model_order"] == order and c is not chosen]
        if not mine:
            continue
        best = max(mine, key=lambda c: (c["value"], -c["cost"]["total_usd"]))
        if order == chosen["model_order"] and best["value"] <= chosen["value"]:
            continue  # nothing better on its own model to compare with
        out.append(best)
    return out


def verdict_across(result: dict[str, Any], cells: list[dict[str, Any]], task: TaskSpec,
                   store: Store | None) -> dict[str, Any]:
    """``verdict.choice``, ``verdict.parity`` and the sentences that state them."""
    rule, chosen = choose(cells, task.target, task.decision.prompting_enough)
    if chosen is None:
        return {"choice": None, "parity": [], "rule_across": rule}
    volume = task.volume.requests_per_day
    parity, lines = [], []
    for ref in references(cells, chosen):
        test = paired(chosen, ref, store, result.get("run_id"), task.metric or "")
        sentence = parity_sentence(chosen, ref, test, volume)
        lines.append(sentence)
        if test:
            parity.append({**test, "text": sentence})
    c = chosen["cost"]
    how = {"cheapest_meeting": "the cheapest cell that meets the target",
           "prompting_enough": "no cell meets the target; the best prompting cell reaches "
                               f"{chosen['value'] / task.target:.0%} of it: improve the prompt",
           "none_meets": "no cell meets the target; this one comes closest"}[rule]
    summary = (f"Use {chosen['rung']} on {chosen['model']}: {how} ({task.metric} "
               f"{chosen['value']:.3f}, target {task.target:g}); "
               f"{format_usd(c['total_usd'])} over {c['horizon_days']:g} days at "
               f"{volume:,} requests/day ({format_usd(c['upfront_usd'])} upfront + "
               f"{format_usd(c['daily_usd'])}/day).")
    return {"choice": {"rung": chosen["rung"], "model": chosen["model"]},
            "parity": parity, "rule_across": rule, "summary_across": summary,
            "parity_text": lines}


def distill_vs_lora(result: dict[str, Any], cells: list[dict[str, Any]], task: TaskSpec,
                    store: Store | None) -> list[dict[str, Any]]:
    """Each model's distilled cell against its LoRA on gold labels, when both ran: what the
    teacher's labels cost or gain over gold ones (paired test on the same test items)."""
    out = []
    for d in (c for c in cells if c["rung"] == "distill"):
        gold = next((c for c in cells if c["rung"] == "lora" and c["model"] == d["model"]),
                    None)
        test = paired(d, gold, store, result.get("run_id"), task.metric or "") if gold else None
        if test:
            test["text"] = (f"distill on {d['model']} (teacher labels) scores {d['value']:.3f} "
                            f"against lora on gold labels {gold['value']:.3f}: paired "
                            f"difference {test['diff']:+.3f} (95% CI {test['ci_low']:+.3f} to "
                            f"{test['ci_high']:+.3f}, {test['p_text']})")
            out.append(test)
    return out


def add_cells(result: dict[str, Any], task: TaskSpec, store: Store | None = None) -> None:
    """Put ``cells``, ``cost.matrix`` and the verdict across models into a run's result.

    With one model the verdict keeps its rung and gains ``choice`` naming the model (and a
    parity line when a better-scoring rung was passed over); with several, the cheapest
    cell over the horizon among those meeting the target becomes the verdict.
    """
    cells = build_cells(result, task)
    result["cells"] = [{k: v for k, v in c.items()
                        if k not in ("model_order", "stored_as", "label")} for c in cells]
    result.setdefault("cost", {})["matrix"] = matrix_cost(cells, task)
    verdict = result.setdefault("verdict", {})
    if len(model_runs(result)) > 1:
        across = verdict_across(result, cells, task, store)
        choice = across["choice"]
        cell = next((c for c in cells if choice and (c["rung"], c["model"]) ==
                     (choice["rung"], choice["model"])), None)
        verdict.update(rung=choice["rung"] if choice else None,
                       model=choice["model"] if choice else None, choice=choice,
                       rule=across["rule_across"],
                       meets_target=bool(cell and cell["meets_target"]))
        if "summary_across" in across:
            first = model_runs(result)[0][0]
            verdict["reasons"] = across["parity_text"] + [
                p["text"] for p in distill_vs_lora(result, cells, task, store)] + [
                f"on {first}: {line}" for line in verdict.get("reasons", [])]
            verdict["rejected"] = [f"on {first}: {line}"
                                   for line in verdict.get("rejected", [])]
            lead = (f"ship {choice['rung']} on {choice['model']}; re-run tunewise when the data, "
                    "the models or their prices change" if across["rule_across"] ==
                    "cheapest_meeting" else None)
            verdict["next"] = ([lead] if lead else []) + [
                f"on {first}: {line}" for line in verdict.get("next", [])]
            verdict["summary"] = across["summary_across"]
    else:
        model = model_runs(result)[0][0]
        rung = verdict.get("rung")
        verdict["choice"] = {"rung": rung, "model": model} if rung else None
        verdict["model"] = model if rung else None
        mine = next((c for c in cells if c["rung"] == rung), None)
        across = {"parity": []}
        for ref in references(cells, mine) if mine is not None else []:
            test = paired(mine, ref, store, result.get("run_id"), task.metric or "")
            if test:
                sentence = parity_sentence(mine, ref, test, task.volume.requests_per_day)
                across["parity"].append({**test, "text": sentence})
    verdict["parity"] = across["parity"]
    verdict["distill_vs_lora"] = distill_vs_lora(result, cells, task, store)
    verdict["horizon_days"] = horizon_days(task)
    verdict["break_even_cells"] = [p["text"] for p in
                                   result["cost"]["matrix"]["break_even"]["pairs"]]
