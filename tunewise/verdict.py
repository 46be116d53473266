"""Stop rule and verdict: which rung to use, and why, in numbers from the run."""

from __future__ import annotations

from typing import Any

from tunewise.task import TaskSpec

PROMPTING_ENOUGH = 0.9  # best prompting rung >= 90% of target: improve prompts, don't tune


def decide(result: dict[str, Any], task: TaskSpec) -> dict[str, Any]:
    """The cheapest rung that meets the target, or the best effort with the 90% rule."""
    done = [r for r in result["rungs"] if r["status"] == "done"]
    target = task.target
    metric = task.metric
    meeting = [r for r in done if r["value"] >= target]
    reasons: list[str] = []
    if meeting:
        chosen = meeting[0]
        reasons.append(
            f"{chosen['name']} reaches {metric} {chosen['value']:.3f} "
            f"(95% CI {chosen['ci_low']:.3f}-{chosen['ci_high']:.3f}), meeting the target {target}"
        )
        return {"rung": chosen["name"], "meets_target": True, "reasons": reasons,
                "summary": f"Use {chosen['name']}: the cheapest rung that meets the target."}
    if not done:
        return {"rung": None, "meets_target": False, "reasons": ["no rung ran"],
                "summary": "No rung ran."}
    best = max(done, key=lambda r: r["value"])
    share = best["value"] / target if target else 1.0
    reasons.append(
        f"best rung {best['name']} reaches {metric} {best['value']:.3f}, "
        f"{share:.0%} of the target {target}"
    )
    prompting = [r for r in done if r["family"] == "prompting"]
    if prompting and max(r["value"] for r in prompting) >= PROMPTING_ENOUGH * target:
        summary = "Prompting is close enough: improve the prompt before anything costlier."
    else:
        summary = f"No rung meets the target; {best['name']} comes closest."
    return {"rung": best["name"], "meets_target": False, "reasons": reasons,
            "summary": summary}
