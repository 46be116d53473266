"""Prompt templates as data (``prompts.yaml``) and the one function that renders them.

Hidden prompt construction is how evaluation tools lose users' trust (DSPy #8291): here
every rung asks :func:`build_messages` for its messages, and ``tunewise show-prompt`` prints
the same thing through the backend's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import yaml
from jinja2 import Environment, StrictUndefined

from tunewise.backends.base import Messages
from tunewise.task import TaskSpec

Shot = dict[str, str]


@cache
def templates() -> dict[str, Any]:
    """The compiled templates from the packaged ``prompts.yaml``."""
    text = resources.files("tunewise").joinpath("prompts.yaml").read_text(encoding="utf-8")
    env = Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return {name: env.from_string(src) for name, src in yaml.safe_load(text).items()}


def _render(name: str, **values: Any) -> str:
    return templates()[name].render(**values).strip()


def system_message(task: TaskSpec, labels: Sequence[str] | None, row_system: str | None = None
                   ) -> str:
    """The system message stating the task, the label set or format, and instructions;
    after the row's own system prompt when the task has ``data.system``."""
    rest = _render("system", task=task, labels=list(labels or []), row_system=bool(row_system))
    if not row_system:
        return rest
    return f"{row_system}\n\n{rest}" if rest else row_system


def row_system(task: TaskSpec, example: Any) -> str | None:
    """The example's own system prompt (``data.system`` column), exactly as written."""
    if not task.data.system:
        return None
    value = getattr(example, "extra", {}).get(task.data.system)
    return None if value is None or not str(value).strip() else str(value)


def build_messages(
    task: TaskSpec,
    labels: Sequence[str] | None,
    text: str,
    *,
    system: bool = True,
    shots: Sequence[Shot] = (),
    passages: Sequence[dict[str, str]] | None = None,
    row_system: str | None = None,
) -> Messages:
    """Chat messages for one input.

    Args:
        task: the task (its description and instructions feed the system message).
        labels: the label set for classification, else None.
        text: the example's input.
        system: include the system message (False only for zero_shot).
        shots: worked examples, each shown as a user turn and an assistant turn.
        passages: retrieved passages for RAG, shown with their ids.
        row_system: the example's own system prompt (see :func:`row_system`): sent as
            written, alone when ``system`` is False, else followed by the rung's text.
    """
    if not system:
        user = {"role": "user", "content": _render("zero_shot_user", input=text)}
        return [{"role": "system", "content": row_system}, user] if row_system else [user]
    messages: Messages = [{"role": "system",
                           "content": system_message(task, labels, row_system)}]
    for shot in shots:
        messages.append({"role": "user", "content": _render("user", input=shot["input"])})
        messages.append({"role": "assistant", "content": shot["output"]})
    if passages is not None:
        content = _render("rag_user", input=text, passages=list(passages), task=task,
                          labels=list(labels or []))
    else:
        content = _render("user", input=text)
    messages.append({"role": "user", "content": content})
    return messages
