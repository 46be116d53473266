"""Reading what a model wrote: code fences, prose around an answer, JSON and ``key: value``
records, and the format check.

Models wrap answers: a JSON object inside a ```` ```json ```` fence, a record after "Here is
the record:", a short answer followed by an explanation. Scoring the raw text would mark
all of these wrong for their wrapping, not their content (issue 14: a fenced reply was
scored as "```json"). Every metric in :mod:`tunewise.evaluate` reads answers through
:func:`answer_text` and :func:`parse_structured`, so every rung is read the same way.

The rules are general, never tuned to one data set:

- a fenced block (```` ``` ```` with an optional language tag) is the answer; text around
  it is prose;
- when the gold answer is a single line, the answer is the first non-empty line that is not
  an introduction ending in a colon (a short answer followed by an explanation);
- a JSON object anywhere in the answer is the answer when the gold answer is one;
- a record is a set of ``key: value`` pairs separated by commas or new lines.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_FENCE = re.compile(r"```[A-Za-z0-9_+.-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
# A record key: a short name (letters, digits, spaces, dots, dashes), not a sentence.
_KEY = r"[A-Za-z_][\w .\-/]{0,39}"
_PAIR_SPLIT = re.compile(rf",\s*(?={_KEY}:)|\n|;\s*(?={_KEY}:)")
_PAIR = re.compile(rf"^\s*[\"']?({_KEY})[\"']?\s*:\s*(.+?)\s*$", re.S)
_DECODER = json.JSONDecoder()


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def strip_fences(text: str) -> str:
    """The content of the first code fence in ``text``, or ``text`` itself, stripped.

    An unclosed fence (the model hit its token cap inside it) keeps everything after it.
    """
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if not line.endswith(":"):  # "Here is the answer:" introduces, it does not answer
            return line
    return lines[0] if lines else ""


def answer_text(pred: str, gold: str) -> str:
    """The part of ``pred`` that answers, at the shape of ``gold``.

    Fences are removed; a single-line gold is compared with the first answering line of the
    prediction (what follows is explanation), a multi-line gold with the whole answer.
    """
    text = strip_fences(pred)
    if text.startswith(("{", "[")):  # a JSON value spans lines; it is read whole
        return text
    if len(gold.strip().splitlines()) <= 1:
        return _first_line(text)
    return text


def _json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (prose around it is ignored), or None."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested objects become dotted keys; values become canonical text."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{str(key).strip().lower()}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = canonical_value(value)
    return out


def canonical_value(value: Any) -> str:
    """A field's value as comparable text: case-folded, single-spaced; numbers and strings
    that spell the same number compare equal ("1" and 1); lists keep their order."""
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return format(value, "g") if isinstance(value, float) else str(value)
    if isinstance(value, list):
        return json.dumps([canonical_value(v) for v in value], ensure_ascii=False)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def parse_record(text: str) -> dict[str, str]:
    """``key: value`` pairs (comma-, semicolon- or line-separated) into a dict.

    Keys are lower-cased, values canonical (see :func:`canonical_value`). Lines that are
    not pairs (prose, an introduction ending in a colon) are skipped.
    """
    fields: dict[str, str] = {}
    for part in _PAIR_SPLIT.split(strip_fences(text)):
        match = _PAIR.match(part)
        if match:
            key = match.group(1).strip().lower()
            value = match.group(2).strip().strip("\"'").rstrip(",").strip()
            if value:
                fields[key] = canonical_value(value)
    return fields


def parse_json(text: str) -> dict[str, str] | None:
    """The first JSON object in ``text`` (fenced or not), flattened; None when there is none."""
    obj = _json_object(strip_fences(text))
    if obj is None and "```" in text:
        obj = _json_object(text)
    return None if obj is None else _flatten(obj)


def structure_of(gold: str) -> str | None:
    """"json" when the gold answer is a JSON object, "record" when it is ``key: value``
    pairs, else None (plain text)."""
    text = gold.strip()
    if text.startswith("{") and _json_object(text) is not None:
        return "json"
    fields = parse_record(text)
    # One pair is a record only when it is all of the text (not "at 3:30 pm").
    if len(fields) >= 2 or (fields and ":" in text and len(text.split(":")[0].split()) <= 3):
        return "record"
    return None


def parse_structured(text: str, shape: str | None) -> dict[str, str] | None:
    """``text`` parsed as ``shape`` ("json" or "record"); None when it does not parse."""
    if shape == "json":
        return parse_json(text)
    if shape == "record":
        return parse_record(text) or parse_json(text) or None
    return None


def canonical(fields: Mapping[str, str]) -> str:
    """One string per record: sorted keys and canonical values (exact match compares it)."""
    return json.dumps(dict(sorted(fields.items())), ensure_ascii=False, separators=(",", ":"))


def pair_f1(pred: Mapping[str, str], gold: Mapping[str, str]) -> float:
    """F1 over (key, value) pairs: partial credit per key."""
    p, g = set(pred.items()), set(gold.items())
    if not p or not g:
        return float(p == g)
    common = len(p & g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def per_field_accuracy(predictions: Iterable[str], golds: Iterable[str]
                       ) -> dict[str, dict[str, float]]:
    """Per gold key: the share of items whose prediction has the gold value for it.

    Only items whose gold answer is structured count; a prediction that does not parse
    gets every field wrong. Empty when no gold answer is structured.
    """
    hits: dict[str, list[float]] = {}
    for pred, gold in zip(predictions, golds, strict=True):
        shape = structure_of(gold)
        g = parse_structured(gold, shape)
        if not g:
            continue
        p = parse_structured(pred, shape) or {}
        for key, value in g.items():
            hits.setdefault(key, []).append(float(p.get(key) == value))
    return {k: {"value": sum(v) / len(v), "n": len(v)} for k, v in sorted(hits.items())}


def gold_keys(golds: Iterable[str]) -> set[str]:
    """Every key seen in the structured gold answers (what the format check expects)."""
    keys: set[str] = set()
    for gold in golds:
        keys |= set(parse_structured(gold, structure_of(gold)) or {})
    return keys


def format_problem(prediction: str, gold: str, kind: str, text: str = "",
                   known_keys: set[str] | None = None) -> str | None:
    """Why an answer is outside the expected format, or None when its form is fine.

    Structured gold answers (JSON or records) are checked for parse errors, then for keys
    missing against this item's gold and keys outside ``known_keys`` (those of all gold
    answers). Classification never needs this: label scoring only answers with a label.

    Returns:
        A short category, counted per rung by the verdict: "empty", "invalid JSON",
        "unparseable record", "missing keys", "unknown fields", "too long for a short
        answer", "echoes the input".
    """
    pred = strip_fences(prediction)
    if not pred:
        return "empty"
    shape = structure_of(gold)
    if shape is not None:
        fields = parse_structured(pred, shape)
        if not fields:
            return "invalid JSON" if shape == "json" else "unparseable record"
        expected = parse_structured(gold, shape) or {}
        if set(expected) - set(fields):
            return "missing keys"
        if known_keys and set(fields) - known_keys:
            return "unknown fields"
        return None
    if kind == "extraction":
        return None
    if kind == "qa":
        words, gold_words = len(answer_text(pred, gold).split()), len(gold.split())
        return "too long for a short answer" if words > max(12, 3 * gold_words) else None
    if text and normalize_answer(pred) == normalize_answer(text):
        return "echoes the input"
    return None


LENGTH_MARGIN = 1.25  # default cap: p99 of the training answers, plus a quarter...
LENGTH_SLACK = 8  # ...plus a few tokens for a fence or a closing brace


def length_stats(lengths: Iterable[int]) -> dict[str, float]:
    """Percentiles of answer lengths in tokens (the data check reports them)."""
    import numpy as np

    x = np.asarray(list(lengths), dtype=float)
    if not len(x):
        return {}
    return {"n": len(x), "p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max())}


def default_max_tokens(stats: Mapping[str, float]) -> int:
    """A generation cap that lets the training answers finish: p99 plus a margin."""
    return int(stats["p99"] * LENGTH_MARGIN) + LENGTH_SLACK
