"""Few-shot rungs: worked examples in the prompt, chosen three ways.

- ``few_shot_random``: k training examples, label-stratified for classification, the same
  for every test input (so the backend reuses the shared prefix's key/value cache).
- ``few_shot_knn``: for each input, the k training examples nearest by embedding.
- ``few_shot_best``: the practitioners' "20 best examples" experiment done properly: random
  search over candidate shot sets (as DSPy's BootstrapFewShotWithRandomSearch does), each
  scored on the dev split; the best set is kept. The test split is never read.

Every rung drops shots (never truncates text) when the prompt would not fit the context.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import numpy as np

from tunewise.backends.base import Messages
from tunewise.dataset import Example
from tunewise.evaluate import evaluate
from tunewise.extras import missing
from tunewise.prompts import build_messages, row_system
from tunewise.retrieval.embeddings import shared_embedder
from tunewise.rungs.base import Prepared, PromptRung, RunContext, RungMeta, answer


def stratified_sample(pool: list[Example], k: int, labelled: bool, seed: int) -> list[Example]:
    """k examples; for classification, labels taken round-robin so each is represented."""
    rng = random.Random(seed)
    if not labelled:
        return rng.sample(pool, min(k, len(pool)))
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in pool:
        by_label[ex.output].append(ex)
    for group in by_label.values():
        rng.shuffle(group)
    labels = sorted(by_label)
    rng.shuffle(labels)
    picked: list[Example] = []
    while len(picked) < min(k, len(pool)):
        for label in labels:
            if by_label[label] and len(picked) < k:
                picked.append(by_label[label].pop())
    rng.shuffle(picked)
    return picked


def prompt_budget(ctx: RunContext) -> int:
    """Prompt tokens allowed: the configured cap, within the model's context window."""
    window = getattr(ctx.backend.inner, "context_length", None) or 10**9
    room = window - ctx.task.backend.max_new_tokens - 8
    return min(ctx.task.few_shot.max_prompt_tokens, room)


def fit_shots(ctx: RunContext, ex: Example | str, shots: list[Example], warn: bool = True
              ) -> tuple[Messages, int]:
    """Messages for ``ex`` (an example, or a bare input) with as many shots as fit; drops
    shots from the front (least relevant first).

    Returns the messages and the number of shots dropped.
    """
    if isinstance(ex, str):
        ex = Example("input", ex, "")
    budget = prompt_budget(ctx)
    dropped = 0
    while True:
        messages = build_messages(ctx.task, ctx.labels, ex.input,
                                  shots=[{"input": s.input, "output": s.output}
                                         for s in shots[dropped:]],
                                  row_system=row_system(ctx.task, ex))
        if dropped >= len(shots):
            break
        if ctx.backend.count_tokens(ctx.backend.render(messages)) <= budget:
            break
        dropped += 1
    if dropped and warn:
        ctx.log(f"prompt too long for {budget} tokens: dropped {dropped} of {len(shots)} shots")
    return messages, dropped


def fixed_prompt(ctx: RunContext, shots: list[Example]):
    """A prompt builder that uses the same shots for every input (fitted once)."""
    probe = max(ctx.split.dev or ctx.split.train,
                key=lambda e: len(e.input) + len(row_system(ctx.task, e) or ""))
    _, dropped = fit_shots(ctx, probe, shots)
    kept = shots[dropped:]

    def prompt_for(ex: Example) -> Messages:
        return fit_shots(ctx, ex, kept, warn=False)[0]

    return prompt_for, kept


class FewShotRandom(PromptRung):
    """k random training examples (label-stratified), the same for every input."""

    name = "few_shot_random"
    meta = RungMeta("prompting", 30, prompt=("query", "system", "shots"))

    def prepare(self, ctx: RunContext) -> Prepared:
        shots = stratified_sample(ctx.split.train, ctx.task.few_shot.k, bool(ctx.labels),
                                  ctx.task.split.seed)
        prompt_for, kept = fixed_prompt(ctx, shots)
        return Prepared(self.name, prompt_for, {"shots": [s.id for s in kept], "k": len(kept)})


