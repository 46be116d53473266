"""One error type for everything the user can fix, rendered as a single line.

The CLI catches :class:`TunewiseError` and prints ``str(err)`` on stderr with exit code 2,
so every message must say *where* (file, line, field) and *what* without a traceback.
"""

from __future__ import annotations

import os
import re
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


# ---- secrets ------------------------------------------------------------------------------
# Environment variables whose values are treated as secrets by name, and literal key shapes.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
_SECRET_SHAPES = re.compile(
    r"\bsk-[A-Za-z0-9_\-]{8,}"  # OpenAI-style keys (sk-..., sk-proj-...)
    r"|(?<=Bearer )[A-Za-z0-9_\-.=]{8,}"  # Authorization headers
)
_MIN_SECRET_LEN = 8  # shorter values ("1", "true") would mask ordinary words
_REGISTERED: set[str] = set()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Mask ``value`` from now on, whatever the variable holding it is called.

    Tasks name the variable that holds their API key (``backend.api_key_env``); that name
    need not look secret, so whoever reads the key registers its value here.
    """
    if value and len(value) >= _MIN_SECRET_LEN:
        _REGISTERED.add(value)


def redact(text: str) -> str:
    """``text`` with every known secret replaced by ``***``.

    Known secrets are registered values, values of environment variables whose names look
    secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ...), and anything shaped like an API key
    (``sk-...``, ``Bearer ...``). Applied to every error line and log line the CLI prints, so
    a key that reaches an exception message (a URL, an HTTP error body) is not shown.
    """
    values = set(_REGISTERED)
    values.update(
        v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN
    )
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return _SECRET_SHAPES.sub(MASK, text)
