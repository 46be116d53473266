"""Few-shot selection: stratification, context fitting, and that test rows stay unread."""

from __future__ import annotations

from collections import Counter

import pytest

from tunewise.backends.dummy import DummyBackend
from tunewise.dataset import Example
from tunewise.ladder import plan_run
from tunewise.rungs.few_shot import FewShotBest, FewShotRandom, fit_shots, stratified_sample
from tunewise.store import Store
from tunewise.task import load_task


def _plan(make_task, **fields):
    task = load_task(make_task(limit=250, **fields))
    return plan_run(task, Store(), DummyBackend(), run_id="t")


def test_stratified_sample_covers_every_label():
    pool = [Example(str(i), f"x{i}", f"l{i % 5}") for i in range(100)]
    shots = stratified_sample(pool, 10, labelled=True, seed=3)
    assert Counter(s.output for s in shots) == {f"l{i}": 2 for i in range(5)}
    assert stratified_sample(pool, 10, True, 3) == shots  # deterministic by seed
    assert stratified_sample(pool, 10, True, 4) != shots


def test_random_shots_fixed_across_inputs(make_task):
    plan = _plan(make_task)
    prepared = FewShotRandom().prepare(plan.ctx)
    a, b = (prepared.prompt_for(e) for e in plan.ctx.split.test[:2])
    assert a[:-1] == b[:-1]  # identical shared prefix -> KV cache reuse
    assert len(a) == 1 + 2 * 8 + 1


def test_shots_dropped_not_truncated_when_too_long(make_task):
    plan = _plan(make_task, few_shot={"max_prompt_tokens": 120})
    shots = plan.ctx.split.train[:8]
    messages, dropped = fit_shots(plan.ctx, "hello", shots)
    assert dropped > 0
    kept = [m["content"] for m in messages if m["role"] == "user"][:-1]
    # Every kept shot appears whole; the most relevant (last) shots are the ones kept.
    assert kept == [s.input for s in shots[dropped:]]


class PoisonedList(list):
    """A test split that fails the test if anything reads it."""

    def _boom(self, *a, **k):
        raise AssertionError("few_shot_best read the test split")

    __iter__ = __getitem__ = __len__ = _boom


def test_few_shot_best_never_reads_test(make_task):
    plan = _plan(make_task, few_shot={"best_max": 10, "best_candidates": 3})
    plan.ctx.split.test = PoisonedList(plan.ctx.split.test)
    prepared = FewShotBest().prepare(plan.ctx)
    assert len(prepared.info["candidates"]) == 3
    best = max(c["dev_score"] for c in prepared.info["candidates"])
    assert prepared.info["dev_score"] == best
    dev_ids = {e.id for e in plan.ctx.split.dev}
    assert not dev_ids & set(prepared.info["shots"])  # shots come from train only


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
def test_few_shot_beats_zero_shot_on_dummy(runner, make_task, tmp_path):
    import json

    from tunewise.cli import app

    task = make_task(limit=300, split={"test": 80, "dev": 20, "seed": 0},
                     rungs=["zero_shot", "few_shot_knn"])
    res = runner.invoke(app, ["run", str(task), "--all", "--json", "--out", str(tmp_path)])
    knn = json.loads(res.stdout)["rungs"][1]
    assert knn["vs_zero_shot"]["p_value"] < 0.05
    assert knn["vs_zero_shot"]["diff"] > 0


@pytest.mark.parametrize("name", ["few_shot_random",
                                  pytest.param("few_shot_knn", marks=pytest.mark.model),
                                  "few_shot_best"])
def test_show_prompt_shows_shots(runner, make_task, name):
    from tunewise.cli import app

    task = make_task(limit=200, few_shot={"k": 3, "best_max": 3, "best_candidates": 2})
    res = runner.invoke(app, ["show-prompt", str(task), name, "--messages"])
    assert res.exit_code == 0, res.output
    import json

    messages = json.loads(res.stdout)
    assert sum(m["role"] == "assistant" for m in messages) == 3