class FewShotKNN(PromptRung):
    """The k training examples most similar to each input (cosine, MiniLM embeddings)."""

    name = "few_shot_knn"
    meta = RungMeta("prompting", 40, prompt=("query", "system", "shots"))

    def requires(self, ctx: RunContext) -> str | None:
        return missing("retrieval", "sentence_transformers")

    def prepare(self, ctx: RunContext) -> Prepared:
        started = time.perf_counter()
        embedder = shared_embedder(ctx.shared, ctx.store.path.parent / "embeddings")
        train = ctx.split.train
        matrix = embedder.encode([e.input for e in train], on_progress=lambda done, total: ctx.log(
            f"few_shot_knn: embedded {done:,} of {total:,} training inputs"))
        k = min(ctx.task.few_shot.k, len(train))

        def prompt_for(ex: Example) -> Messages:
            sims = matrix @ embedder.encode([ex.input])[0]
            nearest = np.argsort(-sims, kind="stable")[:k]
            # Most similar last, next to the question; fitting drops from the front.
            shots = [train[i] for i in reversed(nearest)]
            return fit_shots(ctx, ex, shots, warn=False)[0]

        return Prepared(self.name, prompt_for, {"k": k, "pool": len(train)},
                        upfront_s=time.perf_counter() - started)


class FewShotBest(PromptRung):
    """Up to ``best_max`` shots chosen by random search, scored on the dev split only."""

    name = "few_shot_best"
    meta = RungMeta("prompting", 50, prompt=("query", "system", "best_shots"))

    def requires(self, ctx: RunContext) -> str | None:
        if not ctx.split.dev:
            return "needs a dev split to choose shots on (set split.dev > 0)"
        return None

    def prepare(self, ctx: RunContext) -> Prepared:
        started = time.perf_counter()
        cfg = ctx.task.few_shot
        train, dev = ctx.split.train, ctx.split.dev
        size = min(cfg.best_max, len(train))
        candidates = [
            stratified_sample(train, size, bool(ctx.labels), ctx.task.split.seed + 1000 + i)
            for i in range(cfg.best_candidates)
        ]
        trials = []
        for i, shots in enumerate(candidates):
            prompt_for, kept = fixed_prompt(ctx, shots)
            preds = answer(ctx, ctx.backend, dev, [prompt_for(e) for e in dev])
            score = evaluate([p.text for p in preds], [e.output for e in dev], ctx.task.metric)
            trials.append({"candidate": i, "dev_score": score.value,
                           "shots": [s.id for s in kept]})
            ctx.log(f"few_shot_best: candidate {i + 1}/{len(candidates)} "
                    f"dev {ctx.task.metric} {score.value:.3f}")
        best = max(trials, key=lambda t: t["dev_score"])  # first wins ties: stable
        by_id = {e.id: e for e in train}
        prompt_for, kept = fixed_prompt(ctx, [by_id[i] for i in best["shots"]])
        info = {"shots": [s.id for s in kept], "k": len(kept), "dev_score": best["dev_score"],
                "candidates": trials, "dev_size": len(dev)}
        tied = [t["candidate"] for t in trials if t["dev_score"] == best["dev_score"]]
        if len(tied) > 1:  # the first was kept, but the dev split could not tell them apart
            info["dev_tie"] = True
            info["note"] = (f"{len(tied)} of {len(trials)} candidate shot sets tie at dev "
                            f"{ctx.task.metric} {best['dev_score']:.3f}: the {len(dev)}-item "
                            "dev split is too small to choose between them (the first was "
                            "kept; raise split.dev)")
            ctx.log(f"few_shot_best: {info['note']}")
        return Prepared(self.name, prompt_for, info, upfront_s=time.perf_counter() - started)
