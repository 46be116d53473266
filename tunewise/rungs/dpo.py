"""The ``dpo`` rung: preference tuning on rows that carry a rejected answer beside the output.

When the behaviour wanted is a preference (this answer rather than that one) and not a
label, supervised tuning only sees the good answer. DPO also sees the bad one and pushes
the model's log-probability margin between them (see :mod:`tunewise.training.dpo`). It
starts from the task's supervised adapter (``dpo.start_from: sft``, the default, shared
with the ``lora`` rung) or from the base model, and answers on the same bare prompt.

Measured: the task metric (by the ladder, as every rung), preference accuracy on the test
pairs (is the chosen answer's log-prob above the rejected one's? for the base, the
supervised and the DPO model) and the forgetting check, both after the ladder.
"""

from __future__ import annotations

from typing import Any

from tunewise.backends.base import CachedBackend, Messages
from tunewise.dataset import Example
from tunewise.errors import TunewiseError
from tunewise.rungs.base import Prepared, PromptRung, RunContext, RungMeta
from tunewise.rungs.lora import (
    Lora,
    Tuned,
    check_examples,
    local_backend,
    naming_the_model_line,
    train_prompt,
    tuned_model,
)

NO_PAIRS = ("the dpo rung needs preference data: set data.rejected to the field holding "
            "the rejected answer of each row")


def rejected_of(ctx: RunContext, ex: Example) -> str:
    """The row's rejected answer (load_examples already refused rows without one)."""
    return str(ex.extra[ctx.task.data.rejected]).strip()


def encode_pairs(ctx: RunContext, examples: list[Example]) -> tuple[list[Any], int]:
    """Preference pairs as token features; pairs with either side too long are skipped."""
    from tunewise.training.dpo import Pair
    from tunewise.training.features import encode_all

    base = local_backend(ctx)
    prompts = [train_prompt(ctx, e) for e in examples]
    limit = ctx.task.lora.max_length
    chosen, _ = encode_all(base, prompts, [e.output for e in examples], 10**9)
    rejected, _ = encode_all(base, prompts, [rejected_of(ctx, e) for e in examples], 10**9)
    pairs = [Pair(c, r) for c, r in zip(chosen, rejected, strict=True)
             if max(len(c.input_ids), len(r.input_ids)) <= limit]
    return pairs, len(examples) - len(pairs)


def load_dpo_model(ctx: RunContext, adapter: Any, sft: Any | None) -> Any:
    """A local backend answering with the SFT adapter (if any) and then the DPO adapter
    merged in; its id names both, so its cache entries are its own. Nothing loads until
    a call misses the cache (a re-run answered from the store imports no torch)."""
    from tunewise.backends.local import LocalBackend

    base = local_backend(ctx)
    return LocalBackend(base.name, batch_size=base.batch_size,
                        adapter=sft.path if sft else None, merge_adapter=True,
                        score_end_of_turn=base.score_end_of_turn, threads=base.threads,
                        then_adapter=("dpo", adapter.path))


def pair_texts(ctx: RunContext, examples: list[Example]) -> list[tuple[Any, Any]]:
    """(prompt, [chosen, rejected]) of each row: what a DPO training is made of before
    tokenizing (its text key)."""
    return [(train_prompt(ctx, e), [e.output, rejected_of(ctx, e)]) for e in examples]


