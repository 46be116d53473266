"""Stop rule, diagnosis and verdict: which rung to use, and why, in numbers from the run.

The choice, in order (thresholds from ``task.decision``, see ``tunewise.policy``):

1. among the rungs that meet the target, the cheapest by total cost over
   ``decision.horizon_days`` (upfront + daily cost x days) wins; on a cost tie, the one
   without forgetting or freshness risk, then the one lower on the ladder;
2. but when that rung is a fine-tuning rung and the best prompting rung reaches
   ``decision.prompting_enough`` (90%) of the target, prompting is enough: improve the
   prompt before paying for training (the lesson's "best shots vs held-out" check);
3. when nothing meets the target: the same 90% rule for prompting; otherwise every rung
   whose paired difference from the best rung has a 95% CI including 0 is *tied* with it,
   and the cheapest tied rung wins (cost ties again go to the safer rung).

Every comparison the verdict states is a paired bootstrap of the task's own metric
(``tunewise.comparisons``), listed in ``verdict.comparisons`` and cited by id ("#2") in
the sentences that rest on it; the family is Holm-adjusted.

The diagnosis (``tunewise.diagnosis``) has three outcomes besides "none": a *knowledge*
gap, a *behaviour* (format) gap and *reader capacity*. Next steps follow only from this
run's numbers, refusals and thresholds.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tunewise.comparisons import describe, finish, tied
from tunewise.cost import format_days, format_usd
from tunewise.diagnosis import (
    Evidence,
    best_of,
    curve_slope,
    diagnose,
    error_types,
    flipped,
    format_problem,
    training_state,
)
from tunewise.results import RungResult, RunResult, load_result
from tunewise.task import TaskSpec

if TYPE_CHECKING:
    from tunewise.store import Store

__all__ = ["GAP_TEXT", "decide", "gap_text", "diagnose", "error_types", "format_problem"]

COST_TIE = 0.01  # totals within 1% of each other are a cost tie
GAP_TEXT = {
    "knowledge": "Diagnosis: a knowledge gap (retrieval helps).",
    "behaviour": "Diagnosis: a behaviour (format) gap (tuning or format work helps).",
    "both": "Diagnosis: both knowledge and behaviour are missing.",
    "reader": "Diagnosis: reader capacity: retrieval finds the answers but the model does "
              "not use them well; a larger model is the lever.",
    "unclear": "Diagnosis unclear: {tried} did not help significantly.",
    "unmeasured": "The gap is not measured yet: only prompting rungs ran.",
    "none": "",
}


def tried_text(diag: dict[str, Any]) -> str:
    """What the run tried beyond prompting, as words ("retrieval and fine-tuning")."""
    return " and ".join(diag.get("tried") or ["retrieval", "fine-tuning"])


def gap_text(diag: dict[str, Any]) -> str:
    """The verdict's diagnosis sentence, naming only what the run tried."""
    text = GAP_TEXT[diag["gap"]]
    return text.format(tried=tried_text(diag)) if "{tried}" in text else text


# ---- the choice ----------------------------------------------------------------------------


def _cheapest(ev: Evidence, names: list[str]) -> tuple[str, str]:
    """The cheapest of ``names`` by total cost over the horizon; cost ties go to the rung
    without risk, then to the lower rung. Returns (name, how it was chosen)."""
    order = [r.name for r in ev.done]
    known = [n for n in names if ev.cost_of(n) is not None]
    if not known:
        return min(names, key=order.index), "ladder order (no cost figures)"
    low = min(ev.cost_of(n) for n in known)
    close = [n for n in known if ev.cost_of(n) <= low * (1 + COST_TIE) + 1e-12]
    pick = min(close, key=lambda n: (ev.risk(n) is not None, order.index(n)))
    how = "cheapest"
    if len(close) > 1:
        others = [n for n in close if n != pick]
        how = (f"costs tie with {', '.join(others)}; "
               + ("it carries no forgetting or freshness risk" if any(ev.risk(n) for n in others)
                  else "it is lower on the ladder"))
    return pick, how


