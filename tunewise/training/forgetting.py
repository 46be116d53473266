"""The forgetting check: did tuning on the task break what the model could do before?

Base and tuned model answer the same general set, a mix of tasks the adapter never saw
(arithmetic, facts, word tasks, sentiment, everyday questions), prompted the way the
``lora`` rung is: the bare question.

Ability is measured independently of answer length (issue 14: a tuned model "gained" 0.25
because its answers got shorter and the set was scored by exact match):

- items with ``choices`` are scored as lm-eval scores multiple choice (``acc``): the choice
  with the highest log-probability is the answer; nothing is generated;
- items without are generated and count as right when the answer *states* the gold answer
  (whole words, after normalisation), however short or long the answer is.

The ability change is reported with Wilson CIs and a paired test, and flagged when the drop
exceeds ``decision.forgetting_threshold``. How long the answers are is reported apart, as a
behaviour change (``length``): measured on the free-answer items, or on a sample of the
multiple-choice questions asked openly when the set has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunewise.backends.base import Backend, Messages
from tunewise.dataset import read_rows
from tunewise.errors import TunewiseError
from tunewise.evaluate import Score, compare, contains_answer, interval

BUNDLED = "demo/general/general.jsonl"
FREE_ANSWER_TOKENS = 32
LENGTH_PROBE = 20  # questions asked openly to measure answer length when none are free
LENGTH_SHIFT = 1.5  # tuned/base mean answer length beyond this factor (either way) is flagged
METHOD = ("multiple-choice items: the choice with the highest log-probability (lm-eval acc); "
          "free-answer items: the answer states the gold answer")


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


@dataclass
class GeneralScore:
    """One model on the general set: ability (length-independent) and answer lengths."""

    score: Score
    lengths: list[int]


def score_general(backend: Backend, items: list[GeneralItem], prompt: Callable[[str], Messages]
                  ) -> GeneralScore:
    """One model's ability on the general set, and how long its free answers are.

    Args:
        backend: the model (through the call cache when the run has one).
        items: the general set.
        prompt: the messages for one question (the way the tuned rung is prompted).
    """
    prompts = [prompt(it.input) for it in items]
    right: dict[int, float] = {}
    mc = [i for i, it in enumerate(items) if it.choices]
    if mc:
        scored = backend.score([prompts[i] for i in mc], [list(items[i].choices) for i in mc])
        for i, s in zip(mc, scored, strict=True):
            best = max(range(len(s.logprobs)), key=s.logprobs.__getitem__)
            right[i] = float(items[i].choices[best] == items[i].output)
    free = [i for i, it in enumerate(items) if not it.choices]
    # Length is measured on free answers; a set without any asks a few questions openly.
    asked = free or mc[:LENGTH_PROBE]
    done = backend.generate([prompts[i] for i in asked], FREE_ANSWER_TOKENS, None)
    for i, c in zip(asked, done, strict=True):
        if not items[i].choices:
            right[i] = float(contains_answer(c.text, items[i].output))
    per = [right[i] for i in range(len(items))]
    low, high, method = interval(per)
    value = sum(per) / len(per) if per else 0.0
    score = Score("accuracy", value, low, high, len(per), per, method)
    return GeneralScore(score, [c.completion_tokens for c in done])


def _summary(score: Score) -> dict[str, Any]:
    return {"value": score.value, "ci_low": score.ci_low, "ci_high": score.ci_high}


def length_shift(base: list[int], tuned: list[int]) -> dict[str, Any]:
    """Mean answer length before and after tuning; ``shifted`` when it changes by more than
    :data:`LENGTH_SHIFT` times (a behaviour change, not a change in ability)."""
    b = sum(base) / len(base) if base else 0.0
    t = sum(tuned) / len(tuned) if tuned else 0.0
    ratio = t / b if b else (1.0 if not t else float("inf"))
    shifted = bool(base) and abs(t - b) >= 2 and not (1 / LENGTH_SHIFT <= ratio <= LENGTH_SHIFT)
    return {"n": len(base), "base_mean_tokens": b, "tuned_mean_tokens": t,
            "ratio": ratio if ratio != float("inf") else None, "shifted": shifted}


def compare_general(base: Backend, tuned: Backend, items: list[GeneralItem],
                    prompt: Callable[[str], Messages], threshold: float, set_name: str
                    ) -> dict[str, Any]:
    """Base vs tuned on the general set: both scores with CIs, the change, and a flag.

    Args:
        base: the model before tuning.
        tuned: the model with the task's adapter (or its own tuned weights).
        items: the general set (see :func:`load_general`).
        prompt: the messages for one question.
        threshold: a drop beyond this is flagged (``decision.forgetting_threshold``).
        set_name: what the set is, as the result names it.
    """
    base_run = score_general(base, items, prompt)
    after_run = score_general(tuned, items, prompt)
    base_score, after = base_run.score, after_run.score
    drop = compare(after.per_example, base_score.per_example)  # does base beat tuned?
    diff = after.value - base_score.value
    length = length_shift(base_run.lengths, after_run.lengths)
    return {
        "set": set_name,
        "n": len(items),
        "metric": "accuracy",
        "method": METHOD,
        "length": length,
        "behaviour_change": length["shifted"],
        "base": _summary(base_score),
        "tuned": _summary(after),
        "diff": diff,
        "diff_ci_low": 0.0 - drop["ci_high"],
        "diff_ci_high": 0.0 - drop["ci_low"],
        "p_value": drop["p_value"],  # one-sided: that the base model scores higher
        "threshold": threshold,
        "flagged": -diff > threshold,
    }
