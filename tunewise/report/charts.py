"""The report's four charts, drawn from report data with the SVG helper.

Each function returns ``None`` when the run has nothing to draw (no fine-tuning, no cost
section, not a classification task), so the template simply leaves the chart out.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from tunewise.cost import format_usd
from tunewise.report.svg import Axis, RefLine, Series, chart

FAMILY_COLOR = {"prompting": "#2563eb", "retrieval": "#16a34a", "fine_tuning": "#ea580c"}
FAMILY_LABEL = {"prompting": "prompting", "retrieval": "retrieval (RAG)",
                "fine_tuning": "fine-tuning"}
METRIC_UNIT = {
    "accuracy": "accuracy (share correct)",
    "macro_f1": "macro-F1 (0-1)",
    "exact_match": "exact match (share)",
    "token_f1": "token F1 (0-1)",
    "field_f1": "field F1 (0-1)",
}


def metric_axis(metric: str) -> Axis:
    """The quality axis: always 0-1 so small differences are not blown up."""
    return Axis(f"{METRIC_UNIT.get(metric, metric)}, 95% CI", lo=0.0, hi=1.0, fmt="{:.1f}")


def _target(task: dict[str, Any], at_start: bool = False) -> list[RefLine]:
    return [RefLine(float(task["target"]), f"target {task['target']:g}", at_start=at_start)]


def usd_tick(v: float) -> str:
    """Axis ticks in dollars: $0.000002 rather than 2e-06."""
    return "$0" if v == 0 else format_usd(v)


def quality_vs_cost(data: dict[str, Any]) -> tuple[Markup, str] | None:
    """Each done rung as a point (score with CI bar) against its cost per request.

    Falls back to tokens per request when the result has no cost section, and says so.
    """
    done = [r for r in data["rungs"] if r["status"] == "done"]
    with_cost = [r for r in done if r.get("cost_per_request") is not None]
    cells = data.get("cells") or []
    if len({c.get("model") for c in cells}) > 1:  # several models: every (rung, model) cell
        with_cost = [{"name": f"{c['rung']}@{c['model']}", "family": c.get("family", ""),
                      "value": c["value"],
                      "ci_low": c["ci_low"], "ci_high": c["ci_high"],
                      "cost_per_request": c["cost"]["per_request_usd"]} for c in cells]
    if with_cost:
        # Per 1,000 requests: the same quantity, in numbers a reader can take in.
        rows, key, unit = with_cost, "cost_per_request", "cost per 1,000 requests (USD"
        price = (data.get("cost") or {}).get("price", {}).get("name", "")
        note = f"Prices: {price}." if price else ""
        if len({c.get("model") for c in cells}) > 1:
            note = "Each cell (rung@model) is priced with its own model's entry."
    elif done:
        rows, key, unit = done, "tokens", "tokens per request (prompt + completion"
        note = "This result has no cost section, so x is tokens per request."
    else:
        return None

    def xval(r: dict[str, Any]) -> float:
        if key == "tokens":
            return float((r.get("tokens_in") or 0) + (r.get("tokens_out") or 0))
        return float(r[key]) * 1000

    xs = [xval(r) for r in rows]
    # A log scale only when costs span an order of magnitude; else it squeezes the points.
    log = min(xs) > 0 and max(xs) / min(xs) > 8
    x_title = unit + (", log scale)" if log else ")")
    series = []
    for r, xv in zip(rows, xs, strict=True):
        fam = r.get("family", "")
        tip = (f"{r['name']}: {r['value']:.3f} (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f})"
               f", {unit.split(' (')[0]} {xv:.3g}")
        series.append(Series(FAMILY_LABEL.get(fam, fam), [(xv, r["value"])],
                             err=[(r["ci_low"], r["ci_high"])], point_labels=[r["name"]],
                             tips=[tip], line=False, color=FAMILY_COLOR.get(fam)))
    fmt = usd_tick if key != "tokens" else "{:g}"
    svg = chart(series, Axis(x_title, log=log, fmt=fmt),
                metric_axis(data["task"].get("metric", "")),
                title="Quality vs cost per request", refs=_target(data["task"]))
    return svg, note


def learning_curve(data: dict[str, Any]) -> Markup | None:
    """Score against training examples for each fine-tuning rung that recorded a curve."""
    curves = data.get("learning_curves") or {}
    series = []
    for name, points in curves.items():
        pts = [p for p in points if p.get("value") is not None]
        if not pts:
            continue
        has_ci = all(p.get("ci_low") is not None for p in pts)
        series.append(Series(
            name, [(float(p["n"]), float(p["value"])) for p in pts],
            err=[(float(p["ci_low"]), float(p["ci_high"])) for p in pts] if has_ci else None,
            band=True, tips=[f"{name}: {p['n']} examples -> {p['value']:.3f}" for p in pts]))
    if not series:
        return None
    return chart(series, Axis("training examples (count)", lo=0.0, fmt="{:g}"),
                 metric_axis(data["task"].get("metric", "")),
                 title="Learning curve", refs=_target(data["task"], at_start=True))


def break_even(data: dict[str, Any]) -> Markup | None:
    """Cumulative cost (upfront + daily x days) of the compared rungs at the task's volume."""
    cost = data.get("cost") or {}
    if len({c.get("model") for c in data.get("cells") or []}) > 1 and cost.get("matrix"):
        cost = {**cost["matrix"], "rungs": {  # across models: cells, in the same shape
            label: {"upfront": c["upfront_usd"], "daily": c["daily_usd"]}
            for label, c in cost["matrix"]["cells"].items()}}
    chart_data = cost.get("chart") or {}
    days = chart_data.get("days") or []
    series_data = chart_data.get("series") or {}
    if not days or not series_data:
        return None
    rungs = {r["name"]: r for r in data["rungs"]}
    rungs.update({f"{c['rung']}@{c['model']}": c for c in data.get("cells") or []})
    series = []
    for name, values in series_data.items():
        fam = rungs.get(name, {}).get("family", "")
        series.append(Series(name, list(zip(days, values, strict=True)), markers=False,
                             dashed=fam == "fine_tuning"))
    per = cost.get("rungs") or {}
    crossings = []
    for pair in (cost.get("break_even") or {}).get("pairs", []):
        b = per.get(pair.get("b"), {})
        if pair.get("days") is not None and pair["days"] <= days[-1] and b:
            total = b["upfront"] + b["daily"] * pair["days"]
            crossings.append((pair["days"], total, f"{pair['b']} pays back vs {pair['a']}"))
    if crossings:
        series.append(Series("", [(d, v) for d, v, _ in crossings], line=False,
                              tips=[t for *_, t in crossings], color="#0f172a"))
    volume = cost.get("requests_per_day", data["task"].get("requests_per_day"))
    return chart(series, Axis(f"days in production at {volume:,} requests/day", lo=0.0),
                 Axis("cumulative cost (USD)", lo=0.0, fmt=usd_tick),
                 title="Break-even: cumulative cost over days")


