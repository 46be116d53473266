"""Rules for user text read from task and data files: what counts as empty, how a JSON
number becomes a label, which strings cannot be stored, and how deep a value may nest.

One module so the task file, the data reader and the corpus reader apply the same rules.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of lists/objects accepted in a task file or a data row. Real tasks
nest a few levels; thousands of levels only exhaust Python's recursion limit later."""

# Characters that draw nothing but are not whitespace to str.isspace(): zero-width
# space/joiners, word joiner, byte-order mark, soft hyphen, and the "filler" letters.
_INVISIBLE = frozenset("\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")
_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE = "holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not text"


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace (NBSP included), format characters
    (zero-width space, joiners, BOM: Unicode category Cf) or filler characters."""
    return all(c.isspace() or c in _INVISIBLE or unicodedata.category(c) == "Cf"
               for c in text)


def canonical_number(value: int | float) -> str:
    """The text of a JSON number as a label: integral numbers as integers, others in
    Python's shortest round-trip form, so ``1``, ``1.0`` and ``1e0`` are one class ("1")
    and ``0.50`` is "0.5"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_text(value: Any) -> str:
    """A label or output value as text: numbers canonical (see :func:`canonical_number`),
    everything else as written; stripped and in Unicode NFC, so a label typed with a
    combining accent equals the same label typed precomposed."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = canonical_number(value)
    return unicodedata.normalize("NFC", str(value).strip())


def surrogate_in(text: str) -> bool:
    """True when ``text`` holds a lone surrogate (from a JSON ``\\ud800`` escape): such a
    string cannot be encoded as UTF-8, so it can be neither stored nor sent to a model."""
    return _SURROGATE.search(text) is not None


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """What is wrong with a parsed JSON/YAML value, or None: nesting deeper than
    ``max_depth``, a lone surrogate in a string or key, or a NaN/infinite number.

    Iterative, so a hostile value cannot exhaust the recursion limit while being checked.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if surrogate_in(item):
                return SURROGATE
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"holds {item}, which is not a number JSON allows"
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                return f"is nested more than {max_depth} levels deep"
            if isinstance(item, dict):
                stack.extend((k, depth + 1) for k in item if isinstance(k, str))
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return None