def _too_slow(r: RungResult, task: TaskSpec) -> bool:
    """Single-request p95 measured above the task's ``latency_ms`` target."""
    single = r.latency
    return bool(task.latency_ms and single and single.single_p95_ms is not None
                and single.single_p95_ms > task.latency_ms)


def _choose(ev: Evidence) -> tuple[str, RungResult | None, list[str], list[str]]:
    """(rule, chosen rung, tied rung names, sentences about the choice)."""
    task, pol = ev.task, ev.policy
    done = ev.done
    if not done:
        return "nothing_ran", None, [], []
    notes: list[str] = []
    meeting = [r.name for r in done if r.value >= task.target]
    best_prompt = best_of([r for r in done if r.family == "prompting"])
    prompting_ok = best_prompt is not None and \
        best_prompt.value >= pol.prompting_enough * task.target
    if meeting:
        slow = [n for n in meeting if _too_slow(ev.by_name[n], task)]
        if slow and len(slow) < len(meeting):  # meeting the latency target too comes first
            meeting = [n for n in meeting if n not in slow]
            notes.append(f"{', '.join(slow)} also meet the quality target but their "
                         f"single-request p95 is above the {task.latency_ms:g} ms target")
        name, how = _cheapest(ev, meeting)
        chosen = ev.by_name[name]
        others_meet = any(ev.by_name[n].family != "fine_tuning" for n in meeting)
        if chosen.family == "fine_tuning" and prompting_ok and not others_meet:
            return "prompting_enough", best_prompt, [], notes
        if len(meeting) > 1 and ev.cost_of(name) is not None:
            notes.append(f"of the {len(meeting)} rungs that meet the target, {name} costs the "
                         f"least over {ev.horizon:g} days ({format_usd(ev.cost_of(name))} "
                         f"upfront + daily); {how}")
        return "target_met", chosen, [], notes
    top = best_of(done)
    if prompting_ok:
        pool = [r for r in done if r.family == "prompting"]
        top_p = best_prompt
        tied_p = [top_p.name] + [r.name for r in pool if r.name != top_p.name and
                                 (c := ev.compare(r.name, top_p.name, "vs the best "
                                                  "prompting rung (tie test)")) and tied(c)]
        name, _ = _cheapest(ev, tied_p)
        return "prompting_enough", ev.by_name[name], tied_p if len(tied_p) > 1 else [], notes
    tied_names = [top.name]
    for r in done:
        if r.name == top.name:
            continue
        c = ev.compare(r.name, top.name, "vs the best rung (tie test)")
        if c is not None and tied(c):
            tied_names.append(r.name)
    name, how = _cheapest(ev, tied_names)
    if name != top.name:
        c = ev.compare(name, top.name, "vs the best rung (tie test)")
        saving = (ev.cost_of(top.name) or 0) - (ev.cost_of(name) or 0)
        risk = ev.risk(top.name)
        notes.append(
            f"{top.name} scores {top.value - ev.by_name[name].value:+.3f} over {name}, but the "
            f"difference is not significant {describe(c)}: they are tied, and {name} is "
            + (f"{format_usd(saving)} cheaper over {ev.horizon:g} days" if saving > 0
               else how)
            + (f"; {top.name} also carries a risk: {risk}" if risk else "")
            + f", so {name} is the choice")
    return "none_meets", ev.by_name[name], tied_names if len(tied_names) > 1 else [], notes


# ---- verdict -------------------------------------------------------------------------------


def _ci(r: RungResult) -> str:
    return f"95% CI {r.ci_low:.3f}-{r.ci_high:.3f}"


def _cost_line(name: str, res: RunResult, horizon: float) -> str | None:
    cost = res.cost
    c = cost.rungs.get(name) if cost else None
    if not c:
        return None
    price = cost.price
    tag = ", example prices" if price.get("example") else ""
    return (f"{name} costs {format_usd(c.per_1k)} per 1,000 requests, "
            f"{format_usd(c.daily)}/day at {cost.requests_per_day:,} requests/day, "
            f"{format_usd(c.upfront)} upfront, {format_usd(c.total(horizon))} over "
            f"{horizon:g} days (price '{price.get('name')}', {price.get('as_of')}{tag})")


