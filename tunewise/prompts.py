"""Prompt templates as data (``prompts.yaml``) and the one function that renders them.

Hidden prompt construction is how evaluation tools lose users' trust (DSPy #8291): here
every rung asks :func:`build_messages` for its messages, and ``tunewise show-prompt`` prints
the same thing through the backend's chat template.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import Environment, StrictUndefined

from tunewise.backends.base import Messages
from tunewise.errors import TunewiseError
from tunewise.task import TaskSpec

Shot = dict[str, str]
VARIABLES = ("task", "labels", "input", "shots", "passages", "row_system")
"""What every template sees (the built-ins and a task's own ``prompts:``)."""
_ENV = Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@cache
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


@cache
def builtin_sources() -> dict[str, str]:
    """The template sources of the packaged ``prompts.yaml``, by name."""
    text = resources.files("tunewise").joinpath("prompts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


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


def _template_line(exc: BaseException) -> int | None:
    """The template line a Jinja error points at (syntax errors carry it; render errors
    have it in the traceback frame Jinja maps back to ``<template>``)."""
    line = getattr(exc, "lineno", None)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = lineno
    return line


def check_task_templates(task: TaskSpec, path: Path | str) -> None:
    """Compile and trial-render the task's own templates, so a mistake is one line naming
    the task file's line before any model call, not a traceback mid-run.

    Raises:
        TunewiseError: with the file, the line inside the template, and Jinja's message.
    """
    overrides = task_overrides(task)
    if not overrides:
        return
    sample = {"labels": list(task.labels or ["label_a", "label_b"]), "input": "example input",
              "shots": [{"input": "shot input", "output": "shot output"}],
              "passages": [{"id": "1", "text": "passage text"}], "row_system": False}
    for name, source in overrides.items():
        try:
            _compile(source).render(task=task, **sample)
        except jinja2.TemplateError as exc:
            first = _first_line(task, name)
            inner = _template_line(exc)
            line = first + inner - 1 if first and inner else first
            what = "syntax error" if isinstance(exc, jinja2.TemplateSyntaxError) else "error"
            hint = ""
            if isinstance(exc, jinja2.UndefinedError):
                hint = f" (templates see {', '.join(VARIABLES)})"
            raise TunewiseError(f"template {what}: {exc.message}{hint}", path=path, line=line,
                                field=f"prompts.{name}") from None


def _first_line(task: TaskSpec, name: str) -> int | None:
    """Task-file line of the template's first line: the line after ``key: |`` for a block
    scalar, else the key's own line."""
    line = task.line_of(f"prompts.{name}")
    node = task._yaml
    for key in ("prompts", name):
        node = next((v for k, v in getattr(node, "value", []) if k.value == key), None)
        if node is None:
            return line
    if getattr(node, "style", None) in ("|", ">"):
        return node.start_mark.line + 2
    return node.start_mark.line + 1


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
