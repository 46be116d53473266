"""Orchestration: load a task, check its data, climb the rungs cheapest first, keep it all.

Each rung is prepared, predicts the test split through the cached backend, and is scored
by ``evaluate``; its result and per-example rows are stored before the next rung starts,
so an interrupted run loses nothing that finished (re-running reuses every stored call).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from tunewise import plugins
from tunewise.answers import default_max_tokens, length_stats, per_field_accuracy
from tunewise.backends import make_backend
from tunewise.backends.base import Backend, CachedBackend
from tunewise.comparisons import paired_bootstrap
from tunewise.dataset import (
    DataReport,
    Example,
    check_data,
    load_corpus,
    load_examples,
    make_split,
    require_seen_labels,
    task_labels,
)
from tunewise.errors import BudgetExceeded, TunewiseError, redact
from tunewise.evaluate import answer_spread, evaluate, expected_calibration_error
from tunewise.evaluate import baseline as model_free_baseline
from tunewise.files import write_text_atomic
from tunewise.latency import single_request_latency, throughput
from tunewise.plugins import family, rung_names
from tunewise.results import SCHEMA_VERSION, check_result
from tunewise.rungs.base import Prediction, RunContext, RungUnavailable, get_rung
from tunewise.store import Store
from tunewise.task import ModelSpec, TaskSpec


@dataclass
class Hooks:
    """How the ladder talks to its caller (the CLI draws progress bars with these)."""

    log: Callable[[str], None] = lambda msg: None
    start_rung: Callable[[str, int], None] = lambda name, total: None
    advance: Callable[[int], None] = lambda n: None
    end_rung: Callable[[dict[str, Any]], None] = lambda result: None


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
        if task.kind != "classification":  # notes from the first model only
            resolve_max_tokens(sub_task, report if i == 0 else replace(report, notes=[]),
                               split.train, inner.count_tokens)
        ctx = RunContext(
            task=sub_task, examples=examples, split=split, labels=labels,
            backend=CachedBackend(inner, store, run_id or None), store=store,
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


Rows = dict[str, dict[str, Any]]  # example id -> {"prediction", "gold", "score"}
# (name, per-item rows, value) of what a rung's significance is tested against
Reference = tuple[str, Rows, float]


def first_reference(plan: Plan) -> Reference | None:
    """The model-free baseline as a reference, before zero_shot runs."""
    for name, b in plan.baselines.items():
        rows = {str(e.id): {"prediction": b["label"], "gold": e.output, "score": s}
                for e, s in zip(plan.ctx.split.test, b["per_item"], strict=True)}
        return name, rows, b["value"]
    return None


def better_reference(plan: Plan, current: Reference | None, zero_shot: dict[str, Any],
                     tag: str = "") -> Reference | None:
    """zero_shot replaces the model-free baseline as the reference when it scores higher."""
    if current is not None and zero_shot["value"] <= current[2]:
        return current
    rows = {str(r["example_id"]): dict(r)
            for r in plan.ctx.store.predictions(plan.ctx.run_id, "zero_shot" + tag)}
    return "zero_shot", rows, zero_shot["value"]


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


def _check_calls(task: TaskSpec, names: list[str], n_test: int, n_train: int, tag: str
                 ) -> dict[str, int]:
    """Calls of one model's checks after the ladder: learning curve, forgetting, preference
    accuracy (keys end with the model's ``tag``, none for the first model)."""
    out: dict[str, int] = {}
    tuned = [n for n in names if family(n) == "fine_tuning"]
    if "lora" in names and task.lora.curve:
        from tunewise.training.curve import curve_sizes

        out["learning_curve" + tag] = len(curve_sizes(task.lora.curve, n_train)) * n_test
    if not tuned:
        return out
    from tunewise.training.forgetting import load_general

    try:
        general = len(load_general(task.lora.general))
    except TunewiseError:
        general = 0  # the check reports its own error and makes no call
    # the base model, the lora adapter (also dpo's start), each model of its own
    sft = any(n.startswith("lora") for n in tuned) or (
        "dpo" in tuned and task.dpo.start_from == "sft")
    models = sft + sum(n in tuned for n in ("full_ft", "dpo"))
    out["forgetting" + tag] = (1 + models) * general
    if "dpo" in names:  # preference accuracy: base, supervised (if any) and dpo models
        out["preference_check" + tag] = (2 + sft) * n_test
    return out


def estimate_breakdown(plan: Plan) -> dict[str, int]:
    """Model calls the run will ask for (made or cached), per rung and per check.

    Per rung: its test items, the single requests timed for latency (``decision.
    latency_sample`` plus one warm-up), and few_shot_best's dev passes (one per
    candidate), on every model that runs the rung (keys ``rung@model`` beyond the first);
    distill adds the teacher's labels and its choice on dev. Then the checks after
    the ladder: the learning curve (test items per subset size), forgetting (base and tuned
    model on the general set) and the freshness test (the questions whose answer can be
    edited, asked before and after the edit).
    """
    task, split = plan.task, plan.ctx.split
    n_test, n_dev = len(split.test), len(split.dev)
    sample = min(task.decision.latency_sample, n_test)
    timing = sample + 1 if sample else 0
    out: dict[str, int] = {}
    for tag, names in [(m.tag, m.rungs) for m in plan.models] or [("", plan.rungs)]:
        for name in names:
            out[name + tag] = n_test + timing + (
                n_dev * task.few_shot.best_candidates if name == "few_shot_best" else 0) + (
                len(split.train) + 2 * n_dev if name == "distill" else 0)
    # the checks after the ladder, for every model that trains (the first: plan.rungs)
    trains = [("", plan.rungs)] + [(m.tag, m.rungs) for m in plan.models[1:]]
    for tag, names in trains:
        out.update(_check_calls(task, names, n_test, len(split.train), tag))
    if task.freshness.run and task.freshness.rung in plan.rungs and plan.ctx.corpus:
        out["freshness"] = _freshness_calls(plan)
    return out


def _freshness_calls(plan: Plan) -> int:
    """Questions the freshness test asks before the edit, plus at most
    ``freshness.max_questions`` asked again after it (found without any model call)."""
    from tunewise.freshness import automatic_edits, rule_questions

    ctx, spec = plan.ctx, plan.task.freshness
    if spec.edits:
        candidates = rule_questions(list(spec.edits), ctx.examples, ctx.corpus, 10**9)
    else:
        _, candidates = automatic_edits(ctx.split.test, ctx.corpus, len(ctx.split.test),
                                        spec.seed, answers=ctx.examples)
    return len(candidates) + min(spec.max_questions, len(candidates))


def estimate_calls(plan: Plan) -> int:
    """Every model call the run will ask for (see :func:`estimate_breakdown`)."""
    return sum(estimate_breakdown(plan).values())


def check_budget(plan: Plan, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Stop before any model call when the run would exceed ``budget.max_calls`` or
    ``budget.max_usd`` (the dollar estimate is shown through ``log`` first); returns the
    estimate (``cost.estimate_run``), which the result keeps beside the calls made."""
    limit = plan.task.budget.max_calls
    estimate = estimate_calls(plan)
    if limit is not None and estimate > limit:
        raise BudgetExceeded(
            f"this run needs up to {estimate} model calls but the budget allows {limit}; "
            "raise budget.max_calls, lower split.test, or choose fewer rungs",
            path=plan.task.source, line=plan.task.line_of("budget.max_calls"),
            field="budget.max_calls",
        )
    from tunewise.cost import check_usd_budget

    return check_usd_budget(plan, log)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _shared_prefix_tokens(ctx: RunContext, prompts: list[Any]) -> int:
    """Tokens at the start of every prompt: what a provider's prefix cache can reuse."""
    texts = [ctx.backend.render(p) for p in prompts[:50]]
    if len(texts) < 2:
        return 0
    n = 0
    for chars in zip(*texts, strict=False):
        if any(c != chars[0] for c in chars):
            break
        n += 1
    return ctx.backend.count_tokens(texts[0][:n])


def run_rung(plan: Plan, name: str, hooks: Hooks, baseline: list[float] | None,
             tag: str = "", reference: Reference | None = None
             ) -> tuple[dict[str, Any], list[float]]:
    """Prepare, predict and score one rung; store it; return its summary and per-item scores.

    ``baseline`` is zero_shot's per-item scores (``vs_zero_shot``); ``reference`` the better
    of zero_shot and the model-free baseline (``vs_baseline``, same paired bootstrap: a
    rung must beat both to count). ``tag`` (e.g. ``@openai:model``) names the rung in the
    store when it runs on a further backend of ``task.backends``.
    """
    ctx, task = plan.ctx, plan.task
    rung = get_rung(name)
    base = ctx.backend
    ctx.backend = base.for_rung(name + tag)
    try:
        started = time.perf_counter()
        # Calls made while preparing (few_shot_best scoring dev sets) are not test items:
        # the bar counts test items only, so it starts after prepare (prepare logs its own).
        prepared = rung.prepare(ctx)
        prep_s = time.perf_counter() - started
        test = ctx.split.test
        hooks.start_rung(name + tag, len(test))
        ctx.backend.progress = hooks.advance
        if prepared.backend is not None:
            prepared.backend.progress = hooks.advance
        preds: list[Prediction] = rung.predict(prepared, test, ctx)
        prompts = [prepared.prompt_for(e) for e in test[:50]]
        shared = _shared_prefix_tokens(ctx, prompts)
        sample = min(task.decision.latency_sample, len(test))
        single = single_request_latency(
            ctx, prepared.backend or ctx.backend, test[:sample + 1],
            [prepared.prompt_for(e) for e in test[:sample + 1]], sample)
    finally:
        ctx.backend = base
    gold = [e.output for e in test]
    score = evaluate([p.text for p in preds], gold, task.metric)
    result: dict[str, Any] = {
        "name": name, "family": family(name), "status": "done", "reason": "",
        **score.to_dict(),
        "tokens": {
            "prompt_mean": float(np.mean([p.prompt_tokens for p in preds])),
            "completion_mean": float(np.mean([p.completion_tokens for p in preds])),
            "shared_prefix": shared,
        },
        # single requests at batch 1 when timed (tunewise.latency), else per-item batch time
        "latency_ms": {
            "p50": single["single_p50_ms"] if single else
            _percentile([p.latency_s * 1000 for p in preds], 50),
            "p95": single["single_p95_ms"] if single else
            _percentile([p.latency_s * 1000 for p in preds], 95),
        },
        "throughput_items_s": throughput([p.latency_s for p in preds]),
        "upfront_s": prepared.upfront_s or prep_s,
        "info": prepared.info,
        **({"latency": single} if single else {}),
        "calls_made": sum(not p.cached for p in preds),
        "cache_hits": sum(p.cached for p in preds),
    }
    texts = [p.text for p in preds]
    per_field = per_field_accuracy(texts, gold) if not ctx.labels else {}
    if task.kind == "extraction" or per_field:  # records: field-level F1 beside exact match
        result["secondary"] = {m: evaluate(texts, gold, m).to_dict()
                               for m in ("exact_match", "field_f1") if m != task.metric}
    if per_field:
        result["per_field"] = per_field
    if prepared.info.get("dev_tie"):  # few_shot_best could not choose on dev
        result["dev_tie"] = True
    if not ctx.labels:
        result["truncated"] = sum(bool(p.details.get("truncated")) for p in preds)
        result["max_new_tokens"] = task.backend.max_new_tokens
    result.update(answer_spread(texts))
    if ctx.labels:
        conf = [max(p.probs.values()) for p in preds if p.probs]
        result["ece"] = expected_calibration_error(conf, score.per_example)
    rows = [
        {"example_id": e.id, "input": e.input, "gold": e.output, "prediction": p.text,
         "score": s, "details": {"probs": p.probs, **p.details} if p.probs else p.details}
        for e, p, s in zip(test, preds, score.per_example, strict=True)
    ]
    if baseline is not None and name != "zero_shot":
        # paired bootstrap of the task's own metric (macro-F1 recomputed per resample)
        zero = {str(r["example_id"]): dict(r)
                for r in ctx.store.predictions(ctx.run_id, "zero_shot" + tag)}
        vs = paired_bootstrap(zero, {str(r["example_id"]): r for r in rows}, task.metric)
        result["vs_zero_shot"] = {"diff": vs["diff"], "ci_low": vs["ci_low"],
                                  "ci_high": vs["ci_high"], "p_value": vs["p"]}
    if reference is not None and reference[0] != name:
        vs = paired_bootstrap(reference[1], {str(r["example_id"]): r for r in rows},
                              task.metric)
        result["vs_baseline"] = {"against": reference[0], "diff": vs["diff"],
                                 "ci_low": vs["ci_low"], "ci_high": vs["ci_high"],
                                 "p_value": vs["p"]}
    ctx.store.save_rung(ctx.run_id, name + tag, "done", result, result, rows)
    return result, score.per_example


def meets_target(result: dict[str, Any], target: float) -> bool:
    """A rung meets the target when its measured score reaches it."""
    return result.get("status") == "done" and result["value"] >= target


def model_labels(task: TaskSpec) -> list[str]:
    """Names of the task's models (``models:`` keys, else ``kind:model`` of each backend)."""
    return list(task.model_entries())


def climb(plan: Plan, model: ModelPlan, names: list[str], hooks: Hooks, climb_all: bool
          ) -> list[dict[str, Any]]:
    """One model's ladder: its rungs cheapest first, stopping at the first that meets the
    target (unless ``climb_all``); rungs it cannot serve are listed as skipped."""
    sub = replace(plan, task=model.ctx.task, ctx=model.ctx)
    results: list[dict[str, Any]] = []
    baseline: list[float] | None = None
    reference = first_reference(plan)
    stopped_at: str | None = None
    for name in names:
        if model.spec.rungs is not None and name not in model.spec.rungs:
            continue
        if name in model.skipped:
            results.append({"name": name, "family": family(name), "status": "skipped",
                            "reason": model.skipped[name]})
            continue
        if stopped_at and not climb_all:
            results.append({"name": name, "family": family(name), "status": "not_needed",
                            "reason": f"{stopped_at} already meets the target"})
            continue
        result, per = run_rung(sub, name, hooks, baseline, tag=model.tag, reference=reference)
        if model.tag:
            result["model"] = model.name
        results.append(result)
        hooks.end_rung(result)
        if name == "zero_shot" and per is not None:
            baseline = per
            reference = better_reference(sub, reference, result, model.tag)
        if per is not None and meets_target(result, plan.task.target) and not stopped_at:
            stopped_at = name
    return results


def _marks_failure(run: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A run that raises (bad data mid-run, a bug, Ctrl-C) is marked ``failed`` in the store
    with the reason, instead of staying ``running``; the exception still propagates."""
    import contextlib
    import functools

    @functools.wraps(run)
    def wrapper(task: TaskSpec, store: Store, *args: Any, **kwargs: Any) -> dict[str, Any]:
        before = len(store.started)
        try:
            return run(task, store, *args, **kwargs)
        except BaseException as exc:
            reason = ("interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else
                      redact(f"{type(exc).__name__}: {exc}"))
            for run_id in store.started[before:]:
                # The store itself may be what failed (disk full): keep the real error.
                with contextlib.suppress(Exception):
                    store.fail_run(run_id, reason)
            raise

    return wrapper


@_marks_failure
def run_ladder(task: TaskSpec, store: Store, *, backend: Backend | None = None,
               backends: dict[str, Backend] | None = None,
               hooks: Hooks | None = None, out_dir: Path | None = None,
               climb_all: bool = False, rungs: list[str] | None = None,
               allow_unseen_labels: bool = False) -> dict[str, Any]:
    """Run a task's ladder and return the result (also stored, and written as JSON).

    Args:
        task: the loaded task.
        store: where calls, predictions and results go.
        backend: a ready backend for the first model (tests pass a dummy).
        backends: ready backends by model name (default: built from the task).
        hooks: progress callbacks.
        out_dir: where ``result.json`` and run artefacts go (default ``runs/RUN_ID``).
        climb_all: run every rung even after one meets the target (for comparisons).
        rungs: override the task's rung list.
        allow_unseen_labels: score even when a test label never occurs in train.
    """
    hooks = hooks or Hooks()
    plan = plan_run(task, store, backend, rungs=rungs, backends=backends)
    if not allow_unseen_labels:
        require_seen_labels(plan.report, task)
    for note in plan.report.notes:
        hooks.log(f"data check: {note}")
    estimate = check_budget(plan, hooks.log)
    run_id = store.create_run(task.name, str(task.source) if task.source else None,
                              task.fingerprint(), task.model_dump(mode="json"),
                              plan.ctx.split.ids())
    out_dir = Path(out_dir) if out_dir else Path("runs") / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    for model in plan.models:
        model.ctx.run_id, model.ctx.work_dir = run_id, out_dir
        model.ctx.backend = CachedBackend(model.ctx.backend.inner, store, run_id)
        model.ctx.log = hooks.log
    plan.ctx = plan.models[0].ctx
    names = default_rungs(task) if rungs is None else rungs
    per_model = [climb(plan, model, names, hooks, climb_all) for model in plan.models]
    results = per_model[0]
    from tunewise.verdict import decide

    result = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "task": {"name": task.name, "kind": task.kind, "metric": task.metric,
                 "target": task.target, "source": str(task.source or ""),
                 "fingerprint": task.fingerprint(),
                 "requests_per_day": task.volume.requests_per_day,
                 "latency_ms": task.latency_ms},
        "backend": plan.ctx.backend.id,
        "model": plan.models[0].name,
        "data": plan.report.to_dict(),
        "split": {"seed": task.split.seed, **plan.report.sizes},
        "labels": plan.ctx.labels,
        "baselines": plan.baselines,
        "decision": task.decision.model_dump(mode="json"),
        "rungs": results,
    }
    if len(plan.models) > 1:  # the first model's rungs are the run's own ``rungs``
        result["models"] = [
            {"model": m.name, "backend": m.ctx.backend.id, "price": m.spec.price,
             **({"rungs": per_model[i]} if i else {})}
            for i, m in enumerate(plan.models)]
    from tunewise.training.checks import after_ladder, verdict_notes

    result.update(after_ladder(plan.ctx, results))  # learning curve, forgetting (lora only)
    for i, model in enumerate(plan.models[1:], start=1):  # every other model that trained
        result["models"][i].update(after_ladder(model.ctx, per_model[i], model.tag))
    if task.freshness.run:  # edit corpus facts, re-ask: does the rung follow? (issue 5)
        from tunewise.freshness import ladder_freshness

        result["freshness"] = ladder_freshness(plan, results)
    from tunewise.cost import summarize

    result["usage"] = {**store.run_usage(run_id), "estimated_calls": estimate["calls"],
                       "estimated_tokens": estimate["tokens"]}
    result["cost"] = summarize(result, task)
    result["verdict"] = decide(result, task, store)
    result["verdict"].setdefault("reasons", []).extend(verdict_notes(result))
    from tunewise.cells import add_cells

    add_cells(result, task, store)  # cells, cost matrix, verdict across models
    from tunewise.training.checks import further_model_notes

    result["verdict"].setdefault("reasons", []).extend(further_model_notes(result))
    try:
        result = check_result(result)  # typed and versioned (tunewise.results) before it is kept
    except ValidationError as exc:  # a bug: say so, but never lose a finished run
        err = exc.errors()[0]
        hooks.log(f"result.json does not fit its schema ({'.'.join(map(str, err['loc']))}: "
                  f"{err['msg']}); kept as measured, please report this")
    store.finish_run(run_id, result)
    try:
        write_text_atomic(out_dir / "result.json", json.dumps(result, indent=2, allow_nan=False))
    except TunewiseError as exc:  # e.g. disk full: the stored run is complete, say so
        raise TunewiseError(f"{exc.message}; the run is saved in the store: tunewise show "
                            f"{run_id} --json", path=exc.path) from None
    result["result_path"] = str(out_dir / "result.json")
    return result