def _latency_line(r: RungResult, task: TaskSpec) -> str | None:
    single = r.latency
    if single is not None and single.single_p95_ms is not None:
        text = (f"single-request latency p50 {single.single_p50_ms:.0f} ms, p95 "
                f"{single.single_p95_ms:.0f} ms ({single.n} requests at batch 1"
                + (", replayed from the cache, not timed again" if single.replayed else "")
                + ")")
        if task.latency_ms:
            ok = single.single_p95_ms <= task.latency_ms
            text += f", {'within' if ok else 'above'} the {task.latency_ms:g} ms p95 target"
        return text + " on this run's hardware"
    lat = r.latency_ms
    if lat is None:
        return None
    return (f"per-item time p50 {lat.p50:.0f} ms, p95 {lat.p95:.0f} ms (batched: a throughput "
            "figure, not single-request latency)")


def _combination(name: str) -> list[str]:
    return {"lora_rag": ["lora", "rag"], "lora_system_prompt": ["lora", "system_prompt"]
            }.get(name, [name])


def decide(result: dict[str, Any] | RunResult, task: TaskSpec, store: Store | None = None
           ) -> dict[str, Any]:
    """The verdict of a run: rung, reasons with numbers, rejected options, what next.

    Args:
        result: the run's result (``rungs`` and, if computed, ``cost``).
        task: the task (target, metric, kind, ``decision`` thresholds).
        store: per-example rows, for the paired comparisons and the format check. Without
            it no comparison can be tested, and the verdict says so.
    """
    res = load_result(result)
    if res.cost is None and res.done() and all(r.tokens for r in res.done()):
        from tunewise.cost import summarize

        res.cost = load_result({**res.to_json(), "cost": summarize(res.to_json(), task)}).cost
    ev = Evidence(res, task, store)
    pol = ev.policy
    target, metric = task.target, task.metric
    errors = error_types(res, task, store)
    # Two passes: the first states every comparison the verdict will cite, so the family
    # can be Holm-adjusted as a whole; the second words the sentences with the results.
    for final in (False, True):
        if final:
            finish(ev.comparisons, pol.alpha)
        rule, chosen, tied_names, choice_notes = _choose(ev)
        if chosen is None:
            break
        others = [r for r in ev.done if r.name != chosen.name]
        runner = best_of(others)
        c_runner = ev.compare(runner.name, chosen.name, "chosen vs runner-up") \
            if runner else None
        base = ev.add_baseline()
        ref = base["name"] if base else ("zero_shot" if "zero_shot" in ev.by_name and
                                         chosen.name != "zero_shot" else None)
        c_ref = ev.compare(ref, chosen.name, "chosen vs the better of baseline and "
                           "zero-shot") if ref else None
        for combo in ("lora_rag", "lora_system_prompt"):
            if combo in ev.by_name:
                for part in _combination(combo):
                    if part in ev.by_name:
                        ev.compare(part, combo, "combination vs its part")
        diag = diagnose(ev, errors)
        if not final:
            _forgetting_comparison(ev)
    if any("id" not in c for c in ev.comparisons):  # defensive: both passes state the same
        finish(ev.comparisons, pol.alpha)
    comparisons = ev.comparisons
    n_train = int(res.split.get("train", 0) or 0)
    meeting = [r.name for r in ev.done if r.value >= target]
    skipped = [r for r in res.rungs if not r.done]
    if chosen is None:
        return {"rung": None, "meets_target": False, "rule": rule, "met_target": [],
                "summary": "No rung ran, so there is nothing to recommend yet.",
                "reasons": [f"{r.name}: {r.reason or r.status}" for r in skipped]
                or ["no rung ran"], "rejected": [], "comparisons": [],
                "next": ["fix the reasons above and run again"]}
    name, value = chosen.name, chosen.value
    share = value / target if target else 1.0

    reasons = [f"{name} scores {metric} {value:.3f} ({_ci(chosen)}), "
               + ("meeting the target " if value >= target else f"{share:.0%} of the target ")
               + f"{target:g}"]
    if c_ref is not None:
        what = (f"always answering '{base['label']}' ({base['name']}, {base['value']:.3f})"
                if base else "zero_shot")
        if c_ref["significant"] and c_ref["diff"] > 0:
            reasons.append(f"that is {c_ref['diff']:+.3f} over {what} on the same "
                           f"{c_ref['n']} test items {describe(c_ref)}")
        else:
            reasons.append(f"it is not significantly better than {what} "
                           f"{describe(c_ref)}: no rung here is shown to be useful yet")
    if c_runner is not None:
        if c_runner["diff"] >= 0:
            reasons.append(f"against the runner-up {runner.name} ({runner.value:.3f}) it is "
                           f"{c_runner['diff']:+.3f} {describe(c_runner)}")
        elif runner.name not in tied_names:  # a tie is worded by the choice rule below
            reasons.append(f"{runner.name} scores {-c_runner['diff']:+.3f} more "
                           f"({runner.value:.3f}) {describe(flipped(c_runner))}")
    elif runner is not None:
        reasons.append(f"the best other rung, {runner.name}, scores {runner.value:.3f} "
                       f"({runner.value - value:+.3f}; no per-item rows, so not tested)")
    if chosen.degenerate:
        reasons.append(f"{name} gives the same answer for over 90% of the items (flagged "
                       "degenerate): its score says little about the task")
    reasons.extend(choice_notes)
    line = _cost_line(name, res, ev.horizon)
    if line:
        reasons.append(line)
    line = _latency_line(chosen, task)
    if line:
        reasons.append(line)
    if rule == "prompting_enough":
        reasons.append(f"{name} reaches {share:.0%} of the target, at or above the "
                       f"{pol.prompting_enough:.0%} line (decision.prompting_enough) where "
                       "better prompting usually closes the rest more cheaply than training")
    reasons.extend(diag["evidence"])
    cost = res.cost
    for pair in (cost.break_even.pairs if cost else []):
        if name in (pair.a, pair.b) and ({pair.a, pair.b} - {name}) <= set(meeting):
            reasons.append(f"break-even at {cost.requests_per_day:,}/day: {pair.text}")

    rejected = _rejected(ev, res, name, rule, share, tied_names)
    nxt = _next_steps(ev, rule, chosen, diag, n_train)
    summary = {
        "target_met": f"Use {name}: the cheapest rung that meets the target "
                      f"({metric} {value:.3f} >= {target:g}) over {ev.horizon:g} days.",
        "prompting_enough": f"Prompting is enough: {name} reaches {share:.0%} of the target; "
                            "improve the prompt before paying for fine-tuning.",
        "none_meets": f"No rung meets the target {target:g}; "
                      + (f"{name} is the cheapest of the rungs tied for best "
                         f"({', '.join(tied_names)}) " if len(tied_names) > 1 else
                         f"{name} comes closest ")
                      + f"({value:.3f}, {share:.0%} of it). " + gap_text(diag),
    }[rule]
    if c_ref is not None and not (c_ref["significant"] and c_ref["diff"] > 0) and base:
        summary += (f" Caution: {name} is not significantly better than always answering "
                    f"'{base['label']}'.")
    return {
        "rung": name, "combination": _combination(name), "meets_target": value >= target,
        "rule": rule, "met_target": meeting, "summary": summary.strip(), "reasons": reasons,
        "rejected": rejected, "next": nxt, "diagnosis": diag, "tied": tied_names,
        "choice": {"rung": name, "model": chosen.model},
        "comparisons": comparisons,
        "multiple_comparisons": f"Holm over the {len(comparisons)} comparisons stated, "
                                f"family-wise alpha {pol.alpha:g}; ties use the unadjusted "
                                "95% CI",
        "break_even": [p.text for p in (cost.break_even.pairs if cost else [])],
    }


