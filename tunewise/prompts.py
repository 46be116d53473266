"""Prompt templates as data (``prompts.yaml``) and the one function that renders them.

Hidden prompt construction is how evaluation tools lose users' trust (DSPy #8291): here
every rung asks :func:`build_messages` for its messages, and ``tunewise show-prompt`` prints
the same thing through the backend's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from tunewise.backends.base import Messages
from tunewise.task import TaskSpec
from tunewise.templating import VARIABLES, builtin_sources  # noqa: F401  (VARIABLES: re-exported)
from tunewise.templating import compile_template as _compile

Shot = dict[str, str]


def templates(task: TaskSpec | None = None) -> dict[str, jinja2.Template]:
    """The compiled templates: the built-ins, with the task's ``prompts:`` in their place."""
    sources = dict(builtin_sources())
    if task is not None:
        sources.update(task_overrides(task))
    return {name: _compile(src) for name, src in sources.items()}


def task_overrides(task: TaskSpec) -> dict[str, str]:
    """The templates the task file replaces, by name (empty when it uses the built-ins)."""
    return {k: v for k, v in task.prompts.model_dump().items() if v is not None}


def _render(name: str, task: TaskSpec | None = None, **values: Any) -> str:
    return templates(task)[name].render(task=task, **values).strip()


def system_message(task: TaskSpec, labels: Sequence[str] | None, row_system: str | None = None,
                   *, text: str = "", shots: Sequence[Shot] = (),
                   passages: Sequence[dict[str, str]] | None = None) -> str:
    """The system message stating the task, the label set or format, and instructions;
    after the row's own system prompt when the task has ``data.system``."""
    rest = _render("system", task, input=text, labels=list(labels or []), shots=list(shots),
                   passages=list(passages or []), row_system=bool(row_system))
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

    Every template sees the same variables (:data:`VARIABLES`), whichever it is, so a
    task's own templates (``prompts:``) may use any of them.

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
    seen = {"labels": list(labels or []), "shots": list(shots),
            "passages": list(passages or []), "row_system": bool(row_system)}
    if not system:
        user = {"role": "user", "content": _render("zero_shot_user", task, input=text, **seen)}
        return [{"role": "system", "content": row_system}, user] if row_system else [user]
    messages: Messages = [{"role": "system", "content": system_message(
        task, labels, row_system, text=text, shots=shots, passages=passages)}]
    for shot in shots:
        messages.append({"role": "user", "content": _render("user", task, input=shot["input"],
                                                            **seen)})
        messages.append({"role": "assistant", "content": shot["output"]})
    name = "rag_user" if passages is not None else "user"
    messages.append({"role": "user", "content": _render(name, task, input=text, **seen)})
    return messages
