"""One error type for everything the user can fix, rendered as a single line.

The CLI catches :class:`TunewiseError` and prints ``str(err)`` on stderr with exit code 2,
so every message must say *where* (file, line, field) and *what* without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class TunewiseError(Exception):
    """A problem with the user's input or environment, described in one line."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path:
            where = self.path + (f":{self.line}" if self.line else "") + ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}".replace("\n", " ")


class BudgetExceeded(TunewiseError):
    """The run would spend more calls or dollars than the task's budget allows."""
