"""The price table: the bundled ``prices.yaml`` and a user's own file over it.

Below the task schema (it reads raw entries, which :mod:`tunewise.cost` validates and
resolves), so loading a task can check its price names without depending on the cost
model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.files import read_utf8
from tunewise.yamlfile import read_yaml


def _read_table(path: Path | None) -> tuple[str, dict[str, Any]]:
    """(as_of, raw entries) of the bundled table, or of a user file (read with the task
    file's guards: unreadable files, hostile YAML and syntax errors are one line)."""
    if path is None:
        text = resources.files("tunewise").joinpath("prices.yaml").read_text(encoding="utf-8")
        where: str | Path = "prices.yaml"
    else:
        try:
            text = read_utf8(path, missing="price file not found",
                             folder="is a folder, not a price file")
        except TunewiseError as exc:
            exc.field = "cost.prices_file"
            raise
        where = path
    raw = read_yaml(text, where)[0] or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), dict):
        raise TunewiseError("a price file needs an 'entries:' mapping of name -> prices",
                            path=where)
    return str(raw.get("as_of", "unknown date")), raw["entries"]


def price_table(user_file: Path | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Entry name -> (as_of, raw fields); a user file adds entries or replaces same names."""
    as_of, entries = _read_table(None)
    table = {name: (as_of, fields) for name, fields in entries.items()}
    if user_file is not None:
        user_as_of, user_entries = _read_table(Path(user_file))
        table.update({name: (user_as_of, f) for name, f in user_entries.items()})
    return table
