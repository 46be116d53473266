"""Evidence and diagnosis: what limits the best rung, from this run's numbers.

Three outcomes besides "none" (and "unmeasured"/"unclear" when the run cannot tell):

- a **knowledge** gap: retrieval gains significantly over the best few-shot rung (and,
  when the corpus marks which document answers each question, recall@k says whether
  retrieval finds it);
- a **behaviour** (format) gap: a share of wrong answers at or above
  ``decision.format_error_share`` is outside the expected format, and tuning fixes it or
  gains significantly;
- **reader capacity**: retrieval recall@k is at or above ``decision.high_recall`` yet every
  rung stays under ``decision.prompting_enough`` of the target: the model reading the
  passages is the bottleneck, and a larger model is the lever.

Every sentence names the comparison (``#i``, from ``verdict.comparisons``) or the measure
it rests on. ``Evidence`` holds what the verdict reads: the typed result, the per-item rows
(for the paired tests), total costs over the horizon and the comparisons stated so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunewise.answers import format_problem as answer_format_problem
from tunewise.answers import gold_keys
from tunewise.comparisons import describe, paired_bootstrap
from tunewise.evaluate import normalize_answer
from tunewise.policy import DecisionSpec
from tunewise.results import RungResult, RunResult, load_result
from tunewise.task import TaskSpec

if TYPE_CHECKING:
    from tunewise.store import Store

FOLLOWS_EDIT = 0.5  # share of answers following a corpus edit that shows retrieval works


# ---- error types ---------------------------------------------------------------------------


def format_problem(prediction: str, gold: str, kind: str, text: str = "",
                   known_fields: set[str] | None = None) -> str | None:
    """Why an answer is outside the expected format (see :func:`answers.format_problem`:
    invalid JSON, missing or unknown keys, unparseable records, over-long short answers)."""
    return answer_format_problem(prediction, gold, kind, text, known_fields)


def error_types(result: RunResult | dict[str, Any], task: TaskSpec, store: Store | None
                ) -> dict[str, dict[str, Any]]:
    """Per rung: wrong answers, and how many of them are format errors rather than content.

    Classification counts come from the score alone (every answer is a label); other kinds
    read the per-example rows from the store, when it is given.
    """
    res = load_result(result)
    out: dict[str, dict[str, Any]] = {}
    for r in res.done():
        if task.kind == "classification":
            wrong = round((1 - r.value) * r.n) if task.metric == "accuracy" and r.n else None
            out[r.name] = {"wrong": wrong, "format_errors": 0, "share_of_wrong": 0.0,
                           "kinds": {}}
            continue
        if store is None or not res.run_id:
            continue
        rows = store.predictions(res.run_id, r.name)
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
        out[r.name] = {"wrong": wrong, "format_errors": bad,
                       "share_of_wrong": bad / wrong if wrong else 0.0, "kinds": kinds}
    return out


# ---- evidence gathered from the run --------------------------------------------------------


class Evidence:
    """The typed result plus per-item rows and costs, and the comparisons stated so far."""

    def __init__(self, res: RunResult, task: TaskSpec, store: Store | None) -> None:
        self.res, self.task, self.store = res, task, store
        self.policy: DecisionSpec = task.decision
        self.done = res.done()
        self.by_name = {r.name: r for r in self.done}
        self._rows: dict[str, dict[str, Any] | None] = {}
        self.comparisons: list[dict[str, Any]] = []
        costs = res.cost.rungs if res.cost else {}
        self.horizon = self.policy.horizon_days
        self.total = {n: c.upfront + c.daily * self.horizon for n, c in costs.items()}

    def rows(self, name: str) -> dict[str, Any] | None:
        """Per item id, the rung's stored row (None when the store has none)."""
        if name not in self._rows:
            rows = None
            if self.store is not None and self.res.run_id:
                got = self.store.predictions(self.res.run_id, name)
                rows = {str(d.get("example_id", i)): d
                        for i, d in enumerate(dict(r) for r in got)} or None
            self._rows[name] = rows
        return self._rows[name]

    def compare(self, a: str, b: str, purpose: str) -> dict[str, Any] | None:
        """State ``b`` vs ``a`` (paired bootstrap of the task's metric); reuse if stated."""
        for c in self.comparisons:
            if {c["a"], c["b"]} == {a, b}:
                if purpose not in c["purpose"].split("; "):
                    c["purpose"] += "; " + purpose  # one test, cited for several claims
                return c if (c["a"], c["b"]) == (a, b) else flipped(c)
        ra, rb = self.rows(a), self.rows(b)
        if ra is None or rb is None:
            return None
        c = {"a": a, "b": b, "metric": self.task.metric, "purpose": purpose,
             **paired_bootstrap(ra, rb, self.task.metric)}
        self.comparisons.append(c)
        return c

    def add_baseline(self) -> dict[str, Any] | None:
        """The better of the trivial baseline (h4's ``baselines``) and zero-shot, as rows."""
        base = None
        for key, b in (self.res.baselines or {}).items():
            if base is None or b.value > base[1].value:
                base = (key, b)
        if base is None:
            return None
        key, b = base
        name = f"baseline:{key}"
        zero = self.by_name.get("zero_shot")
        if zero is not None and (zero.value or 0.0) >= b.value:
            return None  # zero-shot is the stronger reference; rungs are compared with it
        if name not in self._rows:
            template = next((self.rows(r.name) for r in self.done if self.rows(r.name)), None)
            if template is None:
                return None
            ids = list(template)
            per = b.per_item or []
            self._rows[name] = {
                i: {"prediction": b.label or "", "gold": template[i]["gold"],
                    "score": float(per[k]) if k < len(per) else
                    float(normalize_answer(b.label or "") == normalize_answer(
                        template[i]["gold"]))}
                for k, i in enumerate(ids)}
        return {"name": name, "label": b.label, "value": b.value}

    def cost_of(self, name: str) -> float | None:
        return self.total.get(name)

    def risk(self, name: str) -> str | None:
        """Why a rung is riskier to ship: forgetting flagged, or it ignores corpus edits."""
        r = self.by_name.get(name)
        f = self.res.forgetting
        if r is not None and r.family == "fine_tuning" and f is not None and f.flagged:
            return f"forgetting flagged ({f.diff:+.3f} on the general set)"
        fr = self.res.freshness
        if fr is not None and fr.rung == name and fr.followed_share is not None \
                and fr.followed_share < FOLLOWS_EDIT:
            return f"follows only {fr.followed_share:.0%} of corpus edits"
        return None


