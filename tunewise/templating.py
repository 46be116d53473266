"""The Jinja engine behind prompt templates: compiling, the packaged sources, and checking a
user's template so a mistake is one line naming its line in the file.

A leaf module (it knows no schema): the task schema checks its own ``prompts:`` through
it when a task loads, and :mod:`tunewise.prompts` renders through it, so neither of those
two depends on the other the wrong way.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import Environment, StrictUndefined

from tunewise.errors import TunewiseError

VARIABLES = ("task", "labels", "input", "shots", "passages", "row_system")
"""What every template sees (the built-ins and a task's own ``prompts:``)."""
_ENV = Environment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@cache
def compile_template(source: str) -> jinja2.Template:
    """The compiled template of ``source`` (compiled once per distinct source)."""
    return _ENV.from_string(source)


@cache
def builtin_sources() -> dict[str, str]:
    """The template sources of the packaged ``prompts.yaml``, by name."""
    text = resources.files("tunewise").joinpath("prompts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _template_line(exc: BaseException) -> int | None:
    """The template line a Jinja error points at (syntax errors carry it; render errors
    have it in the traceback frame Jinja maps back to ``<template>``)."""
    line = getattr(exc, "lineno", None)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == "<template>":
            line = lineno
    return line


def check_templates(sources: Mapping[str, str], values: Mapping[str, Any], path: Path | str,
                    first_line: Callable[[str], int | None]) -> None:
    """Compile and trial-render each of a file's templates with sample ``values``.

    Args:
        sources: template source by name (the names under ``prompts:``).
        values: what the templates see (every name of :data:`VARIABLES`).
        path: the file the templates come from (named in the error).
        first_line: the file line of a template's first line, by name.

    Raises:
        TunewiseError: with the file, the line inside the template, and Jinja's message.
    """
    for name, source in sources.items():
        try:
            compile_template(source).render(**values)
        except jinja2.TemplateError as exc:
            first = first_line(name)
            inner = _template_line(exc)
            line = first + inner - 1 if first and inner else first
            what = "syntax error" if isinstance(exc, jinja2.TemplateSyntaxError) else "error"
            hint = ""
            if isinstance(exc, jinja2.UndefinedError):
                hint = f" (templates see {', '.join(VARIABLES)})"
            raise TunewiseError(f"template {what}: {exc.message}{hint}", path=path, line=line,
                                field=f"prompts.{name}") from None
