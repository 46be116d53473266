"""Reading labelled examples and documents, the deterministic split, and data checks.

Every read error names the file and line, because the first thing a user does with a new
tool is point it at a slightly broken export.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.files import read_utf8
from tunewise.plugins import rungs_with
from tunewise.task import TaskSpec
from tunewise.text import (
    MAX_DEPTH,
    SURROGATE,
    canonical_number,
    check_value,
    is_blank,
    label_text,
    surrogate_in,
)

MIN_EXAMPLES_FINE_TUNE = 100
WARN_EXAMPLES_FINE_TUNE = 200


@dataclass(frozen=True)
class Example:
    """One labelled example; ``extra`` keeps the row's other fields (e.g. ``source_id``)."""

    id: str
    input: str
    output: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """One corpus document."""

    id: str
    text: str
    extra: dict[str, Any] = field(default_factory=dict)


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL or CSV file with their 1-based line numbers.

    Raises:
        TunewiseError: missing or unreadable file, non-UTF-8 bytes, a line that is not a JSON
            object (or repeats a key), a CSV header that repeats a column, a file in another
            format than its name says (``;``/tab-separated CSV, one JSON array), values
            nested too deep or holding a lone surrogate.
    """
    path = Path(path)
    text = read_utf8(path, missing="file not found", folder="is a folder, not a JSONL or CSV "
                     "file", encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        return _csv_rows(text, path)
    if text.lstrip().startswith("["):
        raise TunewiseError(
            "this is one JSON array, but tunewise reads JSON Lines (one JSON object per "
            "line); convert it, e.g. jq -c '.[]' FILE > data.jsonl", path=path, line=1)
    rows: list[tuple[int, dict[str, Any]]] = []
    # Split on "\n" only: splitlines() also breaks at U+2028 and friends, which JSON
    # strings may contain unescaped (CoQA stories do).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        obj = _json_line(line, path, number, first=not rows)
        if not isinstance(obj, dict):
            raise TunewiseError("each line must be a JSON object", path=path, line=number)
        rows.append((number, obj))
    return rows


class _DuplicateKey(ValueError):
    """A JSON object gave one key twice (json keeps the last one silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (numbers must be finite)")


def _json_line(line: str, path: Path, number: int, first: bool) -> Any:
    """One JSONL line parsed strictly: no repeated keys, no NaN/Infinity, bounded depth,
    no lone surrogates; every problem is a one-line error naming the line."""
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys,
                         parse_constant=_not_json_constant)
    except json.JSONDecodeError as exc:
        # json's messages end in "at" when they point at where something began.
        at = "" if exc.msg.endswith(" at") else " at"
        hint = ""
        if first and not line.lstrip().startswith("{") and line.count(",") >= 1:
            hint = " (this looks like CSV: name the file .csv)"
        raise TunewiseError(f"not valid JSON: {exc.msg}{at} column {exc.colno}{hint}",
                            path=path, line=number) from None
    except _DuplicateKey as exc:
        raise TunewiseError(f"key '{exc.args[0]}' given twice in one object (the second "
                            "would silently win)", path=path, line=number) from None
    except RecursionError:
        raise TunewiseError(f"the value is nested more than {MAX_DEPTH} levels deep",
                            path=path, line=number) from None
    except ValueError as exc:
        raise TunewiseError(f"not valid JSON: {exc}", path=path, line=number) from None
    for key, value in obj.items() if isinstance(obj, dict) else [(None, obj)]:
        problem = check_value(value)
        if problem or (key is not None and surrogate_in(key)):
            raise TunewiseError(f"the value {problem or 'names a key that ' + SURROGATE}",
                                path=path, line=number, field=key and ascii(key)[1:-1])
    return obj


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a comma-separated file; a field may be as large as the file (corpus
    documents over csv's default 128 KiB limit are ordinary)."""
    csv.field_size_limit(max(csv.field_size_limit(), min(len(text) + 1, 2**31 - 1)))
    if text.lstrip().startswith(("{", "[")):
        raise TunewiseError("this looks like JSON, not CSV: name the file .jsonl", path=path,
                            line=1)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames
    if not header:
        raise TunewiseError("CSV file has no header row", path=path, line=1)
    if len(header) == 1:
        for sep, name in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header[0]:
                raise TunewiseError(
                    f"the header's columns are separated by {name}, but tunewise reads "
                    "comma-separated CSV; export it with commas", path=path, line=1)
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise TunewiseError(f"column '{column}' appears twice in the header", path=path,
                                line=1, field=column)
        seen.add(column)
    rows: list[tuple[int, dict[str, Any]]] = []
    for row in reader:
        if None in row:
            raise TunewiseError("more values than header columns", path=path,
                                line=reader.line_num)
        rows.append((reader.line_num, dict(row)))
    return rows


def _text_field(row: dict[str, Any], name: str, path: Path, line: int) -> str:
    if name not in row or row[name] is None:
        raise TunewiseError(f"field '{name}' is missing", path=path, line=line, field=name)
    value = row[name]
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = canonical_number(value)
    value = str(value)
    if is_blank(value):
        raise TunewiseError(f"field '{name}' is empty" + (
            " (only invisible characters)" if value.strip() else ""),
            path=path, line=line, field=name)
    return value


def _claim_id(seen: dict[str, int], value: str, what: str, path: Path, line: int,
              field: str | None) -> None:
    """Record that ``value`` is used on ``line``; a second use is an error naming both lines."""
    if value in seen:
        raise TunewiseError(f"duplicate {what} '{value}' (first on line {seen[value]})",
                            path=path, line=line, field=field)
    seen[value] = line


def load_examples(task: TaskSpec) -> list[Example]:
    """The task's labelled examples, validated row by row."""
    spec = task.data
    rows = read_rows(spec.path)
    if not rows:
        raise TunewiseError("no examples in the data file", path=spec.path)
    examples: list[Example] = []
    seen_ids: dict[str, int] = {}
    for line, row in rows:
        inp = _text_field(row, spec.input, spec.path, line)
        out = label_text(_text_field(row, spec.output, spec.path, line))
        if spec.rejected and (row.get(spec.rejected) is None
                              or is_blank(str(row[spec.rejected]))):
            raise TunewiseError(f"field '{spec.rejected}' is missing or empty: every row needs "
                                "a rejected answer for the dpo rung (data.rejected)",
                                path=spec.path, line=line, field=spec.rejected)
        if spec.system and spec.system not in row:
            raise TunewiseError(f"field '{spec.system}' (data.system) is missing", path=spec.path,
                                line=line, field=spec.system)
        ex_id = (_text_field(row, spec.id, spec.path, line)
                 if spec.id and row.get(spec.id) is not None else f"L{line}")
        _claim_id(seen_ids, ex_id, "id", spec.path, line, spec.id)
        extra = {k: v for k, v in row.items() if k not in (spec.input, spec.output)}
        examples.append(Example(ex_id, inp, out, extra))
    if task.kind == "classification" and task.labels:
        allowed = set(task.labels)
        for (line, _), ex in zip(rows, examples, strict=True):
            label = ex.output
            if label not in allowed:
                raise TunewiseError(
                    f"label '{label}' is not in the task's labels",
                    path=spec.path,
                    line=line,
                    field=spec.output,
                )
    return examples


def load_corpus(task: TaskSpec) -> list[Document]:
    """The task's documents; empty documents and an empty corpus are errors."""
    if task.corpus is None:
        return []
    spec = task.corpus
    rows = read_rows(spec.path)
    if not rows:
        raise TunewiseError("the corpus has no documents", path=spec.path)
    docs: list[Document] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        doc_id = _text_field(row, spec.id, spec.path, line)
        text = _text_field(row, spec.text, spec.path, line)
        _claim_id(seen, doc_id, "document id", spec.path, line, spec.id)
        extra = {k: v for k, v in row.items() if k not in (spec.id, spec.text)}
        docs.append(Document(doc_id, text, extra))
    return docs


def normalise(text: str) -> str:
    """Text folded for near-duplicate detection: case, accents, punctuation, spacing."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


@dataclass
class Split:
    """A deterministic train/dev/test partition of the examples."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]

    def ids(self) -> dict[str, list[str]]:
        """Example ids per part, saved with the run so the split can be reproduced."""
        return {part: [e.id for e in getattr(self, part)] for part in ("train", "dev", "test")}

    def fingerprint(self) -> str:
        """Hash of the split's ids: two runs with the same split share it."""
        return hashlib.sha256(json.dumps(self.ids()).encode()).hexdigest()[:16]


def make_split(examples: list[Example], task: TaskSpec) -> Split:
    """Shuffle with the task's seed, then take test, dev, and the rest as train.

    Raises:
        TunewiseError: the requested test + dev sizes leave fewer than one training example.
    """
    n_test, n_dev = task.split.test, task.split.dev
    if n_test + n_dev >= len(examples):
        raise TunewiseError(
            f"split asks for test={n_test} + dev={n_dev} but the data has only "
            f"{len(examples)} examples (at least one must remain for training)",
            path=task.source,
            line=task.line_of("split.test") or task.line_of("split"),
            field="split",
        )
    rng = np.random.default_rng(task.split.seed)
    if task.split.group_by:
        return _group_split(examples, task, rng)
    order = rng.permutation(len(examples))
    shuffled = [examples[i] for i in order]
    return Split(
        test=shuffled[:n_test],
        dev=shuffled[n_test : n_test + n_dev],
        train=shuffled[n_test + n_dev :][: task.split.train],
    )


def group_value(ex: Example, name: str) -> Any:
    """The value ``split.group_by`` groups on: the input, the output or another column."""
    if name in ("input", "output"):
        return getattr(ex, name)
    return ex.extra.get(name)


def _group_split(examples: list[Example], task: TaskSpec, rng: np.random.Generator) -> Split:
    """Whole groups, in a seeded random order, fill test, then dev; the rest is train."""
    name = task.split.group_by or ""
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        value = group_value(ex, name)
        if value is None:
            raise TunewiseError(
                f"example {ex.id} has no field '{name}' to group the split by",
                path=task.source, line=task.line_of("split.group_by"), field="split.group_by")
        groups.setdefault(json.dumps(value, sort_keys=True, default=str), []).append(ex)
    keys = sorted(groups)
    parts: dict[str, list[Example]] = {"test": [], "dev": [], "train": []}
    for i in rng.permutation(len(keys)):
        part = ("test" if len(parts["test"]) < task.split.test else
                "dev" if len(parts["dev"]) < task.split.dev else "train")
        parts[part].extend(groups[keys[i]])
    if not parts["train"]:
        raise TunewiseError(
            f"grouping by '{name}' leaves no training examples ({len(groups)} groups for "
            f"test={task.split.test} + dev={task.split.dev}); lower split.test or split.dev",
            path=task.source, line=task.line_of("split.group_by"), field="split.group_by")
    parts["train"] = parts["train"][: task.split.train]
    return Split(**parts)


@dataclass
class DataReport:
    """Findings shown before anything runs; ``problems`` are worth stopping for."""

    n_examples: int
    sizes: dict[str, int]
    duplicate_inputs: int
    leakage_exact: int
    leakage_normalised: int
    label_counts: dict[str, int]
    unseen_test_labels: list[str]
    notes: list[str]
    rung_blocks: dict[str, str]
    # Gold answer lengths in tokens of the run's model (training split; generated kinds):
    # set by the ladder, which has the tokenizer (see ``ladder.resolve_max_tokens``).
    answer_tokens: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for result.json."""
        return asdict(self)


def check_data(examples: list[Example], split: Split, task: TaskSpec) -> DataReport:
    """Duplicates, train/test leakage, label balance and size limits of each rung."""
    counts = Counter(normalise(e.input) for e in examples)
    dupes = sum(c - 1 for c in counts.values() if c > 1)
    train_exact = {e.input.strip() for e in split.train + split.dev}
    train_norm = {normalise(e.input) for e in split.train + split.dev}
    leak_exact = sum(e.input.strip() in train_exact for e in split.test)
    leak_norm = sum(normalise(e.input) in train_norm for e in split.test)
    labels: Counter[str] = Counter()
    unseen: list[str] = []
    notes: list[str] = []
    if task.kind == "classification":
        labels = Counter(e.output for e in examples)
        train_labels = {e.output for e in split.train}
        unseen = sorted({e.output for e in split.test} - train_labels)
        if labels:
            most, least = max(labels.values()), min(labels.values())
            if least and most / least > 3:
                notes.append(
                    f"labels are imbalanced: the most common has {most} examples, "
                    f"the rarest {least}; accuracy may flatter a majority-class guess"
                )
        if unseen:
            notes.append(f"test labels never seen in train: {', '.join(unseen)}")
    if dupes:
        notes.append(f"{dupes} examples repeat another example's input (after normalising)")
    if task.kind != "classification" and not task.split.group_by:
        note = repeated_answers_note(examples, split, task)
        if note:
            notes.append(note)
    if leak_norm:
        notes.append(
            f"leakage: {leak_norm} of {len(split.test)} test inputs also occur in train/dev "
            f"({leak_exact} exactly); scores will be optimistic"
        )
    blocks: dict[str, str] = {}
    n_train = len(split.train)
    min_ft, warn_ft = task.decision.min_examples, task.decision.warn_examples
    if n_train < min_ft:
        reason = (
            f"only {n_train} training examples; fine-tuning needs at least "
            f"{min_ft} and is not offered (collect more, keep prompting)"
        )
        blocks.update(dict.fromkeys(rungs_with("train_examples"), reason))
    elif n_train < warn_ft:
        notes.append(
            f"{n_train} training examples: enough to try fine-tuning, but results under "
            f"{warn_ft} examples are fragile"
        )
    if task.corpus is None:
        blocks.update(dict.fromkeys(rungs_with("corpus"), "the task has no corpus"))
    return DataReport(
        n_examples=len(examples),
        sizes={"train": n_train, "dev": len(split.dev), "test": len(split.test)},
        duplicate_inputs=dupes,
        leakage_exact=leak_exact,
        leakage_normalised=leak_norm,
        label_counts=dict(sorted(labels.items())),
        unseen_test_labels=unseen,
        notes=notes,
        rung_blocks=blocks,
    )


CLOSED_SET = 2.0  # examples per distinct answer at which short answers form a closed set
LABEL_WORDS = 8  # answers this short (median, in words) and unstructured read as labels
COPY_SHARE = 0.2  # share of test answers seen in train that is worth a note


def repeated_answers_note(examples: list[Example], split: Split, task: TaskSpec) -> str | None:
    """Advice about test answers that also occur as training answers, fitted to the task.

    - A closed answer set (short, unstructured answers, each given by ``CLOSED_SET`` or
      more examples on average: occupation titles, yes/no) is a label set: repeated answers
      are the point, so ``split.group_by`` is never advised; the note says the task
      behaves like classification.
    - Otherwise (records, sentences), when many *distinct* test answers also occur in
      train, nearest-neighbour shots can copy them: ``split.group_by: output`` scores only
      new ones. It is advised only when the task runs few_shot_knn.
    """
    from tunewise.answers import structure_of

    outputs = Counter(e.output.strip() for e in examples)
    if not outputs or not split.test:
        return None
    seen = {e.output.strip() for e in split.train}
    copied = [e.output.strip() for e in split.test if e.output.strip() in seen]
    if len(copied) < COPY_SHARE * len(split.test):
        return None
    per_answer = len(examples) / len(outputs)
    words = sorted(len(o.split()) for o in outputs)
    labels_like = (words[len(words) // 2] <= LABEL_WORDS
                   and not any(structure_of(o) for o in list(outputs)[:50]))
    if per_answer >= CLOSED_SET and labels_like:
        return (f"answers form a closed set ({len(outputs)} distinct answers for "
                f"{len(examples)} examples, {per_answer:.1f} each): {len(copied)} of "
                f"{len(split.test)} test answers also occur in train, as they should; if every "
                "answer is one of a fixed list, kind: classification with labels scores it by "
                "label")
    distinct = len(set(copied))
    knn = task.rungs is None or "few_shot_knn" in task.rungs
    if distinct * 2 < len(copied) or not knn:  # a few frequent answers, or no copying rung
        return None
    return (f"{len(copied)} of {len(split.test)} test answers also occur as training answers "
            f"({distinct} distinct): few_shot_knn's nearest-neighbour shots can copy them; set "
            "split.group_by: output to score only answers the model has not been shown")


def require_seen_labels(report: DataReport, task: TaskSpec) -> None:
    """Stop a run whose test split has a label no training example carries.

    Such a label is usually a typo ("Cardiology" next to "cardiology") or a class too rare
    for the split; few-shot and fine-tuned rungs cannot learn it, so every comparison on it
    measures the split rather than the rung. ``tunewise run --allow-unseen-labels`` scores
    anyway (the data check still notes it).

    Raises:
        TunewiseError: naming the first unseen label and how to fix it.
    """
    if not report.unseen_test_labels:
        return
    label = report.unseen_test_labels[0]
    more = len(report.unseen_test_labels) - 1
    others = f" (and {more} more)" if more else ""
    raise TunewiseError(
        f"label '{label}'{others} is in the test split but in no training example; fix the "
        "label, add training examples, change split.seed, or pass --allow-unseen-labels",
        path=task.data.path, field=task.data.output,
    )


def task_labels(task: TaskSpec, examples: list[Example]) -> list[str]:
    """The label set: declared in the task, else every label seen in the data, sorted."""
    if task.labels:
        return list(task.labels)
    return sorted({e.output for e in examples})
