"""The forgetting check: did tuning on the task break what the model could do before?

Base and tuned model answer the same general set, a mix of tasks the adapter never saw
(arithmetic, facts, word tasks, sentiment, everyday questions), prompted the way the
``lora`` rung is: the bare question. Items with ``choices`` are answered by log-prob over
the choices (cheap and robust for a small model); items without are generated and
compared by exact match. The drop is reported with CIs and a paired test, and flagged
when it exceeds ``decision.forgetting_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunewise.backends.base import CachedBackend
from tunewise.dataset import read_rows
from tunewise.errors import TunewiseError
from tunewise.evaluate import Score, compare, evaluate
from tunewise.prompts import build_messages
from tunewise.rungs.base import RunContext

BUNDLED = "demo/general/general.jsonl"
FREE_ANSWER_TOKENS = 16


@dataclass(frozen=True)
class GeneralItem:
    """One general-ability question; ``choices`` (with the answer among them) or free text."""

    id: str
    input: str
    output: str
    choices: tuple[str, ...] = ()


def bundled_path() -> Path:
    """The general set shipped with tunewise."""
    return Path(str(resources.files("tunewise").joinpath(BUNDLED)))


def load_general(path: Path | None = None) -> list[GeneralItem]:
    """Read a general set (JSONL/CSV: input, output, optional choices list).

    Raises:
        TunewiseError: a missing field, or an answer that is not among its choices.
    """
    path = Path(path) if path is not None else bundled_path()
    items = []
    for line, row in read_rows(path):
        if not str(row.get("input", "")).strip() or not str(row.get("output", "")).strip():
            raise TunewiseError("each item needs 'input' and 'output'", path=path, line=line)
        choices = tuple(str(c) for c in row.get("choices") or ())
        output = str(row["output"]).strip()
        if choices and output not in choices:
            raise TunewiseError(f"answer '{output}' is not among the choices", path=path,
                                line=line, field="choices")
        items.append(GeneralItem(str(row.get("id", f"L{line}")), str(row["input"]), output,
                                 choices))
    if not items:
        raise TunewiseError("the general set is empty", path=path)
    return items


def score_general(ctx: RunContext, backend: CachedBackend, items: list[GeneralItem]) -> Score:
    """One model's score on the general set (exact match of the chosen or generated answer)."""
    prompts = [build_messages(ctx.task, None, it.input, system=False) for it in items]
    answers: dict[int, str] = {}
    mc = [i for i, it in enumerate(items) if it.choices]
    if mc:
        scored = backend.score([prompts[i] for i in mc], [list(items[i].choices) for i in mc])
        for i, s in zip(mc, scored, strict=True):
            best = max(range(len(s.logprobs)), key=s.logprobs.__getitem__)
            answers[i] = items[i].choices[best]
    free = [i for i, it in enumerate(items) if not it.choices]
    if free:
        done = backend.generate([prompts[i] for i in free], FREE_ANSWER_TOKENS, ["\n"])
        answers.update({i: c.text for i, c in zip(free, done, strict=True)})
    return evaluate([answers[i] for i in range(len(items))], [it.output for it in items],
                    "exact_match")


def _summary(score: Score) -> dict[str, Any]:
    return {"value": score.value, "ci_low": score.ci_low, "ci_high": score.ci_high}


def forgetting_check(ctx: RunContext, tuned: Any) -> dict[str, Any]:
    """Base vs tuned on the general set: both scores with CIs, the change, and a flag.

    Args:
        ctx: the run (its backend is the base model).
        tuned: the local backend with the task's adapter.
    """
    spec = ctx.task.lora
    items = load_general(spec.general)
    rung = "forgetting_check"
    base = score_general(ctx, ctx.backend.for_rung(rung), items)
    after = score_general(ctx, CachedBackend(tuned, ctx.store, ctx.run_id or None, rung), items)
    drop = compare(after.per_example, base.per_example)  # does base beat tuned?
    diff = after.value - base.value
    return {
        "set": str(spec.general) if spec.general else "bundled general set",
        "n": len(items),
        "metric": "exact_match",
        "base": _summary(base),
        "tuned": _summary(after),
        "diff": diff,
        "diff_ci_low": 0.0 - drop["ci_high"],
        "diff_ci_high": 0.0 - drop["ci_low"],
        "p_value": drop["p_value"],  # one-sided: that the base model scores higher
        "threshold": ctx.task.decision.forgetting_threshold,
        "flagged": -diff > ctx.task.decision.forgetting_threshold,
    }