def flipped(c: dict[str, Any]) -> dict[str, Any]:
    """A stated comparison read the other way round (same test and id, negated difference)."""
    return {**c, "a": c["b"], "b": c["a"], "diff": -c["diff"], "ci_low": -c["ci_high"],
            "ci_high": -c["ci_low"]}


def best_of(rungs: list[RungResult]) -> RungResult | None:
    return max(rungs, key=lambda r: r.value or 0.0) if rungs else None


def _recall(r: RungResult | None) -> tuple[float, int] | None:
    """(recall@k, k) a retrieval rung measured against the answer-bearing documents."""
    if r is None:
        return None
    extra = r.info.model_extra or {}
    for key, v in extra.items():
        if key.startswith("recall@") and isinstance(v, dict) and "value" in v:
            return float(v["value"]), int(key.split("@", 1)[1])
    return None


def training_state(r: RungResult) -> dict[str, Any]:
    """Whether a fine-tuning rung stopped while its loss was still falling (under-trained)."""
    info = r.info
    losses = [x for x in (info.dev_losses or []) if x is not None]
    falling = info.loss_falling
    if falling is None and len(losses) >= 2:
        falling = losses[-1] < losses[-2] * 0.99
    stopped = info.stopped_by or ("early_stopping" if info.stopped_early else None)
    under = bool(falling) and stopped in ("max_steps", "epochs")
    return {"under_trained": under, "stopped_by": stopped, "falling": falling,
            "steps": info.steps, "epochs": info.epochs, "max_steps": info.max_steps}


def curve_slope(r: RungResult) -> tuple[float, int] | None:
    """Gain per 100 examples between the two largest learning-curve points, and the size."""
    from tunewise.training.curve import slope_per_100

    curve = r.info.learning_curve
    if curve is None or not curve.points:
        return None
    slope = slope_per_100([p.model_dump() for p in curve.points])
    return None if slope is None else (slope, curve.points[-1].n)


# ---- diagnosis -----------------------------------------------------------------------------


