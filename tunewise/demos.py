"""The bundled demos: the two sides of the central question, run in one command.

``tunewise demo`` runs both tasks and ends with their verdicts side by side:

- **symptoms** (symptom description -> one of 12 specialties) climbs to fine-tuning: the
  knowledge is general, so what is missing, if anything, is behaviour;
- **clinic** (questions about a fictional clinic's handbook) climbs to retrieval and the
  freshness test: no model can know these facts, so what is missing is knowledge.

Sizes are shrunk so a cold run fits a small CPU budget (test splits of 60-72, two LoRA
epochs, no learning curve), never the checks: every score keeps its confidence interval.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.verdict import tried_text

DEMOS: dict[str, str] = {"symptoms": "demo/symptoms/task.yaml",
                         "clinic": "demo/clinic/task.yaml"}
QUESTION: dict[str, str] = {
    "symptoms": "general knowledge, a fixed label set: does fine-tuning teach the behaviour?",
    "clinic": "facts no model can know: does retrieval bring them in, and follow an edit?",
}
GAP: dict[str, str] = {
    "knowledge": "a knowledge gap: retrieval helps",
    "behaviour": "a behaviour gap: training helps",
    "both": "both knowledge and behaviour are missing",
    "reader": "reader capacity: retrieval finds the answers, the model does not use them "
              "well (a larger model is the lever)",
    "none": "no gap: prompting reaches the target",
    "unclear": "unclear: {tried} did not help clearly",
    "unmeasured": "not measured: only prompting rungs ran",
}


def demo_path(name: str) -> Path:
    """Path of a bundled demo task file."""
    if name not in DEMOS:
        raise TunewiseError(f"unknown demo '{name}' (choose from {', '.join(DEMOS)}, or "
                            "no name for both)")
    return Path(str(resources.files("tunewise").joinpath(DEMOS[name])))


def demo_task(name: str, backend: str | None = None) -> Any:
    """The loaded demo task; ``backend`` swaps its backend kind (``dummy`` in tests)."""
    from tunewise.task import BackendSpec, load_task

    task = load_task(demo_path(name))
    if backend is None:
        return task
    spec = BackendSpec(kind=backend)  # type: ignore[arg-type]
    moved = task.model_copy(update={"backend": spec})
    moved._source, moved._yaml = task.source, task._yaml
    return moved


def cost_line(result: dict[str, Any], rung: str) -> str:
    """The verdict rung's cost at the task's volume, with the price entry it used."""
    from tunewise.cost import format_usd

    cost = result.get("cost") or {}
    c = (cost.get("rungs") or {}).get(rung)
    if not c:
        return f"{rung}: no cost measured"
    price = cost.get("price") or {}
    tag = ", example prices" if price.get("example") else ""
    return (f"{rung}: {format_usd(c['per_1k'])} per 1,000 requests, "
            f"{format_usd(c['daily'])}/day at {cost['requests_per_day']:,} requests/day, "
            f"{format_usd(c['upfront'])} upfront (price '{price.get('name', '?')}'{tag})")


def closing(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per demo: its question, verdict, diagnosis with evidence, and cost line."""
    out = []
    for name, result in results.items():
        verdict = result.get("verdict") or {}
        diag = verdict.get("diagnosis") or {}
        gap = diag.get("gap", "unmeasured")
        rung = verdict.get("rung") or ""
        chosen = next((r for r in result["rungs"] if r["name"] == rung), None)
        score = (f"{result['task']['metric']} {chosen['value']:.3f} "
                 f"(95% CI {chosen['ci_low']:.3f}-{chosen['ci_high']:.3f})" if chosen else "")
        out.append({
            "demo": name, "task": result["task"]["name"], "question": QUESTION.get(name, ""),
            "summary": verdict.get("summary", ""), "rung": rung, "score": score,
            "gap": gap, "diagnosis": GAP.get(gap, gap).format(tried=tried_text(diag)),
            "evidence": (diag.get("knowledge") or []) + (diag.get("behaviour") or [])
            + (diag.get("reader") or []) or (diag.get("evidence") or [])[:2],
            "cost": cost_line(result, rung) if rung else "",
            "run_id": result.get("run_id"),
        })
    return out


def print_closing(console: Any, verdicts: list[dict[str, Any]]) -> None:
    """The demo's last screen: the verdicts side by side, each with its diagnosis, the
    evidence behind it and its cost line."""
    from tunewise.terminal import safe

    count = {1: "one", 2: "two", 3: "three"}.get(len(verdicts), str(len(verdicts)))
    console.rule(f"[bold]The {count} verdicts[/bold]")
    for v in verdicts:
        console.print(f"\n[bold]{safe(v['task'])}[/bold] [dim]({safe(v['question'])})[/dim]")
        console.print(f"  verdict:   {safe(v['summary'])}")
        if v["score"]:
            console.print(f"  measured:  {safe(v['rung'])} {safe(v['score'])}")
        console.print(f"  diagnosis: {safe(v['diagnosis'])}")
        for line in v["evidence"]:
            console.print(f"             • {safe(line)}")
        console.print(f"  cost:      {safe(v['cost'])}")
    console.print("\n[dim]Your own data: tunewise init data.jsonl, then tunewise run "
                  "task.yaml[/dim]")
