"""Before the run: the model calls, tokens and dollars a plan will take, and the budget
check that stops a run before its first call.

Above the price model (:mod:`tunewise.cost`) and the plan (:mod:`tunewise.runplan`), below
the ladder, which checks the budget before it climbs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tunewise.cost import MILLION, Price, format_usd, model_price, request_cost
from tunewise.errors import BudgetExceeded, TunewiseError
from tunewise.freshness import automatic_edits, rule_questions
from tunewise.plugins import family, rung, rung_names
from tunewise.prompts import system_message
from tunewise.retrieval.chunking import chunk_documents
from tunewise.runplan import Plan
from tunewise.task import TaskSpec
from tunewise.training.curve import curve_sizes
from tunewise.training.forgetting import load_general


def _check_calls(task: TaskSpec, names: list[str], n_test: int, n_train: int, tag: str
                 ) -> dict[str, int]:
    """Calls of one model's checks after the ladder: learning curve, forgetting, preference
    accuracy (keys end with the model's ``tag``, none for the first model)."""
    out: dict[str, int] = {}
    tuned = [n for n in names if family(n) == "fine_tuning"]
    if "lora" in names and task.lora.curve:
        out["learning_curve" + tag] = len(curve_sizes(task.lora.curve, n_train)) * n_test
    if not tuned:
        return out
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
    estimate (:func:`estimate_run`), which the result keeps beside the calls made."""
    limit = plan.task.budget.max_calls
    estimate = estimate_calls(plan)
    if limit is not None and estimate > limit:
        raise BudgetExceeded(
            f"this run needs up to {estimate} model calls but the budget allows {limit}; "
            "raise budget.max_calls, lower split.test, or choose fewer rungs",
            path=plan.task.source, line=plan.task.line_of("budget.max_calls"),
            field="budget.max_calls",
        )
    return check_usd_budget(plan, log)


def _mean_tokens(backend: Any, texts: list[str]) -> float:
    return sum(backend.count_tokens(t) for t in texts) / len(texts) if texts else 0.0


def _turn_tokens(backend: Any, messages: list[dict[str, str]]) -> float:
    """Tokens ``messages`` add to a prompt (measured against a one-word question, since a
    chat template may refuse an empty conversation)."""
    probe = [{"role": "user", "content": "x"}]
    return float(backend.count_tokens(backend.render(messages + probe))
                 - backend.count_tokens(backend.render(probe)))


def estimate_run(plan: Plan) -> dict[str, Any]:
    """A conservative cost estimate of a planned run, made without any model call: the sum
    over the task's models, each priced with its own entry (see :func:`estimate_model`)."""
    if len(plan.models) < 2:
        return estimate_model(plan, model_price(plan.task))
    parts = [estimate_model(replace(plan, task=m.ctx.task, ctx=m.ctx, rungs=m.rungs,
                                    models=[]), model_price(plan.task, m.name), with_checks=not i)
             for i, m in enumerate(plan.models)]  # the checks after the ladder: first model

    def tagged(key: str) -> dict[str, Any]:
        return {name + m.tag: r for m, est in zip(plan.models, parts, strict=True)
                for name, r in est[key].items()}

    return {"price": ", ".join(dict.fromkeys(p["price"] for p in parts)),
            "calls": sum(p["calls"] for p in parts), "tokens": sum(p["tokens"] for p in parts),
            "usd": sum(p["usd"] for p in parts), "rungs": tagged("rungs"),
            "checks": tagged("checks")}


def estimate_model(plan: Plan, price: Price, with_checks: bool = True) -> dict[str, Any]:
    """An estimate of one model's calls, tokens and cost at ``price``, without a model call.

    Calls come from :func:`estimate_breakdown` (rungs, latency timing, few_shot_best's
    dev passes, learning curve, forgetting, freshness). Prompts are sized from real items
    rendered by the backend's chat template: the user turn, the system message, shots (k,
    or the few_shot_best maximum) and, for retrieval, ``retrieval.k`` passages of
    ``retrieval.chunk_tokens`` each, in the question and in each of ``retrieval.shots``
    worked examples. Answers are sized by the training answers (label scoring generates
    nothing). No prefix-cache discount is assumed. Fine-tuning adds its training tokens
    (``lora.epochs`` passes over the training examples).
    """
    task, ctx = plan.task, plan.ctx
    backend = ctx.backend
    sample = ctx.split.test[:20]
    query = _mean_tokens(backend, [backend.render([{"role": "user", "content": e.input}])
                                   for e in sample])
    system = _turn_tokens(backend, [{"role": "system",
                                     "content": system_message(task, ctx.labels)}])
    train = ctx.split.train[:50]
    shot = sum(_turn_tokens(backend, [{"role": "user", "content": e.input},
                                      {"role": "assistant", "content": e.output}])
               for e in train) / max(len(train), 1)
    spec = task.retrieval
    passages = 0.0
    if ctx.corpus:  # k passages of the corpus's real chunk size (short documents: shorter)
        chunks = chunk_documents(ctx.corpus[:200], spec.chunk_tokens, spec.overlap)
        passages = spec.k * _mean_tokens(backend, [c.text for c in chunks])
    part = {"query": query, "system": system, "shots": task.few_shot.k * shot,
            "best_shots": task.few_shot.best_max * shot,
            "passages": passages + spec.shots * (shot + passages)}
    # each rung's prompt is the sum of the parts it declares (RungMeta.prompt)
    prompt = {name: sum(part[p] for p in rung(name).meta.prompt) for name in rung_names()}
    answer = _mean_tokens(backend, [e.output for e in train])
    if ctx.labels:
        completion = float(max(backend.count_tokens(label) for label in ctx.labels))
        generated = 0.0  # label scoring reads log-probs; it generates nothing
    else:
        completion = generated = min(answer, float(task.backend.max_new_tokens))
    calls = estimate_breakdown(plan)
    n_train = len(ctx.split.train)
    rungs: dict[str, dict[str, float]] = {}
    for name in plan.rungs:
        tokens = {"prompt_mean": prompt.get(name, query + system), "completion_mean": completion}
        tuned = family(name) == "fine_tuning"
        usd = calls[name] * request_cost(tokens, price, tuned)["usd"]
        if tuned:
            train_tokens = n_train * task.lora.epochs * (query + answer)
            if price.entry.training_per_1m is not None:
                usd += train_tokens * price.entry.training_per_1m / MILLION
            elif price.entry.compute_per_hour and price.entry.prefill_tokens_per_s:
                # forward + backward is about three forward passes
                hours = 3 * train_tokens / price.entry.prefill_tokens_per_s / 3600
                usd += hours * price.entry.measured_time_scale * price.entry.compute_per_hour
        rungs[name] = {"calls": calls[name], "prompt_tokens": tokens["prompt_mean"],
                       "tokens": calls[name] * (tokens["prompt_mean"] + generated), "usd": usd}
    if "few_shot_knn" in rungs:
        rungs["few_shot_knn"].update(knn_embedding(plan, price))
        rungs["few_shot_knn"]["usd"] += rungs["few_shot_knn"]["embed_usd"]
    checks: dict[str, dict[str, float]] = {}
    check_prompt = {"learning_curve": query, "forgetting": query,
                    "freshness": prompt.get(task.freshness.rung, query)}
    for name in ("learning_curve", "forgetting", "freshness") if with_checks else ():
        if calls.get(name):
            tokens = {"prompt_mean": check_prompt[name], "completion_mean": completion}
            checks[name] = {"calls": calls[name],
                            "tokens": calls[name] * (check_prompt[name] + generated),
                            "usd": calls[name] * request_cost(tokens, price)["usd"]}
    parts = [*rungs.values(), *checks.values()]
    return {"price": price.name, "calls": int(sum(p["calls"] for p in parts)),
            "tokens": int(sum(p["tokens"] for p in parts)),
            "usd": sum(p["usd"] for p in parts), "rungs": rungs, "checks": checks}


# ---- few_shot_knn's upfront work: embedding the training inputs ---------------------------

EMBED_TOKENS_PER_S = 5_000.0
"""Rough throughput of the bundled all-MiniLM-L6-v2 on two CPU cores, in tokens/s (a few
hundred short sentences a second). An assumption for the pre-run estimate only: the run
measures the real time as the rung's upfront seconds."""


def knn_embedding(plan: Plan, price: Price) -> dict[str, float]:
    """What few_shot_knn embeds before and while prompting: every training input once and
    each test input, priced as machine time (``compute_per_hour``; 0 when the entry has
    none). Conservative: texts already in the on-disk embedding memo are counted too."""
    ctx = plan.ctx
    texts = len(ctx.split.train) + len(ctx.split.test)
    per_text = _mean_tokens(ctx.backend, [e.input for e in ctx.split.train[:50]])
    seconds = texts * per_text / EMBED_TOKENS_PER_S
    usd = seconds / 3600 * (price.entry.compute_per_hour or 0.0)
    return {"embed_texts": float(texts), "embed_s": seconds, "embed_usd": usd}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def check_usd_budget(plan: Plan, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Show the estimate, and stop before any model call when it exceeds ``budget.max_usd``.

    Raises:
        BudgetExceeded: the estimate is above the budget (message gives both numbers).
    """
    est = estimate_run(plan)
    limit = plan.task.budget.max_usd
    if log is not None:
        knn = est["rungs"].get("few_shot_knn", {})
        embed = (f"; few_shot_knn first embeds {int(knn['embed_texts']):,} texts (about "
                 f"{_duration(knn['embed_s'])})" if knn.get("embed_s", 0) >= 10 else "")
        log(f"estimate: up to {est['calls']} model calls, about {format_usd(est['usd'])} "
            f"at price '{est['price']}'" + (f" (budget {format_usd(limit)})"
                                            if limit is not None else "") + embed)
    if limit is not None and est["usd"] > limit:
        costly = max(est["rungs"].items(), key=lambda kv: kv[1]["usd"], default=None)
        hint = f"; the costliest rung is {costly[0]} ({format_usd(costly[1]['usd'])})" \
            if costly else ""
        raise BudgetExceeded(
            f"this run is estimated at {format_usd(est['usd'])} ({est['calls']} model calls "
            f"at price '{est['price']}') but budget.max_usd is {format_usd(limit)}{hint}; "
            "nothing was run. Raise the budget, lower split.test, or choose fewer rungs",
            path=plan.task.source, line=plan.task.line_of("budget.max_usd"),
            field="budget.max_usd")
    return est
