"""What the ladder does after a fine-tuning rung ran: the curve, forgetting, verdict notes.

Fine-tuning is judged twice (DESIGN.md): the task gain, with its learning curve, and the
regression on a general set against the base model. Both run once per run and model that
trained, after the rungs, on the adapter the lora rungs of that model shared.

This module is the glue between the run and the recipes: it takes the pieces out of the
rung context (backends, the prompt function, the training split) and hands them to
:mod:`tunewise.training.curve` and :mod:`tunewise.training.forgetting`, which know nothing
of rungs. It sits above both ``rungs/`` and ``training/``.
"""

from __future__ import annotations

from typing import Any

from tunewise.backends.base import CachedBackend
from tunewise.comparisons import p_text, paired_bootstrap
from tunewise.errors import TunewiseError
from tunewise.prompts import build_messages
from tunewise.rungs.base import RunContext, answer
from tunewise.rungs.dpo import preference_check
from tunewise.rungs.lora import load_tuned, release, train_adapter, train_prompt
from tunewise.training import curve
from tunewise.training.forgetting import compare_general, load_general


def learning_curve(ctx: RunContext, main: dict[str, Any]) -> dict[str, Any]:
    """The learning curve of the ``lora`` rung (``main`` is its finished result): adapters
    trained on the first n training examples, answering the test split as the rung does."""
    task, test = ctx.task, ctx.split.test
    prompts = [train_prompt(ctx, e) for e in test]

    def train(n: int, label: str) -> Any:
        return train_adapter(ctx, ctx.split.train[:n], label=label)[0]

    def predict(adapter: Any, label: str) -> list[str]:
        tuned = load_tuned(ctx, adapter)
        backend = CachedBackend(tuned, ctx.store, ctx.run_id or None, label)
        preds = answer(ctx, backend, test, prompts)
        release(tuned)
        return [p.text for p in preds]

    sizes = curve.curve_sizes(task.lora.curve, len(ctx.split.train))
    return curve.learning_curve(sizes, [e.output for e in test], task.metric, task.target,
                                {**main, "n": len(ctx.split.train)}, train=train,
                                predict=predict, log=ctx.log)


def forgetting_check(ctx: RunContext, tuned: Any) -> dict[str, Any]:
    """Base vs tuned on the general set (see :func:`training.forgetting.compare_general`).

    Args:
        ctx: the run (its backend is the base model).
        tuned: the local backend with the task's adapter.
    """
    spec = ctx.task.lora
    rung = "forgetting_check"
    return compare_general(
        ctx.backend.for_rung(rung), CachedBackend(tuned, ctx.store, ctx.run_id or None, rung),
        load_general(spec.general),
        lambda text: build_messages(ctx.task, None, text, system=False),
        ctx.task.decision.forgetting_threshold,
        str(spec.general) if spec.general else "bundled general set")


def after_ladder(ctx: RunContext, results: list[dict[str, Any]], tag: str = ""
                 ) -> dict[str, Any]:
    """Add the learning curve to the ``lora`` result; return ``{"forgetting": ...}``.

    Runs once per model that trained (``ctx`` and ``results`` of that model; ``tag`` is
    the suffix of its rung names in the store, ``""`` for the first model).
    Does nothing (returns ``{}``) when no fine-tuning rung trained or loaded an adapter.
    A check that cannot run (e.g. a broken general-set file) is reported, not fatal:
    the rungs' results are already measured and stored.
    """

    def forgetting(backend: Any) -> dict[str, Any]:
        try:
            return forgetting_check(ctx, backend)
        except TunewiseError as exc:
            ctx.log(f"forgetting check skipped: {exc}")
            return {"error": str(exc)}

    done = {r["name"]: r for r in results if r.get("status") == "done"}
    for name in ("full_ft", "dpo"):  # models of their own: their own forgetting check
        if name in done and name in ctx.shared:
            done[name]["info"]["forgetting"] = forgetting(ctx.shared[name].backend)
    if "dpo" in done and "dpo" in ctx.shared:
        done["dpo"]["info"]["preference"] = preference_check(ctx)
    if "full_ft" in done and "lora" in done:
        done["full_ft"]["info"]["vs_lora"] = paired(ctx, "lora" + tag, "full_ft" + tag)
    tuned = ctx.shared.get("lora")
    if tuned is None:
        return {}
    lora = done.get("lora")
    if lora is not None and ctx.task.lora.curve:
        # Each curve point trains and loads a model of its own: the tuned models kept for
        # the rungs are dropped meanwhile (reloaded lazily if the forgetting check misses).
        for kept in ctx.shared.values():
            release(getattr(kept, "backend", None))
        lora["info"]["learning_curve"] = learning_curve(ctx, lora)
    return {"forgetting": forgetting(tuned.backend)}


def paired(ctx: RunContext, a: str, b: str) -> dict[str, Any]:
    """Paired bootstrap of rung ``b`` against rung ``a`` on the test items both answered, in
    the task's metric (diff = b - a, its 95% CI, two-sided p), from the stored rows."""
    rows = {name: {str(r["example_id"]): dict(r) for r in ctx.store.predictions(ctx.run_id, name)}
            for name in (a, b)}
    return {"a": a, "b": b, **paired_bootstrap(rows[a], rows[b], ctx.task.metric)}


def _pct(x: float) -> str:
    return f"{x:.3f}"