def diagnose(ev: Evidence, errors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Knowledge, behaviour, both, reader capacity, none, unclear or unmeasured.

    Each sentence names the comparison (``#i``) or the measure it rests on.
    """
    task, pol = ev.task, ev.policy
    metric = task.metric
    prompting = [r for r in ev.done if r.family == "prompting"]
    few = best_of([r for r in prompting if r.name.startswith("few_shot")]) or best_of(prompting)
    knowledge: list[str] = []
    behaviour: list[str] = []
    reader: list[str] = []
    evidence: list[str] = []
    out: dict[str, Any] = {"baseline": few.name if few else None}
    rag = ev.by_name.get("rag") or ev.by_name.get("lora_rag")
    tuned = ev.by_name.get("lora") or ev.by_name.get("lora_system_prompt")
    best = best_of(ev.done)
    low_everywhere = best is not None and (best.value or 0) < pol.prompting_enough * task.target
    recall = _recall(rag)
    rag_helps = False
    if few and rag:
        c = ev.compare(few.name, rag.name, "retrieval vs best few-shot")
        gain = rag.value - few.value
        out["rag_gain"] = gain
        rag_helps = bool(c and c.get("significant") and c["diff"] >= pol.min_gain)
        line = f"retrieval ({rag.name}) changes {metric} by {gain:+.3f} over {few.name} " + (
            describe(c) if c else "(no per-item rows: not tested)")
        (knowledge if rag_helps else evidence).append(
            line + (": missing knowledge" if rag_helps else ": no significant sign of a "
                    "knowledge gap"))
    if recall is not None:
        value, k = recall
        out.update(recall=value, recall_k=k)
        line = (f"retrieval recall@{k} is {value:.2f} (measured against the documents that "
                f"hold the answers)")
        if value >= pol.high_recall and low_everywhere:
            reader.append(f"{line}, at or above {pol.high_recall:g}, yet the best rung "
                          f"({best.name}) reaches only {best.value:.3f}, under "
                          f"{pol.prompting_enough:.0%} of the target {task.target:g}: the "
                          "model reading the passages is the bottleneck")
        elif value < pol.high_recall:
            (knowledge if rag_helps else evidence).append(
                f"{line}, under {pol.high_recall:g}: retrieval misses many answer-bearing "
                "passages")
        else:
            evidence.append(line)
    if few and tuned:
        c = ev.compare(few.name, tuned.name, "fine-tuning vs best prompting")
        gain = tuned.value - few.value
        out["lora_gain"] = gain
        helps = bool(c and c.get("significant") and c["diff"] >= pol.min_gain)
        line = f"fine-tuning ({tuned.name}) changes {metric} by {gain:+.3f} over {few.name} " \
            + (describe(c) if c else "(no per-item rows: not tested)")
        state = training_state(tuned)
        if helps:
            behaviour.append(line + ": a behaviour the prompt could not teach")
        elif state["under_trained"]:
            out["under_trained"] = True
            evidence.append(line + f": the adapter is under-trained (so this says nothing yet "
                            f"about what tuning can add): training stopped by "
                            f"{state['stopped_by']} ({state['steps']} steps, "
                            f"{state['epochs']} epochs) while its loss was still falling")
        else:
            evidence.append(line + ": training adds little that is significant")
    if few and few.name in errors:
        e = errors[few.name]
        if task.kind == "classification":
            if e["wrong"] is not None:
                evidence.append(f"label scoring keeps every answer in the label set, so all "
                                f"{e['wrong']} wrong answers of {few.name} are wrong "
                                "content, not format (error count)")
        elif e["wrong"]:
            line = (f"{e['share_of_wrong']:.0%} of {few.name}'s wrong answers "
                    f"({e['format_errors']} of {e['wrong']}) are outside the expected format "
                    f"(format check; the line is {pol.format_error_share:.0%})")
            if e["share_of_wrong"] >= pol.format_error_share:
                tuned_e = errors.get(tuned.name) if tuned else None
                if tuned_e and tuned_e["wrong"] is not None:
                    fixed = tuned_e["format_errors"] < e["format_errors"]
                    line += (f"; {tuned.name} has {tuned_e['format_errors']} format errors"
                             + (": tuning fixes the format" if fixed else
                                ": tuning does not fix it"))
                behaviour.append(line)
            else:
                evidence.append(line + ": mostly wrong content")
        out["format_errors"] = dict(errors)
    fr = ev.res.freshness
    if fr is not None and fr.status == "done" and fr.followed_share is not None:
        out["freshness"] = {fr.rung: fr.followed_share}
        line = (f"after a corpus edit, {fr.followed_share:.0%} of {fr.rung}'s answers follow "
                f"the edit (freshness test, {fr.edited_questions} questions)")
        if fr.followed_share >= FOLLOWS_EDIT and ev.by_name.get(fr.rung) and \
                ev.by_name[fr.rung].family == "retrieval":
            knowledge.append(line + " (retrieval keeps facts current; weights do not)")
        else:
            evidence.append(line)
    if few and few.value >= task.target:
        gap = "none"
    elif reader:
        gap = "reader"
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
    tried = [what for what, r in (("retrieval", rag), ("fine-tuning", tuned)) if r is not None]
    out.update(gap=gap, tried=tried, knowledge=knowledge, behaviour=behaviour, reader=reader,
               evidence=reader + knowledge + behaviour + evidence)
    return out