def calibration(data: dict[str, Any], limit: int = 4) -> Markup | None:
    """Reliability diagram: accuracy against confidence per bin, diagonal = calibrated."""
    cal = data.get("calibration") or {}
    if not cal:
        return None
    verdict_rung = (data.get("verdict") or {}).get("rung")
    eces = {r["name"]: r.get("ece") for r in data["rungs"]}
    order = sorted(cal, key=lambda n: (n != verdict_rung, n != "zero_shot"))[:limit]
    series = []
    for name in order:
        bins = cal[name]["bins"]
        ece = eces.get(name)
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        series.append(Series(
            label, [(b["confidence"], b["accuracy"]) for b in bins],
            tips=[f"{name}: {b['count']} answers at confidence ~{b['confidence']:.2f}, "
                  f"{b['accuracy']:.0%} correct" for b in bins]))
    return chart(series, Axis("confidence of the chosen label (probability)", lo=0, hi=1,
                              fmt="{:.1f}"),
                 Axis("accuracy in the bin (share correct)", lo=0, hi=1, fmt="{:.1f}"),
                 title="Calibration", diagonal=True)


def all_charts(data: dict[str, Any]) -> dict[str, Any]:
    """Every chart the run supports, keyed by name (absent charts are left out)."""
    out: dict[str, Any] = {}
    qc = quality_vs_cost(data)
    if qc:
        out["quality_cost"], out["quality_cost_note"] = qc
    for name, fn in (("learning_curve", learning_curve), ("break_even", break_even),
                     ("calibration", calibration)):
        svg = fn(data)
        if svg is not None:
            out[name] = svg
    return out
