"""User text on the terminal: printed literally, never as Rich markup or escape sequences.

Task names, labels, inputs, model names and file paths come from the user's files. Rich
reads ``[...]`` in a string as markup (``[/bold]`` with nothing open is a MarkupError, and
``[red]`` would restyle the line), and a terminal obeys ANSI/OSC escape sequences (clear the
screen, retitle the window, fake a hyperlink). Every CLI output passes user text through
:func:`safe` (Rich markup contexts) or :func:`printable` (plain text).
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls except tab and newline, DEL, C1 controls (0x9b is a one-byte CSI), and the
# bidirectional overrides that reorder what is shown ("Trojan Source").
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any) -> str:
    r"""``text`` with control characters shown as escapes (ESC becomes ``\x1b``).

    Tabs and newlines stay: they cannot take over the terminal, and prompts need them.
    """
    return _INVISIBLE.sub(_shown, str(text))


def json_text(data: Any) -> str:
    """``data`` as indented JSON that keeps non-ASCII text readable (``ensure_ascii=False``)
    yet shows the control characters JSON leaves raw (DEL, C1, bidi overrides) as ``\\u``
    escapes, so the output stays valid JSON and harmless on a terminal."""
    import json

    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                          json.dumps(data, indent=2, ensure_ascii=False))


def safe(text: Any) -> str:
    """``text`` ready for a Rich markup string: escapes shown, ``[`` escaped.

    Trailing backslashes need care: Rich reads backslashes as escapes only before a tag, so
    ``rich.markup.escape`` doubles a trailing one, which then shows doubled at the end of a
    cell (Textualize/rich#2993). Here they are doubled and followed by an empty ``[none]``
    tag, which reads the same whatever the caller puts after the text.
    """
    from rich.markup import escape

    shown = printable(text)
    body = shown.rstrip("\\")
    trailing = len(shown) - len(body)
    return escape(body) + ("\\" * (2 * trailing) + "[none][/none]" if trailing else "")