def dpo_model(ctx: RunContext) -> Tuned:
    """The task's DPO-tuned model, trained (or loaded from the cache) once per run. A
    training done before is found again from its text (no tokenizer, no torch)."""
    from tunewise.backends.local import resolve_model
    from tunewise.training.adapters import remembered, text_key
    from tunewise.training.dpo import train_or_load_dpo

    if "dpo" in ctx.shared:
        return ctx.shared["dpo"]
    if ctx.task.data.rejected is None:
        raise TunewiseError(NO_PAIRS, path=ctx.task.source, field="data.rejected")
    check_examples(ctx, "dpo")
    settings = ctx.task.dpo
    sft = tuned_model(ctx).adapter if settings.start_from == "sft" else None
    spec = ctx.task.lora.model_copy(update={"lr": settings.lr, "epochs": settings.epochs,
                                            "max_steps": settings.max_steps})
    base = local_backend(ctx)

    def train_now() -> tuple[Any, int]:
        train, skipped = encode_pairs(ctx, ctx.split.train)
        dev, _ = encode_pairs(ctx, ctx.split.dev)
        with naming_the_model_line(ctx):
            adapter = train_or_load_dpo(base.id, resolve_model(base.name), spec,
                                        settings.beta, train, dev, base.tok.pad_token_id,
                                        sft, log=ctx.log)
        return adapter, skipped

    key = text_key(f"{base.id}|dpo|beta={settings.beta}|sft={sft.key if sft else None}",
                   spec, pair_texts(ctx, ctx.split.train), pair_texts(ctx, ctx.split.dev))
    adapter, skipped = remembered(key, train_now)
    if skipped:
        ctx.log(f"dpo: {skipped} pairs are longer than lora.max_length and were skipped")
    ctx.shared["dpo"] = Tuned(adapter, load_dpo_model(ctx, adapter, sft), skipped)
    return ctx.shared["dpo"]


class Dpo(PromptRung):
    """The preference-tuned model on the bare input."""

    name = "dpo"
    meta = RungMeta("fine_tuning", 120, needs={"train_examples", "weights", "rejected"},
                    prompt=("query",), opt_in=True)

    def requires(self, ctx: RunContext) -> str | None:
        if ctx.task.data.rejected is None:
            return NO_PAIRS
        return Lora().requires(ctx)

    def prompt(self, ctx: RunContext, ex: Example) -> Messages:
        """How this rung prompts the tuned model: exactly as ``lora`` does."""
        return train_prompt(ctx, ex)

    def prepare(self, ctx: RunContext) -> Prepared:
        tuned = dpo_model(ctx)
        settings = ctx.task.dpo
        info: dict[str, Any] = {**tuned.info(), "method": "dpo",
                                "start_from": settings.start_from, "beta": settings.beta,
                                "pairs_skipped_too_long": tuned.skipped_long}
        upfront = tuned.adapter.train_seconds
        if settings.start_from == "sft":
            upfront += ctx.shared["lora"].adapter.train_seconds
        backend = CachedBackend(tuned.backend, ctx.store, ctx.run_id or None, self.name)
        return Prepared(self.name, lambda ex: self.prompt(ctx, ex), info=info,
                        upfront_s=upfront, backend=backend)


def preference_check(ctx: RunContext) -> dict[str, Any]:
    """Preference accuracy on the test pairs for the base, supervised and DPO models.

    A pair counts as right when the model gives the chosen answer a higher log-probability
    than the rejected one (both scored after the same prompt, end-of-turn included).
    """
    from tunewise.evaluate import bootstrap_ci

    test = ctx.split.test
    prompts = [train_prompt(ctx, e) for e in test]
    choices = [[e.output, rejected_of(ctx, e)] for e in test]
    models = {"base": ctx.backend.for_rung("preference_check")}
    if "lora" in ctx.shared:
        models["sft"] = CachedBackend(ctx.shared["lora"].backend, ctx.store,
                                      ctx.run_id or None, "preference_check")
    models["dpo"] = CachedBackend(ctx.shared["dpo"].backend, ctx.store, ctx.run_id or None,
                                  "preference_check")
    out: dict[str, Any] = {"n": len(test)}
    for name, backend in models.items():
        scored = backend.score(prompts, choices)
        margins = [s.logprobs[0] - s.logprobs[1] for s in scored]
        right = [float(m > 0) for m in margins]
        lo, hi = bootstrap_ci(right)
        out[name] = {"accuracy": sum(right) / max(len(right), 1), "ci_low": lo, "ci_high": hi,
                     "mean_margin": sum(margins) / max(len(margins), 1)}
    return out