def verdict_notes(result: dict[str, Any]) -> list[str]:
    """Reasons for the verdict about fine-tuning, each citing a number from the run."""
    notes: list[str] = []
    target = result["task"]["target"]
    lora = next((r for r in result["rungs"] if r["name"] == "lora" and r["status"] == "done"),
                None)
    curve = (lora or {}).get("info", {}).get("learning_curve")
    if curve:
        pts = curve["points"]
        shape = ", ".join(f"{p['n']}: {_pct(p['value'])}" for p in pts)
        if curve.get("slope_per_100") is not None:  # how fast it still climbs at the end
            shape += f"; {curve['slope_per_100']:+.3f} per 100 examples at {pts[-1]['n']}"
        needed = curve["examples_to_target"]
        if needed is not None:
            notes.append(f"lora reached the target {target} with {needed} training examples "
                         f"(learning curve {shape})")
        elif len(pts) > 1 and pts[-1]["value"] > pts[-2]["ci_high"]:
            notes.append(f"lora is still improving with more data and below the target "
                         f"{target}; more examples would be needed (learning curve {shape})")
        else:
            notes.append(f"lora stays below the target {target} and has levelled off; more of "
                         f"the same examples is unlikely to close the gap (curve {shape})")
    notes += full_ft_notes(result) + dpo_notes(result)
    forgetting = result.get("forgetting") or {}
    cited = next((c for c in (result.get("verdict") or {}).get("comparisons", [])
                  if c.get("purpose", "").startswith("forgetting")), None)
    if "base" in forgetting:
        b, t = forgetting["base"], forgetting["tuned"]
        change = (f"general set: base {_pct(b['value'])} [{_pct(b['ci_low'])}, "
                  f"{_pct(b['ci_high'])}] vs tuned {_pct(t['value'])} [{_pct(t['ci_low'])}, "
                  f"{_pct(t['ci_high'])}], change {forgetting['diff']:+.3f}"
                  + (f", comparison {cited['id']}" if cited else ""))
        if forgetting["flagged"]:
            notes.append(f"forgetting flagged: tuning cost general ability beyond the "
                         f"{forgetting['threshold']} threshold ({change}, "
                         f"{p_text(forgetting['p_value'])})")
        else:
            notes.append(f"no forgetting beyond the {forgetting['threshold']} threshold "
                         f"({change})")
        length = forgetting.get("length") or {}
        if length.get("shifted"):
            way = "shorter" if length["tuned_mean_tokens"] < length["base_mean_tokens"] else \
                "longer"
            notes.append(f"behaviour change: after tuning, general-set answers are {way} "
                         f"(mean {length['base_mean_tokens']:.1f} -> "
                         f"{length['tuned_mean_tokens']:.1f} tokens over {length['n']} "
                         "questions); ability above is scored independently of length")
    return notes


def further_model_notes(result: dict[str, Any]) -> list[str]:
    """:func:`verdict_notes` for every model after the first (its learning curve, its
    forgetting check, full_ft and dpo beside lora), each line prefixed ``on MODEL:``."""
    out: list[str] = []
    for model in (result.get("models") or [])[1:]:
        view = {**result, "rungs": model.get("rungs") or [],
                "forgetting": model.get("forgetting"), "verdict": {}}
        out += [f"on {model['model']}: {line}" for line in verdict_notes(view)]
    return out


def _mb(n: Any) -> str:
    return f"{n / 2**20:,.1f} MB" if isinstance(n, int | float) else "?"


def full_ft_notes(result: dict[str, Any]) -> list[str]:
    """Is LoRA enough? LoRA against the full fine-tune: quality (CI, paired test), time,
    memory and what each leaves behind to host."""
    by = {r["name"]: r for r in result["rungs"] if r.get("status") == "done"}
    full, lora = by.get("full_ft"), by.get("lora")
    if full is None or lora is None:
        return []
    fi, li = full.get("info", {}), lora.get("info", {})
    vs = fi.get("vs_lora") or {}
    costs = (f"artefact {_mb(fi.get('artefact_bytes'))} vs {_mb(li.get('artefact_bytes'))}, "
             f"training {fi.get('train_seconds') or 0:.0f} s vs {li.get('train_seconds') or 0:.0f}"
             f" s, peak RSS {fi.get('peak_rss_mb') or 0:,.0f} vs "
             f"{li.get('peak_rss_mb') or 0:,.0f} MB")
    scores = (f"lora {_pct(lora['value'])} vs full_ft {_pct(full['value'])} "
              f"[{_pct(full['ci_low'])}, {_pct(full['ci_high'])}]")
    test = (f"; paired diff {vs['diff']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}], "
            f"{p_text(vs['p'])}" if vs else "")
    if full["ci_low"] <= lora["value"]:
        return [f"lora is within the confidence interval of the full fine-tune ({scores}"
                f"{test}): the full fine-tune is not worth its cost ({costs})"]
    return [f"the full fine-tune beats lora beyond its confidence interval ({scores}{test}); "
            f"weigh that against its cost ({costs}) and hosting a model of its own"]


def dpo_notes(result: dict[str, Any]) -> list[str]:
    """What preference tuning bought: test-pair preference accuracy before and after."""
    dpo = next((r for r in result["rungs"] if r["name"] == "dpo" and r.get("status") == "done"),
               None)
    pref = (dpo or {}).get("info", {}).get("preference")
    if not pref:
        return []
    acc = ", ".join(f"{k} {_pct(v['accuracy'])} [{_pct(v['ci_low'])}, {_pct(v['ci_high'])}]"
                    for k, v in pref.items() if isinstance(v, dict))
    start = pref.get("sft") or pref["base"]
    gain = pref["dpo"]["accuracy"] - start["accuracy"]
    verdict = ("dpo prefers the chosen answers more often than the model it started from"
               if pref["dpo"]["ci_low"] > start["accuracy"] else
               "dpo's preference accuracy is within the noise of the model it started from")
    return [f"{verdict} (preference accuracy on {pref['n']} test pairs: {acc}; change "
            f"{gain:+.3f}); task metric {_pct(dpo['value'])}"]
