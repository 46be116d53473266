"""The task builder and the "try an input" box of the web UI.

The builder is ``tunewise init`` in the browser, as promptfoo's and LlamaFactory's web UIs
let users set up an evaluation or a training run without writing its config by hand:
point at a data file (an upload, or a path on this machine), pick the columns, read the
data checks, set the target, traffic, latency and price entry, optionally add a corpus,
save the task.yaml (shown before it is saved) and start the run, which the job page
follows live. Detection, checks and the YAML come from :mod:`tunewise.init`, so the page
and the command write the same file.

The try box answers one input with every rung of a finished run, side by side, with the
label confidences for classification (the lesson pages' symptom classifier demo).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

MAX_UPLOAD = 50 * 1024 * 1024  # bytes; bigger data belongs on disk, given by path
TOP_LABELS = 5
SAMPLE_ROWS = 5  # rows previewed by the builder


def workspace() -> Path:
    """Where uploaded data files and their task files go (``$TUNEWISE_TASKS`` overrides)."""
    from tunewise.files import user_path

    return user_path("TUNEWISE_TASKS", "tasks", cache=False)


def save_upload(filename: str, body: bytes) -> Path:
    """Keep an uploaded data file under the workspace, in a folder named after it.

    Raises:
        TunewiseError: an empty or too large upload, or a name that is not .jsonl/.csv.
    """
    name = Path(filename or "").name
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    if suffix not in (".jsonl", ".csv", ".ndjson"):
        raise TunewiseError(f"'{name or '?'}': upload a .jsonl or .csv file")
    if not body:
        raise TunewiseError(f"'{name}' is empty")
    if len(body) > MAX_UPLOAD:
        raise TunewiseError(f"'{name}' is over {MAX_UPLOAD // 2**20} MB: give its path on "
                            "this machine instead")
    safe_stem = re.sub(r"[^\w.-]+", "-", stem).strip(".-") or "data"
    folder = workspace() / safe_stem
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{safe_stem}{suffix}"
    from tunewise.files import write_text_atomic

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TunewiseError(f"'{name}' is not UTF-8 text (byte {exc.start})") from None
    write_text_atomic(path, text)
    return path


def _number(form: dict[str, str], key: str, kind: type, label: str) -> Any:
    raw = (form.get(key) or "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise TunewiseError(f"{label}: '{raw}' is not a number", field=key) from None


def draft(form: dict[str, str]) -> dict[str, Any]:
    """Detection, settings, data checks and the YAML for the builder's form values.

    Raises:
        TunewiseError: unreadable data, an unknown column, a bad number.
    """
    from tunewise.cost import price_table
    from tunewise.init import check, findings, inspect, read_table, render_yaml, task_fields

    data = Path((form.get("data") or "").strip()).expanduser()
    if not str(data).strip() or str(data) == ".":
        raise TunewiseError("give a data file: upload one, or type its path on this machine")
    corpus_text = (form.get("corpus") or "").strip()
    found = inspect(data, input_col=form.get("input") or None,
                    output_col=form.get("output") or None, kind=form.get("kind") or None,
                    corpus=Path(corpus_text).expanduser() if corpus_text else None)
    out = Path((form.get("task_path") or "").strip() or found.path.parent / "task.yaml")
    out = out.expanduser()
    backend = form.get("backend") or None
    if backend not in (None, "local", "dummy"):
        raise TunewiseError(f"unknown backend '{backend}'", field="backend")
    prices = sorted(price_table())
    price = form.get("price") or None
    if price is not None and price not in prices:
        raise TunewiseError(f"unknown price entry '{price}'", field="price")
    target = _number(form, "target", float, "target")
    if target is not None and not 0 <= target <= 1:
        raise TunewiseError("target: give a score between 0 and 1", field="target")
    fields = task_fields(found, out.absolute().parent, name=form.get("name") or None,
                         target=target, backend=backend,
                         requests_per_day=_number(form, "requests_per_day", int,
                                                  "requests per day"),
                         latency_ms=_number(form, "latency_ms", float, "latency"),
                         price=price)
    spec, report = check(fields, out.absolute().parent)
    _, rows = read_table(found.path)  # a preview of the chosen columns, as LlamaBoard shows
    sample = [{"input": str(r.get(found.input, "")), "output": str(r.get(found.output, ""))}
              for r in rows[:SAMPLE_ROWS]]
    return {"found": found.to_dict(), "fields": fields, "task_path": str(out),
            "sample": sample,
            "checks": findings(report, spec), "notes": report.notes,
            "sizes": report.sizes, "label_counts": report.label_counts,
            "yaml": render_yaml(fields, spec, report, found, task_path=out.name),
            "prices": prices, "price": spec.cost.price, "target": spec.target,
            "requests_per_day": spec.volume.requests_per_day,
            "latency_ms": spec.latency_ms, "backend": spec.backend.kind,
            "name": spec.name, "kind": spec.kind, "metric": spec.metric}


def save(form: dict[str, str]) -> dict[str, Any]:
    """Write the drafted task.yaml (never over an existing file unless asked).

    Raises:
        TunewiseError: as :func:`draft`, or the file exists and overwrite is off.
    """
    from tunewise.files import write_text_atomic
    from tunewise.task import load_task

    made = draft(form)
    path = Path(made["task_path"])
    if path.is_dir():
        raise TunewiseError("is a folder; give the task file's name", path=path)
    if path.exists() and form.get("overwrite") != "true":
        raise TunewiseError("already exists; tick 'overwrite' or choose another name",
                            path=path)
    if not path.absolute().parent.is_dir():
        raise TunewiseError(f"folder {path.absolute().parent} does not exist", path=path)
    write_text_atomic(path, made["yaml"])
    load_task(path)  # what was written runs as written
    return made


class TryBox:
    """Prepared rungs of finished runs, kept so that each further input costs one call."""

    def __init__(self, store_path: str | Path | None) -> None:
        self.store_path = store_path
        self.prepared: dict[str, tuple[Any, list[tuple[str, Any]]]] = {}
        self.lock = threading.Lock()

    def _prepare(self, store: Any, run_id: str) -> tuple[Any, list[tuple[str, Any]]]:
        import json

        from tunewise.ladder import plan_run
        from tunewise.rungs.base import get_rung
        from tunewise.task import TaskSpec

        row = store.run(run_id)
        if not row["result_json"]:
            raise TunewiseError(f"run {row['id']} did not finish: nothing to try yet")
        result = json.loads(row["result_json"])
        task = TaskSpec.model_validate(json.loads(row["config_json"]))
        names = [r["name"] for r in result["rungs"] if r.get("status") == "done"]
        if not names:
            raise TunewiseError(f"run {row['id']} has no finished rung")
        plan = plan_run(task, store, rungs=names)
        plan.ctx.log = lambda message: None
        return plan, [(n, get_rung(n).prepare(plan.ctx)) for n in names if n in plan.rungs]

    def answer(self, run_id: str, text: str) -> dict[str, Any]:
        """Every finished rung's answer to ``text``, with label confidences.

        Raises:
            TunewiseError: an empty input, an unknown or unfinished run.
        """
        from tunewise.dataset import Example
        from tunewise.rungs.base import answer
        from tunewise.store import Store

        if not text.strip():
            raise TunewiseError("type an input to try")
        store = Store(self.store_path)
        try:
            with self.lock:  # one preparation per run, even with two tabs open
                if run_id not in self.prepared:
                    self.prepared[run_id] = self._prepare(store, run_id)
                plan, rungs = self.prepared[run_id]
                ex = Example("try", text, "")
                # SQLite connections belong to one thread: this request's store serves
                # every cached backend of the run's prepared rungs.
                plan.ctx.store = plan.ctx.backend.store = store
                for _, prepared in rungs:
                    if prepared.backend is not None:
                        prepared.backend.store = store
                out = []
                for name, prepared in rungs:
                    backend = prepared.backend or plan.ctx.backend
                    pred = answer(plan.ctx, backend, [ex], [prepared.prompt_for(ex)])[0]
                    ranked = sorted((pred.probs or {}).items(), key=lambda kv: -kv[1])
                    out.append({"rung": name, "answer": pred.text,
                                "labels": [{"label": k, "p": v} for k, v in
                                           ranked[:TOP_LABELS]]})
        finally:
            store.close()
        return {"run_id": run_id, "input": text, "answers": out}