def _forgetting_comparison(ev: Evidence) -> None:
    """The forgetting check's own paired test (base vs tuned), stated with the family."""
    f = ev.res.forgetting
    if f is None or f.diff is None or f.diff_ci_low is None or f.diff_ci_high is None:
        return
    ev.comparisons.append({
        "a": "base model", "b": f"{f.rung} (tuned)", "metric": f.metric or "general set",
        "diff": f.diff, "ci_low": f.diff_ci_low, "ci_high": f.diff_ci_high,
        "p": f.p_value if f.p_value is not None else 1.0, "n": f.n,
        "purpose": "forgetting: base vs tuned on the general set"})


def _rejected(ev: Evidence, res: RunResult, name: str, rule: str, share: float,
              tied_names: list[str]) -> list[str]:
    target = ev.task.target
    chosen = ev.by_name[name]
    out: list[str] = []
    for r in res.rungs:
        other = r.name
        if other == name:
            continue
        if not r.done:
            out.append(f"{other}: {r.status} ({r.reason})")
            continue
        c = next((x for x in ev.comparisons if (x["a"], x["b"]) == (name, other)), None)
        extra = ev.cost_of(other)
        mine = ev.cost_of(name)
        if r.value < target:
            why = f"{other}: {r.value:.3f}, below the target {target:g}"
            if r.value > chosen.value:
                why += f" (though {r.value - chosen.value:+.3f} over {name}"
                why += f" {describe(c)})" if c else ")"
            if other in tied_names:
                why += "; tied with the best but costlier"
        elif rule == "prompting_enough" and r.family == "fine_tuning":
            c_cost = res.cost.rungs.get(other) if res.cost else None
            why = (f"{other}: meets the target ({r.value:.3f}) but prompting already "
                   f"reaches {share:.0%} of it; training adds "
                   f"{format_usd(c_cost.upfront if c_cost else 0.0)} upfront and retraining")
        else:
            why = f"{other}: also meets the target ({r.value:.3f})"
        if extra is not None and mine is not None and extra > mine:
            why += f", and {format_usd(extra - mine)} more over {ev.horizon:g} days"
        risk = ev.risk(other)
        if risk:
            why += f"; {risk}"
        if _too_slow(r, ev.task):
            why += (f"; single-request p95 {r.latency.single_p95_ms:.0f} ms is above the "
                    f"{ev.task.latency_ms:g} ms target")
        out.append(why)
    return out


