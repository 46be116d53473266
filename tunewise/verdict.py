"""Stop rule, diagnosis and verdict: which rung to use, and why, in numbers from the run.

The stop rule, in order:

1. the cheapest rung (ladder order) that meets the target wins, unless it is a
   fine-tuning rung;
2. otherwise, if the best prompting rung reaches 90% of the target, prompting is enough:
   improve the prompt before paying for training (the "20 best shots vs held-out" check
   practitioners use before fine-tuning);
3. otherwise the cheapest fine-tuning rung that meets the target wins;
4. otherwise nothing meets the target, and the verdict names the closest rung and what
   the diagnosis says to try next.

The diagnosis separates a *knowledge* gap (retrieval gains over few-shot, answers follow
a corpus edit) from a *behaviour* gap (fine-tuning gains over few-shot, answers outside the
expected format). Every reason quotes a number measured in the run. The fine-tuning checks
(learning curve, forgetting) word their own reasons (``training.checks.verdict_notes``);
here forgetting only marks a rejected fine-tuned rung.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from tunewise.advisor import FEW_EXAMPLES, MIN_EXAMPLES
from tunewise.answers import format_problem as answer_format_problem
from tunewise.answers import gold_keys
from tunewise.cost import format_days, format_usd
from tunewise.task import TaskSpec

if TYPE_CHECKING:
    from tunewise.store import Store

PROMPTING_ENOUGH = 0.9  # best prompting rung >= 90% of target: improve prompts, don't tune
CLEAR_GAIN = 0.05  # a gain in metric points below this is not evidence of a gap
FORMAT_SHARE = 0.2  # this share of wrong answers off-format points to a behaviour gap
FOLLOWS_EDIT = 0.5  # share of answers following a corpus edit that shows retrieval works
FORGETTING_DROP = 0.05  # general-set drop that flags a fine-tuned rung
GAP_TEXT = {
    "knowledge": "Diagnosis: a knowledge gap (retrieval helps).",
    "behaviour": "Diagnosis: a behaviour gap (training or format helps).",
    "both": "Diagnosis: both knowledge and behaviour are missing.",
    "unclear": "Diagnosis unclear: neither retrieval nor fine-tuning helped clearly.",
    "unmeasured": "The gap is not measured yet: only prompting rungs ran.",
    "none": "",
}


# ---- error types ---------------------------------------------------------------------------


def format_problem(prediction: str, gold: str, kind: str, text: str = "",
                   known_fields: set[str] | None = None) -> str | None:
    """Why an answer is outside the expected format (see :func:`answers.format_problem`)."""
    return answer_format_problem(prediction, gold, kind, text, known_fields)


def error_types(result: dict[str, Any], task: TaskSpec, store: Store | None
                ) -> dict[str, dict[str, Any]]:
    """Per rung: wrong answers, and how many of them are format errors rather than content.

    Classification counts come from the score alone (every answer is a label); other kinds
    read the per-example rows from the store, when it is given.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in _done(result):
        if task.kind == "classification":
            wrong = round((1 - r["value"]) * r["n"]) if task.metric == "accuracy" else None
            out[r["name"]] = {"wrong": wrong, "format_errors": 0, "share_of_wrong": 0.0,
                              "kinds": {}}
            continue
        if store is None or not result.get("run_id"):
            continue
        rows = store.predictions(result["run_id"], r["name"])
        if not rows:
            continue
        known = gold_keys(row["gold"] for row in rows)
        kinds: dict[str, int] = {}
        wrong = 0
        for row in rows:
            if row["score"] >= 1.0:
                continue
            wrong += 1
            why = format_problem(row["prediction"], row["gold"], task.kind, row["input"], known)
            if why:
                kinds[why] = kinds.get(why, 0) + 1
        bad = sum(kinds.values())
        out[r["name"]] = {"wrong": wrong, "format_errors": bad,
                          "share_of_wrong": bad / wrong if wrong else 0.0, "kinds": kinds}
    return out


# ---- optional checks run by other parts of the ladder -------------------------------------

_SHARE_KEYS = ("followed_share", "follow_rate", "share_followed", "share", "value")
_DIFF_KEYS = ("diff", "delta", "change")


