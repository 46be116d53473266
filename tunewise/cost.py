"""Cost model: what each rung costs per request, upfront and to maintain, and break-even.

Nothing here is assumed about a rung's size: tokens per request, the shared (cacheable)
prefix, preparation and training seconds all come from the run. Only prices come from a
table (the bundled ``prices.yaml``, a user file, or ``cost.override`` in task.yaml), and
every figure carries the price entry and date it used, so a reader can redo the sum.

Formulas (per rung, at ``V`` requests/day):

- per request = (uncached prompt x input + shared prefix x cached input + completion x
  output) / 1e6, using the fine-tuned model's prices for fine-tuning rungs;
- upfront = preparation compute (measured s x $/h) or hosted training (tokens x price),
  + data preparation (hours x rate, fine-tuning only) + this run's evaluation calls;
- maintenance/day = retraining (fine-tuning) or re-indexing (retrieval) cost / cadence;
- daily = V x per request + maintenance/day;
- break-even of B against A (B costs more upfront) = (upfront_B - upfront_A) /
  (daily_A - daily_B) days, when B is cheaper per day; otherwise B never pays back.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from tunewise.errors import BudgetExceeded, TunewiseError
from tunewise.task import PriceFields, TaskSpec

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunewise.ladder import Plan

MILLION = 1_000_000
CHART_POINTS = 31
DEFAULT_EPOCHS = 3  # training-token estimate when a fine-tuning rung does not report them


class PriceEntry(PriceFields):
    """One row of the price table: a model/provider or a machine to self-host on."""

    description: str = Field("", description="What this entry prices, and where from.")
    kind: Literal["hosted", "self_hosted"] = Field("hosted", description="hosted | self_hosted")
    prefill_tokens_per_s: float | None = Field(
        None, gt=0, description="Throughput that derives input_per_1m from compute_per_hour."
    )
    decode_tokens_per_s: float | None = Field(
        None, gt=0, description="Throughput that derives output_per_1m from compute_per_hour."
    )
    measured_time_scale: float = Field(
        1.0, ge=0, description="Seconds measured in the run x this = seconds on this hardware."
    )
    example: bool = Field(False, description="An illustrative price to be replaced.")


def per_million_from_throughput(per_hour: float, tokens_per_s: float) -> float:
    """USD per 1M tokens of a machine renting at ``per_hour`` that moves ``tokens_per_s``."""
    return per_hour / (tokens_per_s * 3600) * MILLION


@dataclass(frozen=True)
class Price:
    """A resolved price entry: every per-token price known, with its name and date."""

    name: str
    as_of: str
    entry: PriceEntry

    @property
    def input(self) -> float:
        return float(self.entry.input_per_1m or 0.0)

    @property
    def output(self) -> float:
        return float(self.entry.output_per_1m or 0.0)

    def token_prices(self, tuned: bool) -> tuple[float, float, float]:
        """(input, cached input, output) per 1M tokens; tuned models may cost more.

        A provider without prefix caching charges cached tokens as ordinary input. For a
        tuned model the cache discount keeps the same ratio to the input price.
        """
        e = self.entry
        inp, out = self.input, self.output
        if tuned:
            inp = e.tuned_input_per_1m if e.tuned_input_per_1m is not None else inp
            out = e.tuned_output_per_1m if e.tuned_output_per_1m is not None else out
        if e.cached_input_per_1m is None:
            cached = inp
        elif tuned and self.input > 0:
            cached = e.cached_input_per_1m * inp / self.input
        else:
            cached = e.cached_input_per_1m
        return inp, cached, out

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored with a cost summary (so the figures can be redone by hand)."""
        return {"name": self.name, "as_of": self.as_of,
                **self.entry.model_dump(exclude_none=True)}


def _read_table(path: Path | None) -> tuple[str, dict[str, Any]]:
    """(as_of, raw entries) of the bundled table, or of a user file (read with the task
    file's guards: unreadable files, hostile YAML and syntax errors are one line)."""
    from tunewise.files import read_utf8
    from tunewise.task import read_yaml

    if path is None:
        text = resources.files("tunewise").joinpath("prices.yaml").read_text(encoding="utf-8")
        where: str | Path = "prices.yaml"
    else:
        try:
            text = read_utf8(path, missing="price file not found",
                             folder="is a folder, not a price file")
        except TunewiseError as exc:
            exc.field = "cost.prices_file"
            raise
        where = path
    raw = read_yaml(text, where)[0] or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), dict):
        raise TunewiseError("a price file needs an 'entries:' mapping of name -> prices",
                            path=where)
    return str(raw.get("as_of", "unknown date")), raw["entries"]


