"""Build preference pairs from the E2E records: rejected = the record with one field altered.

    python examples/dpo/make_pairs.py [../shared/data/e2e_records.jsonl] \
        [examples/dpo/e2e_pairs.jsonl]

The rule, for every row (sentence -> record "key: value, key: value, ..."):
1. pick a field by a hash of the sentence (stable across runs), among the fields whose key
   takes more than one value in the whole file;
2. replace its value with the next value of that key, in sorted order of the distinct
   values the file holds (wrapping around), so the rejected record is well formed and
   plausible but says one thing the sentence does not.
The chosen answer is the true record. The pairs teach faithfulness to the sentence, not a
format: the rejected answer has the same format as the chosen one.

Source: E2E NLG Challenge data (CC BY-SA 4.0), via BIG-bench (see ../shared/data/README.md).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(record: str) -> list[tuple[str, str]]:
    """``name: X, eatType: Y`` -> [("name", "X"), ("eatType", "Y")]."""
    return [(k.strip(), v.strip()) for k, v in
            (part.split(":", 1) for part in record.split(", ") if ":" in part)]


def render(fields: list[tuple[str, str]]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in fields)


def alter(sentence: str, record: str, values: dict[str, list[str]]) -> tuple[str, str]:
    """The record with one field's value replaced (see the module docstring); and its key."""
    fields = parse(record)
    options = [i for i, (k, _) in enumerate(fields) if len(values.get(k, [])) > 1]
    if not options:
        raise ValueError(f"no field of {record!r} can be altered")
    pick = options[int(hashlib.sha256(sentence.encode()).hexdigest(), 16) % len(options)]
    key, value = fields[pick]
    choices = values[key]
    new = choices[(choices.index(value) + 1) % len(choices)]
    fields[pick] = (key, new)
    return render(fields), key


def make_pairs(rows: list[dict]) -> list[dict]:
    """Every row with a ``rejected`` record and the ``altered`` key."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for k, v in parse(row["output"]):
            values.setdefault(k, set()).add(v)
    ordered = {k: sorted(v) for k, v in values.items()}
    out = []
    for row in rows:
        rejected, key = alter(row["input"], row["output"], ordered)
        out.append({"input": row["input"], "output": row["output"], "rejected": rejected,
                    "altered": key})
    return out


def main(src: str, dest: str) -> None:
    rows = [json.loads(x) for x in Path(src).read_text(encoding="utf-8").splitlines() if x]
    pairs = make_pairs(rows)
    Path(dest).write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    print(f"{len(pairs)} pairs -> {dest}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else str(HERE.parents[2] / "shared" / "data" / "e2e_records.jsonl"),
         args[1] if len(args) > 1 else str(HERE / "e2e_pairs.jsonl"))
