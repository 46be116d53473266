"""The advisor as a step-by-step web wizard, over the advisor's own question list.

The questions, their order and when each is asked come from ``tunewise.advisor.QUESTIONS``
so the terminal and the web ask the same thing. State lives in the query string: every
answered question travels as a hidden field (blank = answered "none"), so the wizard needs
no session and a finished wizard is a link that can be shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunewise.advisor import QUESTIONS, Answers, Question

YES, NO = "yes", "no"


@dataclass
class Step:
    """Where the wizard is: the answers so far and the next question (None: finished)."""

    answers: Answers
    given: dict[str, str]
    question: Question | None
    number: int
    total: int
    error: str | None = None


def _parse(q: Question, raw: str) -> Any:
    """One answer from its form value; raises ValueError with a message for the page."""
    raw = raw.strip()
    if q.kind == "bool":
        if raw not in (YES, NO):
            raise ValueError("choose yes or no")
        return raw == YES
    if q.kind == "choice":
        if raw not in q.choices:
            raise ValueError(f"choose one of {', '.join(q.choices)}")
        return raw
    if not raw:
        return None
    try:
        value = int(raw) if q.kind == "int" else float(raw)
    except ValueError:
        raise ValueError(f"'{raw}' is not a number") from None
    if value < 0:
        raise ValueError("enter a number of zero or more")
    return value


def step(params: Mapping[str, str], min_examples: int | None = None) -> Step:
    """Read the answers in ``params`` and find the next question to ask.

    A bad answer is dropped and its question asked again with the reason.
    """
    answers = Answers() if min_examples is None else Answers(min_examples=min_examples)
    given: dict[str, str] = {}
    error = None
    for q in QUESTIONS:
        if q.key not in params:
            continue
        try:
            setattr(answers, q.key, _parse(q, params[q.key]))
            given[q.key] = params[q.key].strip()
        except ValueError as exc:
            error = f"{q.text} {exc}"
    asked = [q for q in QUESTIONS if q.ask_if(answers)]
    pending = [q for q in asked if q.key not in given]
    number = len(asked) - len(pending) + 1
    return Step(answers, given, pending[0] if pending else None, number, len(asked), error)