def price_table(user_file: Path | None = None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Entry name -> (as_of, raw fields); a user file adds entries or replaces same names."""
    as_of, entries = _read_table(None)
    table = {name: (as_of, fields) for name, fields in entries.items()}
    if user_file is not None:
        user_as_of, user_entries = _read_table(Path(user_file))
        table.update({name: (user_as_of, f) for name, f in user_entries.items()})
    return table


def resolve_price(task: TaskSpec, name: str | None = None,
                  user_file: Path | None = None, override: PriceFields | None = None
                  ) -> Price:
    """The price entry a task uses, with ``cost.override`` (or ``override``) applied and
    derived prices filled.

    Raises:
        TunewiseError: unknown entry (with the closest name), or an entry that leaves the
            input or output price unknown.
    """
    table = price_table(user_file or task.cost.prices_file)
    name = name or task.cost.price
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TunewiseError(f"unknown price entry '{name}'{hint}; entries: "
                            f"{', '.join(sorted(table))}", path=task.source, field="cost.price")
    as_of, raw = table[name]
    try:
        entry = PriceEntry.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise TunewiseError(f"price entry '{name}': {where}: {err['msg']}",
                            path=user_file or task.cost.prices_file) from None
    fields = entry.model_dump()
    fields.update((override or task.cost.override).model_dump(exclude_none=True))
    hourly = fields["compute_per_hour"]
    for price_key, speed_key in (("input_per_1m", "prefill_tokens_per_s"),
                                 ("output_per_1m", "decode_tokens_per_s")):
        if fields[price_key] is None and hourly is not None and fields[speed_key]:
            fields[price_key] = per_million_from_throughput(hourly, fields[speed_key])
        if fields[price_key] is None:
            raise TunewiseError(f"price entry '{name}' gives no {price_key} (nor "
                                f"compute_per_hour with {speed_key})", field="cost.price")
    return Price(name, as_of, PriceEntry.model_validate(fields))


def model_price(task: TaskSpec, model: str | None = None, price_name: str | None = None
                ) -> Price:
    """The price of one of the task's models: its own ``price:`` entry and ``override``, or
    (when it names none) ``price_name`` / ``cost.price`` with ``cost.override``."""
    entries = task.model_entries()
    spec = entries.get(model) if model else next(iter(entries.values()))
    if spec is not None and spec.price:
        return resolve_price(task, spec.price, override=spec.override)
    return resolve_price(task, price_name)


def format_usd(x: float) -> str:
    """Dollars with enough digits to be read: $1,234, $12.34, $0.12, $0.0000123."""
    if x == 0:
        return "$0"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if abs(x) >= 0.01:
        return f"${x:,.2f}"
    digits = -math.floor(math.log10(abs(x))) + 2
    return f"${x:.{digits}f}"


def format_days(days: float | None) -> str:
    """A break-even duration for people: hours under a day, days, or months."""
    if days is None:
        return "never"
    if days < 1:
        return f"{days * 24:.1f} hours"
    if days < 90:
        return f"{days:.1f} days"
    return f"{days / 30.44:.1f} months"


def request_cost(tokens: dict[str, float], price: Price, tuned: bool = False
                 ) -> dict[str, float]:
    """USD of one request from its measured tokens, with the cached prefix discounted.

    Args:
        tokens: ``prompt_mean``, ``completion_mean`` and ``shared_prefix`` (tokens at the
            start of every prompt: system text and fixed shots, which a prefix cache reuses).
        price: the resolved price entry.
        tuned: price as a fine-tuned model (hosted providers charge those more).
    """
    prompt = float(tokens.get("prompt_mean", 0.0))
    completion = float(tokens.get("completion_mean", 0.0))
    cached = min(float(tokens.get("shared_prefix", 0.0)), prompt)
    inp, cached_price, out = price.token_prices(tuned)
    parts = {
        "input_usd": (prompt - cached) * inp / MILLION,
        "cached_input_usd": cached * cached_price / MILLION,
        "output_usd": completion * out / MILLION,
    }
    return {"usd": sum(parts.values()), **parts, "cached_tokens": cached,
            "uncached_tokens": prompt - cached, "completion_tokens": completion}


def measured_request_cost(rung: dict[str, Any], price: Price) -> float | None:
    """USD of one request on a self-hosted machine: its $/hour over the throughput this
    run measured (mean seconds per request x ``measured_time_scale``). None when the entry
    is hosted or the rung has no measured mean latency."""
    entry = price.entry
    seconds = serving_seconds(rung)
    if entry.kind != "self_hosted" or not entry.compute_per_hour or not seconds:
        return None
    return seconds * entry.measured_time_scale * entry.compute_per_hour / 3600


def serving_seconds(rung: dict[str, Any]) -> float | None:
    """Machine seconds per request the run measured: 1 / throughput (items/s at the run's
    batch size) when recorded, else the mean per-item latency."""
    rate = rung.get("throughput_items_s")
    if isinstance(rate, int | float) and rate > 0:
        return 1.0 / float(rate)
    mean_ms = (rung.get("latency_ms") or {}).get("mean")
    return float(mean_ms) / 1000 if mean_ms else None


def training_tokens(rung: dict[str, Any], n_train: int) -> tuple[float, str]:
    """Tokens a hosted fine-tune would bill (x epochs), and how the figure was obtained."""
    info = rung.get("info") or {}
    for key in ("train_tokens", "training_tokens", "tokens_seen"):
        if isinstance(info.get(key), int | float) and info[key] > 0:
            return float(info[key]), f"{info[key]:,.0f} training tokens measured"
    epochs = info.get("epochs") or DEFAULT_EPOCHS
    n = info.get("train_examples") or n_train
    per = rung["tokens"]["prompt_mean"] + rung["tokens"]["completion_mean"]
    return n * epochs * per, f"{n} examples x {epochs} epochs x {per:.0f} tokens (estimated)"


def rung_cost(rung: dict[str, Any], task: TaskSpec, price: Price, volume: int,
              n_train: int, eval_calls: int) -> dict[str, Any]:
    """Per-request, upfront, maintenance and daily cost of one finished rung."""
    spec = task.cost
    family = rung["family"]
    tuned = family == "fine_tuning"
    req = request_cost(rung["tokens"], price, tuned)
    seconds = float(rung.get("upfront_s") or 0.0) * price.entry.measured_time_scale
    served = measured_request_cost(rung, price)
    if served is not None:
        req = {**req, "usd": served, "measured_serving": True}
    parts = {"compute": 0.0, "training": 0.0, "data_prep": 0.0, "evaluation": 0.0}
    basis: list[str] = []
    hourly = price.entry.compute_per_hour
    if tuned and price.entry.training_per_1m is not None:
        tokens, how = training_tokens(rung, n_train)
        parts["training"] = tokens * price.entry.training_per_1m / MILLION
        basis.append(f"training: {how} at ${price.entry.training_per_1m}/1M")
    elif hourly is not None:
        key = "training" if tuned else "compute"
        parts[key] = seconds / 3600 * hourly
        basis.append(f"{key}: {seconds:.1f} s at ${hourly}/h")
    if tuned and spec.data_prep_hours:
        parts["data_prep"] = spec.data_prep_hours * spec.hourly_rate
        basis.append(f"data prep: {spec.data_prep_hours} h at ${spec.hourly_rate}/h")
    if spec.count_eval_calls:
        parts["evaluation"] = eval_calls * req["usd"]
        basis.append(f"evaluation: {eval_calls} calls")
    if req.get("measured_serving"):
        basis.insert(0, f"serving: {(serving_seconds(rung) or 0) * 1000:.0f} ms/request "
                        f"measured x {price.entry.measured_time_scale:g} at ${hourly}/h")
    maintenance = 0.0
    hosting = 0.0
    if tuned and (rung.get("info") or {}).get("separate_model") and hourly is not None:
        # an adapter is served on the base model's deployment; a fully tuned model is a
        # model of its own: one more replica, around the clock
        hosting = 24 * hourly
        basis.append(f"hosting: a separate model, one more replica at ${hourly}/h x 24 h")
    if tuned and spec.retrain_every_days:
        maintenance = (parts["training"] + parts["compute"]) / spec.retrain_every_days
        basis.append(f"retraining every {spec.retrain_every_days:g} days")
    elif family == "retrieval" and spec.reindex_every_days:
        maintenance = parts["compute"] / spec.reindex_every_days
        basis.append(f"re-indexing every {spec.reindex_every_days:g} days")
    return {
        "name": rung["name"], "family": family, "value": rung["value"],
        "per_request": req["usd"], "per_1k": req["usd"] * 1000, "request": req,
        "upfront": sum(parts.values()), "upfront_parts": parts,
        "maintenance_per_day": maintenance, "hosting_per_day": hosting,
        "daily": volume * req["usd"] + maintenance + hosting,
        "latency_ms": rung.get("latency_ms", {}), "basis": basis,
    }


def break_even(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """When the rung with the larger upfront cost has paid it back through lower daily cost."""
    lo, hi = sorted((a, b), key=lambda c: (c["upfront"], c["daily"]))
    extra = hi["upfront"] - lo["upfront"]
    saving = lo["daily"] - hi["daily"]
    if saving > 0:
        days: float | None = extra / saving
        text = (f"{hi['name']} costs {format_usd(extra)} more upfront and saves "
                f"{format_usd(saving)}/day: it pays back after {format_days(days)}")
    else:  # no saving: there is nothing to pay back with, so no (negative) figure is shown
        days = None
        text = (f"{hi['name']} never pays back: {lo['name']} is cheaper both upfront and "
                "per day")
    return {"a": lo["name"], "b": hi["name"], "extra_upfront": extra,
            "daily_saving": max(saving, 0.0), "days": days, "pays_back": days is not None,
            "text": text}


def _eval_calls(result: dict[str, Any], rung: dict[str, Any]) -> int:
    used = ((result.get("usage") or {}).get("rungs") or {}).get(rung["name"])
    if used:
        return int(used.get("calls_made", 0) or 0) + int(used.get("cache_hits", 0) or 0)
    made = int(rung.get("calls_made", 0) or 0) + int(rung.get("cache_hits", 0) or 0)
    return made or int(rung.get("n", 0) or 0)


def summarize(result: dict[str, Any], task: TaskSpec, *, volume: int | None = None,
              price_name: str | None = None) -> dict[str, Any]:
    """The cost section of result.json: per rung, break-even pairs and chart series.

    Break-even compares the rungs that meet the target, and only those: a rung that misses
    the target is no alternative, whatever it saves. When fewer than two meet it there are
    no pairs; ``basis`` says why in a sentence, and ``closest`` gives the cost of the best
    rung when none meets the target.
    """
    price = model_price(task, result.get("model"), price_name)
    volume = task.volume.requests_per_day if volume is None else volume
    target = task.target
    n_train = int((result.get("split") or {}).get("train", 0) or 0)
    done = [r for r in result["rungs"] if r.get("status") == "done"]
    horizon = task.decision.horizon_days
    costs = {r["name"]: {**rung_cost(r, task, price, volume, n_train, _eval_calls(result, r)),
                         "meets_target": r["value"] >= target} for r in done}
    for c in costs.values():  # what the verdict compares: upfront + daily x horizon
        c["total_over_horizon"] = c["upfront"] + c["daily"] * horizon
    meeting = [r["name"] for r in done if r["value"] >= target]
    candidates = meeting if len(meeting) >= 2 else []
    closest = None
    if len(meeting) >= 2:
        basis = "rungs that meet the target"
    elif meeting:
        basis = (f"only {meeting[0]} meets the target, so there is no alternative to "
                 "compare its cost with")
    elif done:
        top = max(done, key=lambda r: r["value"])  # ladder order: the cheapest of the best
        c = costs[top["name"]]
        closest = {"name": top["name"], "value": top["value"], "per_1k": c["per_1k"],
                   "daily": c["daily"], "upfront": c["upfront"]}
        basis = (f"no rung meets the target, so no break-even comparison is meaningful; "
                 f"the closest, {top['name']} ({top['value']:.3f}), costs "
                 f"{format_usd(c['per_1k'])} per 1,000 requests, {format_usd(c['daily'])}/day"
                 f" and {format_usd(c['upfront'])} upfront")
    else:
        basis = "no rung finished: nothing to compare"
    pairs = [break_even(costs[a], costs[b])
             for i, a in enumerate(candidates) for b in candidates[i + 1:]]
    finite = [p["days"] for p in pairs if p["days"] is not None]
    span = min(730, max(30, math.ceil(max(finite) * 1.5))) if finite else 90  # chart x-axis
    days = [round(span * i / (CHART_POINTS - 1), 2) for i in range(CHART_POINTS)]
    return {
        "price": price.to_dict(),
        "requests_per_day": volume,
        "horizon_days": horizon,
        "assumptions": task.cost.model_dump(mode="json", exclude={"override", "price"}),
        "rungs": costs,
        "met_target": meeting,
        "break_even": {"basis": basis, "candidates": candidates, "pairs": pairs,
                       "closest": closest},
        "chart": {"days": days, "series": {
            name: [costs[name]["upfront"] + costs[name]["daily"] * d for d in days]
            for name in candidates}},
    }


# ---- before the run: an estimate for the budget ----------------------------------------


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

    Calls come from ``ladder.estimate_breakdown`` (rungs, latency timing, few_shot_best's
    dev passes, learning curve, forgetting, freshness). Prompts are sized from real items
    rendered by the backend's chat template: the user turn, the system message, shots (k,
    or the few_shot_best maximum) and, for retrieval, ``retrieval.k`` passages of
    ``retrieval.chunk_tokens`` each, in the question and in each of ``retrieval.shots``
    worked examples. Answers are sized by the training answers (label scoring generates
    nothing). No prefix-cache discount is assumed. Fine-tuning adds its training tokens
    (``lora.epochs`` passes over the training examples).
    """
    from tunewise.ladder import estimate_breakdown
    from tunewise.plugins import family, rung, rung_names
    from tunewise.prompts import system_message

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
        from tunewise.retrieval.chunking import chunk_documents

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