def _next_steps(ev: Evidence, rule: str, chosen: RungResult, diag: dict[str, Any],
                n_train: int) -> list[str]:
    """What to try next, only from this run's numbers, refusals and thresholds."""
    task, pol, res = ev.task, ev.policy, ev.res
    name = chosen.name
    gap_points = task.target - chosen.value
    steps: list[str] = []
    refused = {r.name: r.reason for r in res.rungs
               if r.family == "fine_tuning" and r.status == "skipped"}
    ran_tuned = [r for r in ev.done if r.family == "fine_tuning"]
    # fine-tuning needs the weights (the local backend) and enough examples
    can_tune = n_train >= pol.min_examples and not refused and task.backend.kind == "local"
    if rule == "target_met":
        steps.append(f"ship {name}; re-run tunewise when the data or the model changes")
        if chosen.family == "retrieval" and task.cost.reindex_every_days:
            steps.append(f"keep the index current (re-index every "
                         f"{task.cost.reindex_every_days:g} days as priced)")
        if chosen.family == "fine_tuning" and task.cost.retrain_every_days:
            steps.append(f"plan retraining every {task.cost.retrain_every_days:g} days and "
                         "re-check forgetting each time")
    elif rule == "prompting_enough":
        steps.append(f"close the last {gap_points:.3f} {task.metric} with the prompt: "
                     "sharper instructions in task.yaml, more or better-chosen shots "
                     "(few_shot_best), then re-run")
        tuned = [r for r in ran_tuned if r.value >= task.target]
        if tuned:
            steps.append(f"if prompting stalls, {tuned[0].name} meets the target "
                         f"({tuned[0].value:.3f}): see its break-even above")
    else:
        gap = diag["gap"]
        if gap == "reader":
            steps.append(f"try a larger model (backend.model): retrieval already finds the "
                         f"answer-bearing passages (recall@{diag.get('recall_k')} "
                         f"{diag.get('recall', 0):.2f}) but the model does not use them")
        if gap in ("knowledge", "both"):
            rec = diag.get("recall")
            if rec is not None and rec < pol.high_recall:
                steps.append(f"improve retrieval: recall@{diag.get('recall_k')} is {rec:.2f} "
                             "(corpus coverage, chunking, top-k, retrieval.method)")
            else:
                steps.append("keep retrieval and work on what the model does with the "
                             "passages (prompt, more passages, or a larger model)")
        if gap in ("behaviour", "both"):
            if refused or n_train < pol.min_examples:
                steps.append(f"fine-tuning would teach the format but needs at least "
                             f"{pol.min_examples} training examples (decision.min_examples); "
                             f"this run has {n_train}: collect more, or state the format in "
                             "instructions and shots")
            else:
                steps.append("fine-tune (lora), or combine it with retrieval (lora_rag) "
                             "if facts are also missing")
        if diag.get("under_trained"):
            tuned = ev.by_name.get("lora") or ev.by_name.get("lora_system_prompt")
            state = training_state(tuned) if tuned else {}
            what = ("raise lora.max_steps (it stopped at "
                    f"{state.get('steps')} steps)" if state.get("stopped_by") == "max_steps"
                    else f"raise lora.epochs (it ran {state.get('epochs')})")
            steps.append(f"the adapter is under-trained: {what} so training runs until the "
                         "dev loss stops falling, then re-run")
        for r in ran_tuned:
            slope = curve_slope(r)
            if slope is not None:
                per100, n = slope
                steps.append(f"{r.name}'s learning curve gains {per100:+.3f} {task.metric} per "
                             f"100 examples at {n} examples: "
                             + ("more labelled data should help" if per100 > pol.min_gain / 2
                                else "more of the same data is unlikely to close the gap"))
        if gap == "unclear":
            steps.append(f"{tried_text(diag)} did not move the score significantly: "
                         "check label quality and the target, then try a larger model "
                         "(backend.model)")
        if gap == "unmeasured":
            can = []
            if task.corpus is not None:
                can.append("rag (knowledge gap: retrieval helps)")
            if can_tune:
                can.append("lora (behaviour gap: training helps)")
            if can:
                steps.append("only prompting rungs ran: run " + " and ".join(can))
            else:
                steps.append("only prompting rungs could run here: improve instructions and "
                             "shots, or try a larger model (backend.model)")
        if task.corpus is None and task.kind == "qa" and gap in ("unclear", "unmeasured"):
            steps.append("answers need facts the model may not have: add a corpus "
                         "(task.yaml corpus:) to measure retrieval")
        for rung, why in refused.items():
            steps.append(f"{rung} was not run: {why}")
            break
        if not ran_tuned and not refused and n_train < pol.min_examples:
            steps.append(f"with {n_train} training examples fine-tuning is not advised "
                         f"(fewer than {pol.min_examples}, decision.min_examples)")
    cost = res.cost
    if cost is not None:
        met = set(cost.met_target)
        paying = [p for p in cost.break_even.pairs if p.days is not None and p.days > 0
                  and {p.a, p.b} <= met]
        if paying:
            soonest = min(paying, key=lambda p: p.days)
            steps.append(f"at {cost.requests_per_day:,} requests/day {soonest.b} repays "
                         f"its extra upfront over {soonest.a} in {format_days(soonest.days)}"
                         "; check this with your real prices (tunewise cost --price)")
    return [re.sub(r"\s+", " ", s) for s in dict.fromkeys(steps)]
