"""What the ladder does after a fine-tuning rung ran: the curve, forgetting, verdict notes.

Fine-tuning is judged twice (DESIGN.md): the task gain, with its learning curve, and the
regression on a general set against the base model. Both run once per run, after the
rungs, on the adapter the lora rungs shared.
"""

from __future__ import annotations

from typing import Any

from tunewise.comparisons import p_text
from tunewise.errors import TunewiseError
from tunewise.rungs.base import RunContext


def after_ladder(ctx: RunContext, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the learning curve to the ``lora`` result; return ``{"forgetting": ...}``.

    Does nothing (returns ``{}``) when no fine-tuning rung trained or loaded an adapter.
    A check that cannot run (e.g. a broken general-set file) is reported, not fatal:
    the rungs' results are already measured and stored.
    """
    from tunewise.training.curve import learning_curve
    from tunewise.training.forgetting import forgetting_check

    tuned = ctx.shared.get("lora")
    if tuned is None:
        return {}
    lora = next((r for r in results if r["name"] == "lora" and r["status"] == "done"), None)
    if lora is not None and ctx.task.lora.curve:
        lora["info"]["learning_curve"] = learning_curve(ctx, lora)
    try:
        forgetting = forgetting_check(ctx, tuned.backend)
    except TunewiseError as exc:
        ctx.log(f"forgetting check skipped: {exc}")
        forgetting = {"error": str(exc)}
    return {"forgetting": forgetting}


def _pct(x: float) -> str:
    return f"{x:.3f}"


def verdict_notes(result: dict[str, Any]) -> list[str]:
    """Reasons for the verdict about fine-tuning, each citing a number from the run."""
    notes: list[str] = []
    target = result["task"]["target"]
    lora = next((r for r in result["rungs"] if r["name"] == "lora" and r["status"] == "done"),
                None)
    curve = (lora or {}).get("info", {}).get("learning_curve")
    if curve:
        pts = curve["points"]
        shape = ", ".join(f"{p['n']}: {_pct(p['value'])}" for p in pts)
        if curve.get("slope_per_100") is not None:  # how fast it still climbs at the end
            shape += f"; {curve['slope_per_100']:+.3f} per 100 examples at {pts[-1]['n']}"
        needed = curve["examples_to_target"]
        if needed is not None:
            notes.append(f"lora reached the target {target} with {needed} training examples "
                         f"(learning curve {shape})")
        elif len(pts) > 1 and pts[-1]["value"] > pts[-2]["ci_high"]:
            notes.append(f"lora is still improving with more data and below the target "
                         f"{target}; more examples would be needed (learning curve {shape})")
        else:
            notes.append(f"lora stays below the target {target} and has levelled off; more of "
                         f"the same examples is unlikely to close the gap (curve {shape})")
    forgetting = result.get("forgetting") or {}
    cited = next((c for c in (result.get("verdict") or {}).get("comparisons", [])
                  if c.get("purpose", "").startswith("forgetting")), None)
    if "base" in forgetting:
        b, t = forgetting["base"], forgetting["tuned"]
        change = (f"general set: base {_pct(b['value'])} [{_pct(b['ci_low'])}, "
                  f"{_pct(b['ci_high'])}] vs tuned {_pct(t['value'])} [{_pct(t['ci_low'])}, "
                  f"{_pct(t['ci_high'])}], change {forgetting['diff']:+.3f}"
                  + (f", comparison {cited['id']}" if cited else ""))
        if forgetting["flagged"]:
            notes.append(f"forgetting flagged: tuning cost general ability beyond the "
                         f"{forgetting['threshold']} threshold ({change}, "
                         f"{p_text(forgetting['p_value'])})")
        else:
            notes.append(f"no forgetting beyond the {forgetting['threshold']} threshold "
                         f"({change})")
        length = forgetting.get("length") or {}
        if length.get("shifted"):
            way = "shorter" if length["tuned_mean_tokens"] < length["base_mean_tokens"] else \
                "longer"
            notes.append(f"behaviour change: after tuning, general-set answers are {way} "
                         f"(mean {length['base_mean_tokens']:.1f} -> "
                         f"{length['tuned_mean_tokens']:.1f} tokens over {length['n']} "
                         "questions); ability above is scored independently of length")
    return notes