def _number(block: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if isinstance(block.get(key), int | float) and not isinstance(block[key], bool):
            return float(block[key])
    return None


def _per_rung(block: Any, keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Normalise ``{rung: number | {..}}``, ``{"rungs": {...}}`` or one flat block."""
    if not isinstance(block, dict):
        return {}
    if isinstance(block.get("rungs"), dict):
        return _per_rung(block["rungs"], keys)
    if _number(block, keys) is not None:
        return {str(block.get("rung", "")): {**block, "_value": _number(block, keys)}}
    out = {}
    for name, item in block.items():
        if isinstance(item, int | float) and not isinstance(item, bool):
            out[name] = {"_value": float(item)}
        elif isinstance(item, dict) and _number(item, keys) is not None:
            out[name] = {**item, "_value": _number(item, keys)}
    return out


def freshness(result: dict[str, Any]) -> dict[str, float]:
    """Share of answers that follow an edited corpus fact, per rung (if the test ran)."""
    return {k or "rag": v["_value"] for k, v in
            _per_rung(result.get("freshness"), _SHARE_KEYS).items()}


def forgetting(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """General-set change of each fine-tuned rung against the base model (if checked)."""
    out = {}
    for name, item in _per_rung(result.get("forgetting"), _DIFF_KEYS).items():
        diff = item["_value"]
        flagged = item.get("flagged")
        if not isinstance(flagged, bool):
            high = item.get("ci_high")
            flagged = diff <= -FORGETTING_DROP and (high is None or high < 0)
        out[name or "lora"] = {"diff": diff, "ci_low": item.get("ci_low"),
                               "ci_high": item.get("ci_high"), "flagged": flagged}
    return out


# ---- diagnosis -----------------------------------------------------------------------------


def _done(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result.get("rungs", []) if r.get("status") == "done"]


def _best(rungs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(rungs, key=lambda r: r["value"]) if rungs else None


def diagnose(result: dict[str, Any], task: TaskSpec,
             errors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Knowledge gap, behaviour gap, both, none, unclear or unmeasured, with the evidence."""
    done = _done(result)
    by_name = {r["name"]: r for r in done}
    metric = task.metric
    prompting = [r for r in done if r["family"] == "prompting"]
    few = _best([r for r in prompting if r["name"].startswith("few_shot")]) or _best(prompting)
    knowledge: list[str] = []
    behaviour: list[str] = []
    evidence: list[str] = []
    out: dict[str, Any] = {"baseline": few["name"] if few else None}
    rag = by_name.get("rag")
    tuned = by_name.get("lora") or by_name.get("lora_system_prompt")
    if few and rag:
        gain = rag["value"] - few["value"]
        out["rag_gain"] = gain
        line = f"retrieval (rag) changes {metric} by {gain:+.3f} over {few['name']}"
        (knowledge if gain >= CLEAR_GAIN else evidence).append(
            line + (": missing knowledge" if gain >= CLEAR_GAIN else ": no sign of a "
                    "knowledge gap"))
    if few and tuned:
        gain = tuned["value"] - few["value"]
        out["lora_gain"] = gain
        line = f"fine-tuning ({tuned['name']}) changes {metric} by {gain:+.3f} over {few['name']}"
        (behaviour if gain >= CLEAR_GAIN else evidence).append(
            line + (": a behaviour the prompt could not teach" if gain >= CLEAR_GAIN
                    else ": training adds little"))
    if few and few["name"] in errors:
        e = errors[few["name"]]
        if task.kind == "classification":
            if e["wrong"] is not None:
                evidence.append(f"label scoring keeps every answer in the label set, so all "
                                f"{e['wrong']} wrong answers of {few['name']} are wrong "
                                "content, not format")
        elif e["wrong"]:
            line = (f"{e['share_of_wrong']:.0%} of {few['name']}'s wrong answers "
                    f"({e['format_errors']} of {e['wrong']}) are outside the expected format")
            if e["share_of_wrong"] >= FORMAT_SHARE:
                tuned_e = errors.get(tuned["name"]) if tuned else None
                if tuned_e and tuned_e["wrong"] is not None:
                    line += (f"; {tuned['name']} has {tuned_e['format_errors']} "
                             "format errors")
                behaviour.append(line)
            else:
                knowledge_or_content = line + ": mostly wrong content"
                evidence.append(knowledge_or_content)
        out["format_errors"] = {k: v for k, v in errors.items()}
    fresh = freshness(result)
    if fresh:
        out["freshness"] = fresh
        parts = ", ".join(f"{k} {v:.0%}" for k, v in fresh.items())
        line = f"after a corpus edit, answers that follow the edit: {parts}"
        if any(v >= FOLLOWS_EDIT for k, v in fresh.items() if "rag" in k):
            knowledge.append(line + " (retrieval keeps facts current; weights do not)")
        else:
            evidence.append(line)
    if few and few["value"] >= task.target:
        gap = "none"
    elif knowledge and behaviour:
        gap = "both"
    elif knowledge:
        gap = "knowledge"
    elif behaviour:
        gap = "behaviour"
    elif rag is None and tuned is None:
        gap = "unmeasured"  # only prompting ran: nothing yet tells knowledge from behaviour
    else:
        gap = "unclear"
    out.update(gap=gap, knowledge=knowledge, behaviour=behaviour,
               evidence=knowledge + behaviour + evidence)
    return out


# ---- verdict -------------------------------------------------------------------------------


def _ci(r: dict[str, Any]) -> str:
    return f"95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f}"


def _cost_line(name: str, cost: dict[str, Any]) -> str | None:
    c = (cost.get("rungs") or {}).get(name)
    if not c:
        return None
    price = cost["price"]
    tag = ", example prices" if price.get("example") else ""
    return (f"{name} costs {format_usd(c['per_1k'])} per 1,000 requests, "
            f"{format_usd(c['daily'])}/day at {cost['requests_per_day']:,} requests/day, "
            f"{format_usd(c['upfront'])} upfront (price '{price['name']}', "
            f"{price['as_of']}{tag})")


def _pairs_with(name: str, cost: dict[str, Any]) -> list[dict[str, Any]]:
    pairs = (cost.get("break_even") or {}).get("pairs", [])
    return [p for p in pairs if name in (p["a"], p["b"])]


def _rule(done: list[dict[str, Any]], target: float) -> tuple[str, dict[str, Any] | None]:
    """The stop rule (see the module docstring): (rule name, chosen rung)."""
    meeting = [r for r in done if r["value"] >= target]
    first = meeting[0] if meeting else None
    best_prompt = _best([r for r in done if r["family"] == "prompting"])
    if first and first["family"] != "fine_tuning":
        return "target_met", first
    if best_prompt and best_prompt["value"] >= PROMPTING_ENOUGH * target:
        return "prompting_enough", best_prompt
    if first:
        return "target_met", first
    if not done:
        return "nothing_ran", None
    top = max(r["value"] for r in done)
    return "none_meets", next(r for r in done if r["value"] == top)  # cheapest of the best


def _combination(name: str) -> list[str]:
    return {"lora_rag": ["lora", "rag"], "lora_system_prompt": ["lora", "system_prompt"]
            }.get(name, [name])


def decide(result: dict[str, Any], task: TaskSpec, store: Store | None = None
           ) -> dict[str, Any]:
    """The verdict of a run: rung, reasons with numbers, rejected options, what next.

    Args:
        result: the run's result dict (``rungs`` and, if computed, ``cost``).
        task: the task (target, metric, kind).
        store: gives per-example rows for error types of generation tasks (optional).
    """
    done = _done(result)
    target, metric = task.target, task.metric
    cost = result.get("cost")
    if cost is None and done and all("tokens" in r for r in done):
        from tunewise.cost import summarize

        cost = summarize(result, task)
    cost = cost or {}
    rule, chosen = _rule(done, target)
    n_train = int((result.get("split") or {}).get("train", 0) or 0)
    meeting = [r["name"] for r in done if r["value"] >= target]
    skipped = [r for r in result.get("rungs", []) if r.get("status") != "done"]
    if chosen is None:
        return {"rung": None, "meets_target": False, "rule": rule, "met_target": [],
                "summary": "No rung ran, so there is nothing to recommend yet.",
                "reasons": [f"{r['name']}: {r.get('reason', r.get('status'))}"
                            for r in skipped] or ["no rung ran"],
                "rejected": [], "next": ["fix the reasons above and run again"]}
    errors = error_types(result, task, store)
    diag = diagnose(result, task, errors)
    name, value = chosen["name"], chosen["value"]
    share = value / target if target else 1.0
    by_name = {r["name"]: r for r in done}

    reasons = [f"{name} scores {metric} {value:.3f} ({_ci(chosen)}), "
               + ("meeting the target " if value >= target else f"{share:.0%} of the target ")
               + f"{target:g}"]
    vs = chosen.get("vs_baseline") or chosen.get("vs_zero_shot")
    if vs:
        against = vs.get("against", "zero_shot")
        against = "the majority class" if against == "majority" else \
            "the most common answer" if against == "most_common" else against
        reasons.append(f"that is {vs['diff']:+.3f} over {against} on the same "
                       f"{chosen['n']} test items (paired bootstrap p = {vs['p_value']:.3g})")
    else:
        others = [r for r in done if r["name"] != name]
        if others:
            alt = _best(others)
            reasons.append(f"the best other rung, {alt['name']}, scores {alt['value']:.3f} "
                           f"({alt['value'] - value:+.3f})")
    line = _cost_line(name, cost)
    if line:
        reasons.append(line)
    lat = chosen.get("latency_ms") or {}
    if lat:
        text = f"latency p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms"
        if task.latency_ms:
            ok = lat["p95"] <= task.latency_ms
            text += f" ({'within' if ok else 'above'} the {task.latency_ms:g} ms target)"
        reasons.append(text + " on this run's hardware")
    if rule == "prompting_enough":
        reasons.append(f"{name} reaches {share:.0%} of the target, at or above the "
                       f"{PROMPTING_ENOUGH:.0%} line where better prompting usually closes "
                       "the rest more cheaply than training")
    reasons.extend(diag["evidence"])
    for pair in _pairs_with(name, cost):
        other = pair["b"] if pair["a"] == name else pair["a"]
        if other not in meeting:  # only alternatives that also reach the target matter
            continue
        reasons.append(f"break-even at {cost['requests_per_day']:,}/day: {pair['text']}")

    forgot = forgetting(result)
    rejected: list[str] = []
    for r in result.get("rungs", []):
        other = r["name"]
        if other == name:
            continue
        if r.get("status") != "done":
            rejected.append(f"{other}: {r.get('status')} ({r.get('reason', '')})")
            continue
        c = (cost.get("rungs") or {}).get(other, {})
        mine = (cost.get("rungs") or {}).get(name, {})
        if r["value"] < target:
            why = f"{other}: {r['value']:.3f}, below the target {target:g}"
            if r["value"] > value:
                why += f" (though {r['value'] - value:+.3f} over {name})"
            if c and mine and c["daily"] > mine["daily"]:
                why += f", and {format_usd(c['daily'] - mine['daily'])}/day more"
        elif rule == "prompting_enough" and r["family"] == "fine_tuning":
            why = (f"{other}: meets the target ({r['value']:.3f}) but prompting already "
                   f"reaches {share:.0%} of it; training adds "
                   f"{format_usd(c.get('upfront', 0.0))} upfront and retraining")
        else:
            why = f"{other}: also meets the target ({r['value']:.3f})"
            pair = next((p for p in _pairs_with(name, cost) if other in (p["a"], p["b"])),
                        None)
            why += f"; {pair['text']}" if pair else " but sits higher on the ladder"
        if other in forgot and forgot[other]["flagged"]:
            why += f"; general ability changes by {forgot[other]['diff']:+.3f} (forgetting)"
        rejected.append(why)

    nxt = _next_steps(rule, chosen, diag, task, n_train, by_name, cost)
    summary = {
        "target_met": f"Use {name}: the cheapest rung that meets the target "
                      f"({metric} {value:.3f} >= {target:g}).",
        "prompting_enough": f"Prompting is enough: {name} reaches {share:.0%} of the target; "
                            "improve the prompt before paying for fine-tuning.",
        "none_meets": f"No rung meets the target {target:g}; {name} comes closest "
                      f"({value:.3f}, {share:.0%} of it). " + GAP_TEXT[diag["gap"]],
    }[rule]
    return {
        "rung": name, "combination": _combination(name), "meets_target": value >= target,
        "rule": rule, "met_target": meeting, "summary": summary, "reasons": reasons,
        "rejected": rejected, "next": nxt, "diagnosis": diag,
        "break_even": [p["text"] for p in (cost.get("break_even") or {}).get("pairs", [])],
    }


def _next_steps(rule: str, chosen: dict[str, Any], diag: dict[str, Any], task: TaskSpec,
                n_train: int, by_name: dict[str, dict[str, Any]], cost: dict[str, Any]
                ) -> list[str]:
    """What to try next, following from the rule and the diagnosis."""
    name = chosen["name"]
    gap_points = task.target - chosen["value"]
    steps: list[str] = []
    if rule == "target_met":
        steps.append(f"ship {name}; re-run tunewise when the data or the model changes")
        if chosen["family"] == "retrieval" and task.cost.reindex_every_days:
            steps.append(f"keep the index current (re-index every "
                         f"{task.cost.reindex_every_days:g} days as priced)")
        if chosen["family"] == "fine_tuning" and task.cost.retrain_every_days:
            steps.append(f"plan retraining every {task.cost.retrain_every_days:g} days and "
                         "re-check forgetting each time")
    elif rule == "prompting_enough":
        steps.append(f"close the last {gap_points:.3f} {task.metric} with the prompt: "
                     "sharper instructions in task.yaml, more or better-chosen shots "
                     "(few_shot_best), then re-run")
        tuned = [r for r in by_name.values() if r["family"] == "fine_tuning"
                 and r["value"] >= task.target]
        if tuned:
            steps.append(f"if prompting stalls, {tuned[0]['name']} meets the target "
                         f"({tuned[0]['value']:.3f}): see its break-even above")
    else:
        gap = diag["gap"]
        if gap in ("knowledge", "both"):
            steps.append("improve retrieval: corpus coverage, chunking and top-k "
                         "(check recall@k against the documents that hold the answers)")
        if gap in ("behaviour", "both"):
            if n_train < MIN_EXAMPLES:
                steps.append(f"fine-tuning needs more data: {n_train} training examples "
                             f"here, collect at least {MIN_EXAMPLES}")
            else:
                steps.append("fine-tune with more epochs or a larger adapter, or combine "
                             "it with retrieval (lora_rag) if facts are also missing")
        if gap == "unclear":
            steps.append("neither retrieval nor fine-tuning moved the score clearly: check "
                         "label quality and the target, then try a larger model "
                         "(backend.model)")
        if gap == "unmeasured":
            steps.append("only prompting rungs ran: run rag and lora to tell a knowledge gap "
                         "(retrieval helps) from a behaviour gap (training helps)")
        if "rag" not in by_name and task.corpus is None and gap != "behaviour":
            steps.append("add a corpus (task.yaml corpus:) to measure retrieval")
        if not any(r["family"] == "fine_tuning" for r in by_name.values()):
            if n_train < FEW_EXAMPLES:
                steps.append(f"with {n_train} training examples fine-tuning is not advised "
                             f"(fewer than {FEW_EXAMPLES})")
            elif gap in ("behaviour", "unclear", "unmeasured"):
                steps.append("run the lora rung to measure what fine-tuning adds")
    pairs = (cost.get("break_even") or {}).get("pairs", [])
    met = set(cost.get("met_target") or [])
    paying = [p for p in pairs if p["days"] is not None and p["days"] > 0
              and {p["a"], p["b"]} <= met]  # a cheaper rung that misses the target is no option
    if paying:
        soonest = min(paying, key=lambda p: p["days"])
        steps.append(f"at {cost['requests_per_day']:,} requests/day {soonest['b']} repays "
                     f"its extra upfront over {soonest['a']} in {format_days(soonest['days'])}"
                     "; check this with your real prices (tunewise cost --price)")
    return [re.sub(r"\s+", " ", s) for s in steps]
