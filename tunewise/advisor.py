"""The decision flowchart as questions: answers (and, if a run exists, measurements) in,
a recommendation with reasons out.

The flowchart, in the order the questions are asked:

1. Tried a system prompt and few-shot examples? If not, that is the first step: it costs
   no training and tells you what is really missing.
2. What is missing: knowledge (facts the model cannot know), behaviour (format, style,
   a reasoning pattern), both, or unsure? Facts that change, or a need for citations,
   count as knowledge: retrieval (RAG) serves them; training does not keep facts fresh.
3. For behaviour: enough good examples to fine-tune? Under 100, don't. From
   ``--min-examples`` (default 200) up, fine-tuning is reasonable. Some practitioners ask
   for 500+ high-quality examples before a first pilot; set ``--min-examples 500`` to
   follow that stricter line. In between: keep prompting and collect data.
4. Volume, latency and budget decide how much shorter prompts are worth: at high volume
   or tight latency, moving instructions into the weights pays back sooner.

Nothing here imports a model: ``tunewise advise`` starts instantly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tunewise import policy
from tunewise.errors import TunewiseError

# The example-count lines and the 90% rule are the verdict's too (tunewise.policy).
FEW_EXAMPLES = policy.MIN_EXAMPLES  # below this, fine-tuning overfits or does nothing
MIN_EXAMPLES = policy.WARN_EXAMPLES  # default line from which fine-tuning is reasonable
STRICT_MIN_EXAMPLES = 500  # the stricter rule of thumb some practitioners follow
HIGH_VOLUME = 10_000  # requests/day from which per-request savings start to matter
TIGHT_LATENCY_MS = 500.0  # p95 targets at or under this make long prompts costly
PROMPTING_ENOUGH = policy.PROMPTING_ENOUGH  # measured prompting at >= 90% of target
PROBLEMS = ("knowledge", "behaviour", "both", "unsure")
CHANGES = ("never", "yearly", "monthly", "weekly", "daily")
FAST_CHANGES = ("monthly", "weekly", "daily")  # faster than one would retrain comfortably


@dataclass
class Answers:
    """What the user told the advisor; None means not answered."""

    tried_prompting: bool | None = None
    problem: str | None = None
    examples: int | None = None
    knowledge_changes: str | None = None
    citations: bool | None = None
    volume: int | None = None
    latency_ms: float | None = None
    budget_usd: float | None = None
    strict_format: bool | None = None
    min_examples: int = MIN_EXAMPLES

    def validate(self) -> Answers:
        """Check choices and ranges, raising a one-line error naming the flag."""
        if self.problem is not None and self.problem not in PROBLEMS:
            raise TunewiseError(f"--problem must be one of {', '.join(PROBLEMS)}, "
                                f"not '{self.problem}'")
        if self.knowledge_changes is not None and self.knowledge_changes not in CHANGES:
            raise TunewiseError(f"--knowledge-changes must be one of {', '.join(CHANGES)}, "
                                f"not '{self.knowledge_changes}'")
        for name in ("examples", "volume", "latency_ms", "budget_usd"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise TunewiseError(f"--{name.replace('_', '-')} cannot be negative")
        if self.min_examples < 1:
            raise TunewiseError("--min-examples must be at least 1")
        return self

    def given(self) -> bool:
        """True when at least one question was answered."""
        return any(v is not None for k, v in asdict(self).items() if k != "min_examples")


@dataclass
class Question:
    """One step of the flowchart, for the terminal prompt and the web wizard alike."""

    key: str
    text: str
    kind: str  # bool | choice | int | float
    help: str
    choices: tuple[str, ...] = ()
    ask_if: Callable[[Answers], bool] = lambda a: True


QUESTIONS: list[Question] = [
    Question("tried_prompting", "Have you tried a system prompt and a few examples "
             "(few-shot) on this task?", "bool",
             "Prompting is the first rung: no training, and it shows what is missing."),
    Question("problem", "What is the model missing?", "choice",
             "knowledge = facts it cannot know; behaviour = format, style or a reasoning "
             "pattern; both; or unsure.", PROBLEMS),
    Question("knowledge_changes", "How often do the facts it needs change?", "choice",
             "Fast-changing facts belong in retrieval, not in trained weights.", CHANGES,
             lambda a: a.problem != "behaviour"),
    Question("citations", "Do answers need to cite their sources?", "bool",
             "Citations need retrieved documents to point at.",
             ask_if=lambda a: a.problem != "behaviour"),
    Question("strict_format", "Must the output follow a strict format (a schema, "
             "a fixed layout)?", "bool",
             "Format that prompting cannot hold reliably is what fine-tuning fixes best."),
    Question("examples", "How many good labelled examples (input -> ideal output) do you "
             "have (blank: unknown)?", "int",
             "Under 100: no fine-tuning. The line is --min-examples."),
    Question("volume", "Requests per day in production (blank: unknown)?", "int",
             "At high volume, shorter prompts from fine-tuning save money every request."),
    Question("latency_ms", "p95 latency target in ms (blank: none)?", "float",
             "Long prompts and retrieval add latency."),
    Question("budget_usd", "Monthly serving budget in USD (blank: none)?", "float",
             "Turned into the most a request may cost at your volume."),
]


@dataclass
class Advice:
    """The advisor's answer: a recommendation key, a headline, and the why."""

    recommendation: str  # prompting | rag | fine_tune | fine_tune+rag | measure
    headline: str
    approach: list[str]
    reasons: list[str] = field(default_factory=list)
    avoid: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    measured: list[str] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` and the web UI."""
        return asdict(self)


def _examples_line(n: int, min_examples: int) -> str:
    if n < FEW_EXAMPLES:
        return (f"{n:,} examples is under {FEW_EXAMPLES}: fine-tuning would overfit or "
                "change nothing")
    if n < min_examples:
        return (f"{n:,} examples is under the {min_examples} you set as the line for "
                "fine-tuning (--min-examples)")
    line = f"{n:,} examples clears the {min_examples}-example line for fine-tuning"
    if n < STRICT_MIN_EXAMPLES:
        line += (f" (a stricter rule of thumb asks for {STRICT_MIN_EXAMPLES}+ high-quality "
                 f"examples; --min-examples {STRICT_MIN_EXAMPLES} applies it)")
    return line


def measurements(result: dict[str, Any]) -> dict[str, Any]:
    """What a finished run says, in the terms the flowchart needs."""
    task = result.get("task", {})
    target = float(task.get("target") or 0.0)
    done = [r for r in result.get("rungs", []) if r.get("status") == "done"]
    prompting = [r for r in done if r.get("family") == "prompting"]
    best_p = max(prompting, key=lambda r: r["value"]) if prompting else None
    verdict = result.get("verdict") or {}
    return {
        "run_id": result.get("run_id"), "target": target, "metric": task.get("metric"),
        "best_prompting": best_p,
        "prompting_share": best_p["value"] / target if best_p and target else None,
        "verdict": verdict, "gap": (verdict.get("diagnosis") or {}).get("gap"),
        "train": (result.get("split") or {}).get("train"),
        "requests_per_day": task.get("requests_per_day"),
        "latency_ms": task.get("latency_ms"), "cost": result.get("cost") or {},
        "families": {r["name"]: r.get("family") for r in done},
        # the line the run's verdict applied (task.yaml decision:), else the default
        "prompting_enough": float((result.get("decision") or {}).get(
            "prompting_enough", PROMPTING_ENOUGH)),
    }


def _from_measured(a: Answers, m: dict[str, Any], lines: list[str]) -> Answers:
    """Fill unanswered questions from the run, saying which numbers were used."""
    filled = Answers(**asdict(a))
    if filled.tried_prompting is None and m["best_prompting"] is not None:
        filled.tried_prompting = True
    if filled.problem in (None, "unsure") and m["gap"] in ("knowledge", "behaviour", "both"):
        filled.problem = m["gap"]
        lines.append(f"the run's diagnosis points to a {m['gap']} gap")
    if filled.examples is None and m["train"]:
        filled.examples = int(m["train"])
        lines.append(f"examples: {filled.examples} training examples in the run's split")
    if filled.volume is None and m["requests_per_day"] is not None:
        filled.volume = int(m["requests_per_day"])
    if filled.latency_ms is None and m["latency_ms"]:
        filled.latency_ms = float(m["latency_ms"])
    return filled


def advise(answers: Answers, result: dict[str, Any] | None = None) -> Advice:
    """Walk the flowchart; with a finished run's result, let measurements overrule guesses."""
    answers.validate()
    measured: list[str] = []
    m = measurements(result) if result else None
    a = _from_measured(answers, m, measured) if m else answers
    reasons: list[str] = []
    avoid: list[str] = []
    steps: list[str] = []
    knowledge = a.problem in ("knowledge", "both") or bool(a.citations) \
        or a.knowledge_changes in FAST_CHANGES
    behaviour = a.problem in ("behaviour", "both") or bool(a.strict_format)
    n = a.examples
    enough = n is not None and n >= a.min_examples
    if n is not None:
        reasons.append(_examples_line(n, a.min_examples))
    if a.knowledge_changes in FAST_CHANGES:
        reasons.append(f"the facts change {a.knowledge_changes}: retrieval reads the current "
                       "documents at query time, while trained weights go stale until the "
                       "next retraining")
    if a.citations:
        reasons.append("answers must cite sources: retrieval returns the ids of the "
                       "documents it used")
    if a.strict_format:
        reasons.append("a strict output format is behaviour: what fine-tuning makes "
                       "reliable when instructions alone slip")
    if a.volume is not None and a.volume >= HIGH_VOLUME:
        reasons.append(f"at {a.volume:,} requests/day every prompt token is paid "
                       f"{a.volume:,} times a day, so shorter prompts pay back training fast")
    if a.latency_ms is not None and a.latency_ms <= TIGHT_LATENCY_MS:
        reasons.append(f"a {a.latency_ms:g} ms latency target favours short prompts; "
                       "retrieval adds a search step and longer context")
    if a.budget_usd is not None and a.volume:
        per_request = a.budget_usd / (30 * a.volume)
        reasons.append(f"a ${a.budget_usd:,.0f}/month budget at {a.volume:,} requests/day "
                       f"allows about ${per_request:.6f} per request")

    if a.tried_prompting is False:
        rec, approach = "prompting", ["system prompt", "few-shot examples"]
        headline = "Start with a system prompt, then add few-shot examples."
        reasons.insert(0, "you have not tried prompting yet: a system prompt that states the "
                          "task and output format, then a handful of worked examples, costs "
                          "no training and shows what is really missing")
        avoid.append("fine-tuning before prompting has been measured: it is the most "
                     "expensive rung and may not be needed")
        steps += ["write a system prompt (task, label set or format, edge cases)",
                  "add 5-20 good examples as few-shot shots",
                  "measure both on held-out data: tunewise run task.yaml"]
        if knowledge:
            steps.append("if answers lack facts after that, add retrieval (RAG) next")
        if behaviour and enough:
            steps.append(f"if the format still slips, your {n:,} examples are enough to "
                         "try fine-tuning later")
    elif behaviour and enough:
        rec = "fine_tune+rag" if knowledge else "fine_tune"
        approach = ["fine-tune (LoRA)"] + (["retrieval (RAG)"] if knowledge else [])
        headline = ("Fine-tune for the behaviour and use retrieval (RAG) for the knowledge."
                    if knowledge else "Fine-tune (LoRA) for the behaviour.")
        if knowledge:
            avoid.append("training facts into the weights: fine-tune for format and style "
                         "only; the facts come from retrieval")
        steps += ["start with a LoRA pilot on your examples; hold some out to measure",
                  "compare it with the best few-shot prompt: tunewise run task.yaml --all",
                  "check break-even at your volume: tunewise cost task.yaml"]
        from tunewise.planner import cpu_training_line, has_gpu

        line = None if has_gpu() else cpu_training_line(examples=n or 500)
        if line:  # the planner's numbers: what this machine can train, and how long
            reasons.append(line)
        steps.append("size the hardware before renting it: tunewise plan --model NAME_OR_SIZE")
    elif knowledge:
        rec, approach = "rag", ["retrieval (RAG)", "system prompt"]
        headline = "Use retrieval (RAG); do not fine-tune for facts."
        if n is not None and not enough:
            line = (f"under {FEW_EXAMPLES} it would overfit" if n < FEW_EXAMPLES
                    else f"under your --min-examples {a.min_examples}")
            avoid.append(f"fine-tuning: {n:,} examples is too few ({line}), and retraining "
                         "could not keep facts current anyway")
        else:
            avoid.append("fine-tuning to inject facts: it changes behaviour, not knowledge, "
                         "and must be retrained every time the facts change")
        steps += ["index your documents and retrieve the top passages per question",
                  "ask for answers grounded in (and citing) the passages",
                  "measure recall@k and answer quality: tunewise run task.yaml"]
        if behaviour:
            steps.append(f"collect examples of the format you need: fine-tuning becomes an "
                         f"option at {a.min_examples}")
    elif behaviour:
        rec, approach = "prompting", ["system prompt", "few-shot examples"]
        missing = f" ({n:,} of {a.min_examples})" if n is not None else ""
        headline = ("Keep improving the prompt (system prompt + few-shot) and collect "
                    f"examples{missing} before fine-tuning.")
        avoid.append("fine-tuning now: not enough examples"
                     + (f" ({n:,} < {a.min_examples})" if n is not None else
                        " known (give --examples)"))
        steps += ["put the format rules and 10-20 worked examples in the prompt",
                  f"collect and clean examples until you have {a.min_examples}+"]
    else:
        rec, approach = "measure", ["system prompt", "few-shot examples"]
        headline = "Measure before choosing: run the ladder on your own data."
        reasons.append("it is not yet clear whether knowledge or behaviour is missing: "
                       "retrieval's gain over few-shot shows a knowledge gap, fine-tuning's "
                       "gain shows a behaviour gap")
        steps += ["describe the task in task.yaml and run: tunewise run task.yaml --all"]

    if m:
        rec, headline, approach = _overrule(m, rec, headline, approach, reasons, avoid,
                                            measured)
    return Advice(rec, headline, approach, reasons, avoid, steps, measured,
                  {k: v for k, v in asdict(answers).items() if v is not None})


_REC_OF_FAMILY = {"prompting": "prompting", "retrieval": "rag", "fine_tuning": "fine_tune"}


def _overrule(m: dict[str, Any], rec: str, headline: str, approach: list[str],
              reasons: list[str], avoid: list[str], measured: list[str]
              ) -> tuple[str, str, list[str]]:
    """Measurements beat answers: a rung that met the target, or the 90% rule, decides."""
    from tunewise.cost import format_usd

    v = m["verdict"]
    best_p, share = m["best_prompting"], m["prompting_share"]
    if best_p is not None and share is not None:
        measured.insert(0, f"run {m['run_id']}: best prompting rung {best_p['name']} scores "
                           f"{m['metric']} {best_p['value']:.3f}, {share:.0%} of the target "
                           f"{m['target']:g}")
    if v.get("summary"):
        measured.append(f"run verdict: {v['summary']}")
    costs = (m["cost"] or {}).get("rungs") or {}
    chosen = v.get("rung")
    if chosen in costs:
        c = costs[chosen]
        measured.append(f"{chosen}: {format_usd(c['per_1k'])} per 1,000 requests, "
                        f"{format_usd(c['upfront'])} upfront at price "
                        f"'{m['cost']['price']['name']}'")
    rule = v.get("rule")
    if rule == "prompting_enough" or (rule == "target_met" and
                                      m["families"].get(chosen) == "prompting"):
        if rec != "prompting":
            avoid.append(f"{rec.replace('_', '-')}: the run shows prompting "
                         f"({best_p['name']}) at {share:.0%} of the target")
        reasons.insert(0, f"measured: {best_p['name']} reaches {share:.0%} of the target "
                          f"(the line is {m['prompting_enough']:.0%}), so prompting is enough")
        return ("prompting", f"Prompting is enough: use and refine {best_p['name']}.",
                ["system prompt", "few-shot examples"])
    if rule == "none_meets" and best_p is not None and share is not None:
        reasons.insert(0, f"measured: the best prompt ({best_p['name']}) reaches only "
                          f"{share:.0%} of the target, under the {m['prompting_enough']:.0%} line: "
                          "prompting alone is unlikely to close the gap")
    if rule == "target_met" and chosen:
        family = m["families"].get(chosen, "")
        new = "fine_tune+rag" if chosen == "lora_rag" else _REC_OF_FAMILY.get(family, rec)
        reasons.insert(0, f"measured: {chosen} is the cheapest rung that meets the target")
        if new != rec:
            measured.append(f"your answers pointed to {rec}; the measurement wins")
        return new, f"Use {chosen}: it meets the target in your own data.", approach
    return rec, headline, approach


def ask(console: Any, min_examples: int = MIN_EXAMPLES) -> Answers:
    """Ask the flowchart's questions in a terminal with Rich prompts."""
    from rich.prompt import Confirm, Prompt

    answers = Answers(min_examples=min_examples)
    console.print("[bold]tunewise advisor[/bold]: a few questions, then a recommendation. "
                  "Press Enter to accept the default.\n")
    for q in QUESTIONS:
        if not q.ask_if(answers):
            continue
        console.print(f"[dim]{q.help}[/dim]")
        if q.kind == "bool":
            value: Any = Confirm.ask(q.text, console=console)
        elif q.kind == "choice":
            value = Prompt.ask(q.text, choices=list(q.choices), default=q.choices[-1]
                               if q.key == "problem" else q.choices[0], console=console)
        else:
            value = None
            while True:
                raw = Prompt.ask(q.text, default="", show_default=False, console=console)
                if not raw.strip():
                    break
                try:
                    value = int(raw) if q.kind == "int" else float(raw)
                    if value < 0:
                        raise ValueError
                    break
                except ValueError:
                    console.print("[red]Please enter a non-negative number, or nothing.[/red]")
        setattr(answers, q.key, value)
    return answers
