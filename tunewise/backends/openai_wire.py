"""The OpenAI-compatible wire format, without I/O: grammars sent, answers read, keys checked.

Each reader raises ``ValueError`` (or :class:`TunewiseError` for the user's own settings)
with a short reason, so the backend can name the server that sent a malformed answer in
one line; none of them touches the network, so each is tested alone.
"""

from __future__ import annotations

import difflib
import email.utils
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx

from tunewise.backends.base import Messages
from tunewise.errors import TunewiseError, redact


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def parse_label(text: str, choices: list[str]) -> int | None:
    """Index of the label a generated answer names, or None when it names none.

    Exact match (ignoring case and punctuation, so ``Add to playlist`` is
    ``add_to_playlist``), else the longest label appearing as whole words in the answer,
    else the closest label by string similarity (difflib, ratio >= 0.6).
    """
    answer = _norm(text)
    if not answer:
        return None
    normed = [_norm(c) for c in choices]
    for i, c in enumerate(normed):
        if c == answer:
            return i
    padded = f" {answer} "
    found = [(len(c), -padded.index(f" {c} "), i) for i, c in enumerate(normed)
             if c and f" {c} " in padded]
    if found:
        return max(found)[2]
    close = difflib.get_close_matches(answer, [c for c in normed if c], n=1, cutoff=0.6)
    return normed.index(close[0]) if close else None


def choice_grammar(choices: list[str]) -> str:
    """A GBNF grammar (llama.cpp) whose only sentences are the given choices."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def token_grammar(ids: list[int]) -> str:
    """A GBNF grammar (llama.cpp token syntax) whose only sentence is these token ids."""
    return "root ::= " + " ".join(f"<[{int(i)}]>" for i in ids)


def span_logprob(logprobs: list[float | None], n_choice: int, n_generated: int) -> float:
    """Sum of the log-probs of the choice's tokens in an echoed prompt + choice + generation.

    Counted from the end, not by character offsets: servers disagree on offsets around
    special tokens (llama-cpp-python measures them on text without the chat markers).
    """
    end = len(logprobs) - n_generated
    if n_choice < 1 or end - n_choice < 1:
        raise ValueError(f"{len(logprobs)} echoed tokens cannot hold a {n_choice}-token choice")
    return float(sum(lp for lp in logprobs[end - n_choice : end] if lp is not None))


def readable(prompt: Messages) -> str:
    """Chat messages as plain text, for servers whose chat template is unknown."""
    return "".join(f"[{m['role']}]\n{m['content']}\n\n" for m in prompt) + "[assistant]\n"


def message_text(data: dict[str, Any]) -> str:
    try:
        return (data["choices"][0]["message"].get("content") or "").strip()
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError("no choices[0].message in the answer") from None


def forced_logprobs(data: Any, n: int) -> list[float]:
    """The ``n`` token log-probs of a token-grammar completion; ValueError when the answer
    does not hold exactly ``n`` of them (the server ignored the grammar or gave none)."""
    try:
        lps = data["choices"][0]["logprobs"]["token_logprobs"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"no log-probs ({exc}); is this a llama.cpp server?") from None
    if not isinstance(lps, list) or len(lps) != n or any(x is None for x in lps):
        got = len(lps) if isinstance(lps, list) else 0
        raise ValueError(f"{got} log-probs for {n} grammar-forced tokens; the server ignored "
                         "the token grammar (use score_method constrained)")
    return [float(x) for x in lps]


def http_detail(resp: httpx.Response) -> str:
    """The server's own words on a refused request, on one short line (': ...')."""
    try:
        data = resp.json()
        error = data.get("error", data) if isinstance(data, dict) else data
        text = str(error.get("message", error) if isinstance(error, dict) else error)
    except ValueError:
        text = resp.text
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""


def usage_count(data: dict[str, Any], key: str) -> int | None:
    """A token count from the answer's ``usage``; None when the server gives none.

    ValueError when ``usage`` is there but is not an object of whole non-negative counts,
    so a broken server is named instead of failing deep inside (or counting nonsense).
    """
    usage = data.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise ValueError(f"'usage' is {type(usage).__name__}, not an object")
    value = usage.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            or value != int(value)):
        raise ValueError(f"usage.{key} is {repr(value)[:40]}, not a token count")
    return int(value)


def check_api_key(name: str, key: str) -> None:
    """Refuse a key that no server would accept, saying why without showing the key.

    A newline kept from a file (``KEY=$(cat key.txt)`` keeps none, ``read`` or an editor's
    ``.env`` may) or a typographic quote pasted with the key would otherwise surface as a
    401 or as a header encoding error far from its cause.
    """
    where = f"environment variable {name}"
    if key.endswith(("\n", "\r")):
        raise TunewiseError(f"{where} ends with a newline; export the key without it",
                            field="backend.api_key_env")
    if key != key.strip():
        raise TunewiseError(f"{where} has spaces before or after the key; export it without "
                            "them", field="backend.api_key_env")
    for i, ch in enumerate(key, 1):
        if not ch.isascii():
            raise TunewiseError(f"{where} holds a non-ASCII character (U+{ord(ch):04X} at "
                                f"position {i}: a pasted quote or dash?); API keys are ASCII",
                                field="backend.api_key_env")
        if not ch.isprintable() or ch.isspace():
            raise TunewiseError(f"{where} holds a space or control character at position {i}; "
                                "API keys have none", field="backend.api_key_env")


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """Apply stop strings client-side too: some servers ignore ``stop``."""
    for s in stop or []:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def read_answer(read: Callable[[dict[str, Any]], Any], data: dict[str, Any], url: str) -> Any:
    """``read(data)``, with a reader's ``ValueError`` as one line naming the server.

    Raises:
        TunewiseError: the answer from ``url`` lacks what ``read`` looks for.
    """
    try:
        return read(data)
    except ValueError as exc:
        raise TunewiseError(redact(f"{url}: unexpected answer: {exc}"), field="backend") from None
