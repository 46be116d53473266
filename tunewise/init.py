"""`tunewise init DATA_FILE`: a first task.yaml written from the data, with the data checks.

Detection follows general rules, never particular data sets:

- **format**: the file's extension (``.csv``) or, for any other name, its first character
  (``{`` starts JSON Lines, anything else is read as CSV);
- **columns**: conventional names first (``input``/``text``/``question``...,
  ``output``/``label``/``answer``...), else the longest text column as input and the
  column with the fewest distinct values as output; id-like columns are never chosen;
- **kind**: classification when the outputs repeat from a small set (at most
  :data:`MAX_LABELS` distinct values, each seen :data:`MIN_PER_LABEL` times on average),
  extraction when they are ``field: value`` records or JSON objects, qa when most inputs
  are questions, else generation;
- **corpus**: a file of documents only (an id and a text) is a corpus, not examples: its
  labelled examples are looked for next to it (a file with a column holding its ids).

The YAML is rendered from the task schema itself (every section, every default, each
field's description as its comment), so it cannot drift from what ``tunewise run`` accepts,
and it is parsed back with :func:`tunewise.task.parse_task` before it is written.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tunewise.errors import TunewiseError

MAX_LABELS = 50  # more distinct outputs than this is not a label set
MIN_PER_LABEL = 3  # outputs must repeat: on average this many examples per label
INPUT_NAMES = ("input", "text", "question", "query", "prompt", "sentence", "utterance",
               "instruction", "source", "content", "message")
OUTPUT_NAMES = ("output", "label", "answer", "target", "response", "completion", "intent",
                "class", "category", "expected", "gold")
_RECORD = re.compile(r"^\s*[\w .-]{1,40}:\s*[^,]+(,\s*[\w .-]{1,40}:\s*[^,]+)+\s*$")


@dataclass
class Detected:
    """What init found in a data file; everything the builder page shows too."""

    path: Path
    format: str
    n_rows: int
    columns: list[str]
    input: str
    output: str
    kind: str
    labels: list[str] | None
    corpus: Path | None = None
    corpus_columns: tuple[str, str] | None = None
    why: list[str] = field(default_factory=list)  # how each choice was made, for comments

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the web builder."""
        return {"path": str(self.path), "format": self.format, "n_rows": self.n_rows,
                "columns": self.columns, "input": self.input, "output": self.output,
                "kind": self.kind, "labels": self.labels,
                "corpus": str(self.corpus) if self.corpus else None, "why": self.why}


def detect_format(path: Path) -> str:
    """``jsonl`` or ``csv``: by extension, else by the first non-blank character."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as exc:
        raise TunewiseError(f"cannot read this file ({exc.strerror or exc})", path=path
                            ) from None
    return "jsonl" if head.startswith(b"{") else "csv"


def read_table(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(format, rows) of a data file; one-line errors for what cannot be read."""
    from tunewise.dataset import read_rows

    path = Path(path)
    if not path.exists():
        raise TunewiseError("file not found", path=path)
    fmt = detect_format(path) if path.is_file() else "jsonl"
    if fmt == "csv" and path.suffix.lower() != ".csv":
        raise TunewiseError("not JSON Lines (the first line does not start with '{'); if it "
                            "is CSV, name the file .csv", path=path)
    rows = [row for _, row in read_rows(path)]
    if not rows:
        raise TunewiseError("the file has no rows", path=path)
    return fmt, rows


def _texts(rows: list[dict[str, Any]], column: str) -> list[str]:
    return [str(r[column]) for r in rows if r.get(column) not in (None, "")]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows[:1000]:
        for key, value in row.items():
            if isinstance(value, str | int | float | dict | list) and not isinstance(value,
                                                                                     bool):
                seen.setdefault(str(key), None)
    return list(seen)


def _id_like(name: str, values: list[str], n: int) -> bool:
    """An identifier column: named so, or short values without spaces, all distinct."""
    low = name.lower()
    if low == "id" or low.endswith("_id") or low.endswith("id") and len(low) <= 4:
        return True
    return (len(set(values)) == n and n > 1
            and all(" " not in v and len(v) <= 40 for v in values[:200]))


