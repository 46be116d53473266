"""A run's plan: the task's data loaded, split and checked, and which rungs run on which
model, decided before any model call.

Below the estimate and the ladder: the estimate sizes a plan, the ladder climbs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunewise import plugins
from tunewise.answers import default_max_tokens, length_stats
from tunewise.backends import make_backend
from tunewise.backends.base import Backend, CachedBackend
from tunewise.dataset import (
    DataReport,
    Example,
    check_data,
    load_corpus,
    load_examples,
    make_split,
    task_labels,
)
from tunewise.evaluate import baseline as model_free_baseline
from tunewise.plugins import rung_names
from tunewise.rungs.base import RunContext, RungUnavailable, get_rung
from tunewise.store import Store
from tunewise.task import ModelSpec, TaskSpec


@dataclass
class ModelPlan:
    """One model of the task: its context (backend, shots, adapters) and the rungs it can
    serve; a cell is one of these rungs on this model."""

    name: str
    spec: ModelSpec
    ctx: RunContext
    rungs: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    tag: str = ""  # suffix of its rung names in the store ("" for the first model)


@dataclass
class Plan:
    """A loaded task ready to run: data, split, checks and the rungs to climb."""

    task: TaskSpec
    ctx: RunContext
    report: DataReport
    rungs: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[ModelPlan] = field(default_factory=list)


def default_rungs(task: TaskSpec) -> list[str]:
    """Every rung in ladder order (requirements are checked per rung later); the opt-in
    rungs (full_ft, dpo) only when the task names them."""
    order = rung_names()
    default = [r for r in order if not plugins.rung(r).meta.opt_in]
    if len(task.model_entries()) < 2:  # distill needs a second model to teach it
        default.remove("distill")
    return [r for r in order if r in (task.rungs or default)]


def _serves(ctx: RunContext, report: DataReport, name: str) -> str | None:
    """Why this rung cannot run on this context's model (None when it can)."""
    try:
        return report.rung_blocks.get(name) or get_rung(name).requires(ctx)
    except RungUnavailable as exc:
        return exc.message


def plan_run(task: TaskSpec, store: Store, backend: Backend | None = None,
             run_id: str = "", out_dir: Path | None = None,
             rungs: list[str] | None = None,
             backends: dict[str, Backend] | None = None) -> Plan:
    """Load data, split it, check it, and decide which rungs run on which model (no model
    calls). ``backend`` replaces the first model's backend, ``backends`` any model's by
    name (tests pass dummies)."""
    examples = load_examples(task)
    split = make_split(examples, task)
    report = check_data(examples, split, task)
    corpus = load_corpus(task)
    labels = task_labels(task, examples) if task.kind == "classification" else None
    if task.unlabelled is not None:
        from tunewise.rungs.distill import unlabelled_inputs

        warning = unlabelled_inputs(task)[1]
        if warning and warning not in report.notes:
            report.notes.append(warning)
    wanted = rungs or default_rungs(task)
    peers: dict[str, RunContext] = {}
    models: list[ModelPlan] = []
    for i, (name, spec) in enumerate(task.model_entries().items()):
        inner = (backends or {}).get(name) or (backend if i == 0 else None)
        if inner is None:
            inner = make_backend(spec.backend_spec())
            _check_serving(task, name, spec)
        sub_task = task if i == 0 else task.model_copy(
            update={"backend": spec.backend_spec(), "backends": None})
        cached = CachedBackend(inner, store, run_id or None)
        if task.kind != "classification":  # notes from the first model only
            # counted through the store's memo: a re-run needs no tokenizer (nor torch)
            resolve_max_tokens(sub_task, report if i == 0 else replace(report, notes=[]),
                               split.train, cached.count_tokens)
        ctx = RunContext(
            task=sub_task, examples=examples, split=split, labels=labels,
            backend=cached, store=store,
            run_id=run_id, work_dir=out_dir or Path("runs") / (run_id or "preview"),
            corpus=corpus, model=name, peers=peers,
        )
        peers[name] = ctx
        chosen, skipped = [], {}
        for rung in wanted:
            if spec.rungs is not None and rung not in spec.rungs:
                continue
            reason = _serves(ctx, report, rung)
            if reason:
                skipped[rung] = reason
            else:
                chosen.append(rung)
        models.append(ModelPlan(name, spec, ctx, chosen, skipped, "" if i == 0 else f"@{name}"))
    first = models[0]
    found = model_free_baseline([e.output for e in split.train], [e.output for e in split.test],
                                task.metric or "", task.kind == "classification")
    return Plan(task, first.ctx, report, first.rungs, first.skipped, found, models)


def _check_serving(task: TaskSpec, name: str, spec: ModelSpec) -> None:
    """A local model too large to answer in this memory is refused before its weights are
    loaded (they load lazily, on the first call), in one line naming its task file line."""
    if spec.kind != "local":
        return
    from tunewise.planner import check_serving
    from tunewise.rungs.lora import naming_model_line

    with naming_model_line(task, name):
        check_serving(spec.model, spec.batch_size)


def resolve_max_tokens(task: TaskSpec, report: DataReport, train: list[Example],
                       count_tokens: Callable[[str], int]) -> None:
    """Measure the training answers in tokens; size ``max_new_tokens`` from them.

    A task that does not set ``backend.max_new_tokens`` gets p99 of the training answers
    plus a margin, so long answers (records, JSON) are not cut; one that sets it below the
    p95 gets a data-check note, since most answers that long would be cut and scored wrong.
    """
    stats = length_stats(count_tokens(e.output) for e in train)
    if not stats:
        return
    report.answer_tokens = stats
    derived = default_max_tokens(stats)
    for i, spec in enumerate(task.backends or [task.backend]):
        if "max_new_tokens" not in spec.model_fields_set:
            # Not an assignment: the value is derived, and stays derived on a re-plan.
            object.__setattr__(spec, "max_new_tokens", derived)
            if i == 0:
                report.notes.append(
                    f"max_new_tokens {derived}, from the answers in train (p50 "
                    f"{stats['p50']:.0f}, p95 {stats['p95']:.0f}, p99 {stats['p99']:.0f} "
                    "tokens); set backend.max_new_tokens to change it")
        elif spec.max_new_tokens < stats["p95"]:
            where = "backend" if not task.backends else f"backends[{i}]"
            report.notes.append(
                f"{where}.max_new_tokens is {spec.max_new_tokens} but 5% of the training "
                f"answers are longer than {stats['p95']:.0f} tokens (p50 {stats['p50']:.0f}, "
                f"max {stats['max']:.0f}); long answers will be cut and scored wrong; raise "
                f"it or remove it to use {default_max_tokens(stats)}")