def _pick(columns: list[str], names: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def guess_columns(rows: list[dict[str, Any]], columns: list[str]) -> tuple[str, str, list[str]]:
    """(input, output, reasons): conventional names, else text length and distinctness."""
    n = len(rows)
    usable = [c for c in columns if not _id_like(c, _texts(rows, c), n)]
    why: list[str] = []
    inp = _pick(usable, INPUT_NAMES)
    out = _pick([c for c in usable if c != inp], OUTPUT_NAMES)
    if inp:
        why.append(f"input column '{inp}': a conventional name")
    if out:
        why.append(f"output column '{out}': a conventional name")
    rest = [c for c in usable if c not in (inp, out)]
    if inp is None and rest:
        inp = max(rest, key=lambda c: sum(map(len, _texts(rows, c))) / max(1, n))
        rest.remove(inp)
        why.append(f"input column '{inp}': the longest text")
    if out is None and rest:
        out = min(rest, key=lambda c: len(set(_texts(rows, c))))
        why.append(f"output column '{out}': the fewest distinct values")
    if inp is None or out is None:
        raise TunewiseError(
            "cannot find an input and an output column (columns: "
            f"{', '.join(columns) or 'none'}); each row needs the text to answer and the "
            "expected answer (choose them with --input and --output)")
    return inp, out, why


def guess_kind(inputs: list[str], outputs: list[str]) -> tuple[str, list[str] | None, str]:
    """(kind, labels, reason) from what the outputs and inputs look like."""
    counts = Counter(outputs)
    n = len(outputs)
    # Records first: a few records repeated many times are still records, not labels.
    records = sum(bool(_RECORD.match(o)) or o.lstrip().startswith("{") for o in outputs)
    if records * 2 > n:
        return ("extraction", None,
                f"extraction: {records} of {n} outputs are 'field: value' records")
    if 2 <= len(counts) <= MAX_LABELS and len(counts) * MIN_PER_LABEL <= n:
        return ("classification", sorted(counts),
                f"classification: the {n} outputs repeat from {len(counts)} values")
    questions = sum(i.rstrip().endswith("?") for i in inputs)
    if questions * 2 > n:
        return "qa", None, f"qa: {questions} of {n} inputs are questions"
    return "generation", None, "generation: outputs are free text that rarely repeats"


def _documents_only(rows: list[dict[str, Any]], columns: list[str]) -> tuple[str, str] | None:
    """(id column, text column) when the file holds documents, not labelled examples."""
    n = len(rows)
    ids = [c for c in columns if _id_like(c, _texts(rows, c), n)]
    texts = [c for c in columns if c not in ids]
    # Documents are long and (nearly) all different; labels and answers repeat.
    if (len(ids) == 1 and len(texts) == 1 and len(set(_texts(rows, texts[0]))) >= 0.95 * n
            and sum(map(len, _texts(rows, texts[0]))) / max(n, 1) >= 200):
        return ids[0], texts[0]
    return None


def _referencing(folder: Path, ids: set[str], skip: Path) -> tuple[Path, str] | None:
    """A data file next to a corpus with a column whose values are the corpus's ids."""
    for candidate in sorted(folder.iterdir()):
        if candidate == skip or candidate.suffix.lower() not in (".jsonl", ".csv"):
            continue
        try:
            _, rows = read_table(candidate)
        except TunewiseError:
            continue
        for col in _columns(rows):
            values = set(_texts(rows, col))
            if values and len(values & ids) >= 0.9 * len(values):
                return candidate, col
    return None


def _linked_corpus(data: Path, rows: list[dict[str, Any]], columns: list[str]
                   ) -> tuple[Path, tuple[str, str]] | None:
    """A documents file next to the data whose ids a data column cites (``source_id``)."""
    for candidate in sorted(data.parent.iterdir()):
        if candidate == data or candidate.suffix.lower() not in (".jsonl", ".csv"):
            continue
        try:
            _, docs = read_table(candidate)
        except TunewiseError:
            continue
        shape = _documents_only(docs, _columns(docs))
        if not shape:
            continue
        ids = set(_texts(docs, shape[0]))
        for col in columns:
            values = set(_texts(rows, col))
            if values and len(values & ids) >= 0.9 * len(values):
                return candidate, shape
    return None


def inspect(path: Path, *, input_col: str | None = None, output_col: str | None = None,
            kind: str | None = None, corpus: Path | None = None) -> Detected:
    """Read a data file and detect its format, columns, kind, labels and any corpus.

    Raises:
        TunewiseError: unreadable file, no usable columns, or a corpus without examples.
    """
    path = Path(path)
    fmt, rows = read_table(path)
    columns = _columns(rows)
    why: list[str] = []
    docs = _documents_only(rows, columns)
    if docs and input_col is None and output_col is None:
        found = _referencing(path.parent, set(_texts(rows, docs[0])), path)
        if found is None:
            raise TunewiseError(
                f"this looks like a corpus of documents (columns {docs[0]}, {docs[1]}), not "
                "labelled examples: run init on the examples file and add this one with "
                "--corpus", path=path)
        why.append(f"{path.name} holds documents ({docs[0]}, {docs[1]}): it is the corpus; "
                   f"the examples citing it are in {found[0].name} (column {found[1]})")
        corpus, path = path, found[0]
        fmt, rows = read_table(path)
        columns = _columns(rows)
    for name, given in (("--input", input_col), ("--output", output_col)):
        if given is not None and given not in columns:
            raise TunewiseError(f"no column '{given}' (columns: {', '.join(columns)})",
                                path=path, field=name)
    if input_col and output_col:
        inp, out = input_col, output_col
    else:
        inp, out, reasons = guess_columns(
            rows, [c for c in columns if c not in (input_col, output_col)] + [
                c for c in (input_col, output_col) if c])
        inp, out = input_col or inp, output_col or out
        why.extend(reasons)
    inputs, outputs = _texts(rows, inp), _texts(rows, out)
    guessed, labels, reason = guess_kind(inputs, outputs)
    if kind and kind != guessed:
        why.append(f"kind '{kind}' as given (the data looked like {guessed})")
        labels = sorted(set(outputs)) if kind == "classification" else None
    else:
        why.append(reason)
    corpus_cols = None
    if corpus is not None:
        _, docs_rows = read_table(corpus)
        corpus_cols = _documents_only(docs_rows, _columns(docs_rows)) or ("id", "text")
    elif not docs:
        linked = _linked_corpus(path, rows, columns)
        if linked:
            corpus, corpus_cols = linked
            why.append(f"corpus {corpus.name}: its ids are cited by the examples")
    elif docs:
        corpus_cols = docs
    return Detected(path.resolve(), fmt, len(rows), columns, inp, out, kind or guessed,
                    labels, corpus.resolve() if corpus else None, corpus_cols, why)


# ---- the task spec and its YAML ------------------------------------------------------------


def task_fields(found: Detected, task_dir: Path, *, name: str | None = None,
                target: float | None = None, backend: str | None = None,
                requests_per_day: int | None = None, latency_ms: float | None = None,
                price: str | None = None) -> dict[str, Any]:
    """The task's own values (everything else stays at its default)."""
    n = found.n_rows
    test = min(100, max(1, n // 5))
    dev = min(50, n // 10)
    fields: dict[str, Any] = {
        "name": name or re.sub(r"[^\w-]+", "-", found.path.stem).strip("-") or "task",
        "kind": found.kind,
        "description": f"Read the {found.input} and give its {found.output}.",
        "data": {"path": _relative(found.path, task_dir), "input": found.input,
                 "output": found.output},
        "target": target if target is not None else (0.8 if found.kind == "classification"
                                                     else 0.6),
        "split": {"test": test, "dev": dev, "seed": 0},
    }
    if found.kind == "classification":
        fields["labels"] = found.labels
    if found.corpus is not None:
        cid, ctext = found.corpus_columns or ("id", "text")
        fields["corpus"] = {"path": _relative(found.corpus, task_dir), "id": cid, "text": ctext}
    if requests_per_day is not None:
        fields["volume"] = {"requests_per_day": requests_per_day}
    if latency_ms is not None:
        fields["latency_ms"] = latency_ms
    if backend:
        fields["backend"] = {"kind": backend}
    if price:
        fields["cost"] = {"price": price}
    return fields


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start.resolve())
    except ValueError:  # another drive on Windows
        return str(path)


def check(fields: dict[str, Any], task_dir: Path) -> tuple[Any, Any]:
    """(TaskSpec, DataReport) of the draft: the same checks ``tunewise run`` prints.

    A non-classification draft whose test answers mostly also occur in training gets
    ``split.group_by: output`` (the check's own advice), so scores measure new answers.
    """
    from tunewise.dataset import check_data, load_examples, make_split
    from tunewise.task import parse_task

    def build(f: dict[str, Any]) -> tuple[Any, Any]:
        spec = parse_task(yaml.safe_dump(f, sort_keys=False), task_dir / "task.yaml")
        spec.data.path = (task_dir / spec.data.path).resolve()
        if spec.corpus is not None:
            spec.corpus.path = (task_dir / spec.corpus.path).resolve()
        examples = load_examples(spec)
        return spec, check_data(examples, make_split(examples, spec), spec)

    spec, report = build(fields)
    if any("split.group_by: output" in note for note in report.notes):
        copied = next(n for n in report.notes if "split.group_by: output" in n)
        fields["split"]["group_by"] = "output"
        try:
            spec, report = build(fields)
        except TunewiseError:  # too few distinct answers to hold whole groups out
            del fields["split"]["group_by"]
            return spec, report
        report.notes.insert(0, "split.group_by: output set because " + copied.split(":")[0])
    return spec, report


def findings(report: Any, spec: Any) -> list[str]:
    """The data check as comment lines: size vs the fine-tuning lines, duplicates,
    leakage, class balance and every note."""
    sizes = report.sizes
    lines = [f"{report.n_examples} examples: {sizes['train']} train, {sizes['dev']} dev, "
             f"{sizes['test']} test"]
    n_train, lo, hi = sizes["train"], spec.lora.min_examples, spec.lora.warn_examples
    if n_train < lo:
        lines.append(f"size: {n_train} training examples, under {lo}: fine-tuning is not "
                     "offered (prompting and retrieval rungs only)")
    elif n_train < hi:
        lines.append(f"size: {n_train} training examples: fine-tuning can run, but under {hi}"
                     " its results are fragile")
    else:
        lines.append(f"size: {n_train} training examples: enough for fine-tuning (at least "
                     f"{hi})")
    lines.append(f"duplicates: {report.duplicate_inputs} inputs repeat another's")
    lines.append(f"leakage: {report.leakage_normalised} test inputs also in train/dev")
    if report.label_counts:
        counts = report.label_counts
        most = max(counts, key=counts.__getitem__)
        least = min(counts, key=counts.__getitem__)
        lines.append(f"class balance: {len(counts)} labels, from {counts[most]} ({most}) to "
                     f"{counts[least]} ({least})")
    lines.extend(f"note: {note}" for note in report.notes)
    return lines


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _section(key: str, model: type[BaseModel], given: dict[str, Any] | None,
             description: str) -> list[str]:
    """One block: the section's own values where given, every other field at its default,
    each with its description; optional fields without a value are commented out."""
    out = [f"# {description}", f"{key}:"]
    given = given or {}
    for name, info in model.model_fields.items():
        note = f"  # {info.description}" if info.description else ""
        if name in given:
            out.append(f"  {name}: {_flow(given[name])}{note}")
            continue
        if info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        if isinstance(default, Path):
            default = str(default)
        if default is None or (name == "edits" and default == []):
            out.append(f"  # {name}: {note[4:] if note else ''}".rstrip())
        else:
            out.append(f"  {name}: {_flow(default)}{note}")
    if all(line.lstrip().startswith("#") for line in out[2:]):
        out[1] = f"{key}: {{}}"  # every field optional and unset: an empty mapping, not null
    return out


def render_yaml(fields: dict[str, Any], spec: Any, report: Any, found: Detected,
                task_path: str = "task.yaml") -> str:
    """The commented task.yaml: the command that runs it, the checks, then every section."""
    from tunewise.task import TaskSpec, spec_class

    lines = [f"# tunewise run {task_path}", "#",
             f"# Written by tunewise init from {found.path.name} ({found.format}, "
             f"{found.n_rows} rows). Edit freely; every key is checked when it runs.",
             "# How it was read:"]
    lines += [f"#   - {w}" for w in found.why]
    lines.append("# Data check:")
    lines += [f"#   - {f}" for f in findings(report, spec)]
    lines.append("")
    top = TaskSpec.model_fields
    for key, info in top.items():
        ann = info.annotation
        sub = next((a for a in (ann, *getattr(ann, "__args__", ()))
                    if isinstance(a, type) and issubclass(a, BaseModel)), None)
        desc = info.description or ""
        if key == "backends":
            lines.append(f"# {key}: [...]  # {desc}")
        elif key == "corpus" and key not in fields:
            lines.append(f"# corpus: {{path: documents.jsonl, id: id, text: text}}  # {desc}")
        elif sub is not None:
            if key == "backend":  # the keys of the kind it writes (each kind has its own)
                sub = spec_class((fields.get(key) or {}).get("kind", "local"))
            block = _section(key, sub, fields.get(key), f"{desc} {_doc(sub)}".strip())
            if (key not in fields and not info.is_required()
                    and info.get_default(call_default_factory=True) is None
                    and any(f.is_required() for f in sub.model_fields.values())):
                # an optional section that needs values of its own: shown, commented out
                block = block[:1] + [f"# {line}" for line in block[1:]]
            lines += block
            lines.append("")
        elif key in fields:
            lines.append(f"{key}: {_flow(fields[key])}  # {desc}")
        elif key == "metric":
            lines.append(f"metric: {spec.metric}  # {desc}")
        elif key == "rungs":
            lines.append(f"# rungs: {_flow(list(_rung_names()))}  # {desc}")
        else:
            default = info.get_default(call_default_factory=True)
            if default is None:
                lines.append(f"# {key}:  # {desc}")
            else:
                lines.append(f"{key}: {_flow(default)}  # {desc}")
    return "\n".join(lines).rstrip() + "\n"


def _rung_names() -> tuple[str, ...]:
    from tunewise.plugins import rung_names

    return rung_names()


def write_task(data: Path, out: Path, *, force: bool = False, **options: Any
               ) -> tuple[Path, Detected, Any]:
    """Detect, check and write ``out``; returns (path, detection, data report).

    Raises:
        TunewiseError: unreadable data, or ``out`` exists and ``force`` is not set.
    """
    from tunewise.files import write_text_atomic
    from tunewise.task import parse_task

    if out.is_dir():
        raise TunewiseError("is a folder; give the task file's name, e.g. "
                            f"{out / 'task.yaml'}", path=out, field="--out")
    if out.exists() and not force:
        raise TunewiseError("already exists; choose another name with -o or pass --force",
                            path=out, field="--out")
    if not out.absolute().parent.is_dir():
        raise TunewiseError(f"folder {out.absolute().parent} does not exist", path=out,
                            field="--out")
    detect_opts = {k: options.pop(k) for k in ("input_col", "output_col", "kind", "corpus")
                   if k in options}
    found = inspect(data, **detect_opts)
    task_dir = out.absolute().parent
    fields = task_fields(found, task_dir, **options)
    spec, report = check(fields, task_dir)
    text = render_yaml(fields, spec, report, found, task_path=out.name)
    parse_task(text, out)  # what is written is what `tunewise run` accepts
    write_text_atomic(out, text)
    return out, found, report


def summary(found: Detected, report: Any) -> dict[str, Any]:
    """JSON for ``tunewise init --json`` and the web builder."""
    return {**found.to_dict(), "data_check": json.loads(json.dumps(report.to_dict()))}
