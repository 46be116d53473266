"""The forgetting check measures ability independently of answer length (issue 14, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.backends.base import Completion
from tunewise.backends.dummy import DummyBackend
from tunewise.finetune_checks import forgetting_check, verdict_notes
from tunewise.ladder import plan_run
from tunewise.store import Store
from tunewise.task import load_task
from tunewise.training.forgetting import length_shift

FREE = {f"What is {i} plus {i}?": str(2 * i) for i in range(1, 31)}
MC = [{"input": f"Pick the colour number {i}", "output": "red", "choices": ["red", "blue"]}
      for i in range(10)]


class Talker(DummyBackend):
    """Answers every free question right; ``verbose`` wraps the answer in a sentence."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose
        self.id = f"talker:verbose={verbose}"

    def generate(self, prompts, max_tokens, stop=None):
        out = []
        for p in prompts:
            gold = FREE.get(p[-1]["content"], "red")
            text = (f"The answer is {gold}, as you can check by counting it out carefully."
                    if self.verbose else gold)
            out.append(Completion(text, 10, self.count_tokens(text), 0.001))
        return out


@pytest.fixture
def general_task(make_task):
    rows = [{"input": q, "output": a} for q, a in FREE.items()] + MC
    Path("general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = [{"input": f"text {i}", "output": "a" if i % 2 else "b"} for i in range(60)]
    return load_task(make_task(data, split={"test": 20, "dev": 0, "seed": 0},
                               lora={"general": "general.jsonl"}))


def test_shorter_answers_do_not_count_as_a_gain(general_task) -> None:
    plan = plan_run(general_task, Store(Path("store.db")), backend=Talker(verbose=True))
    out = forgetting_check(plan.ctx, Talker(verbose=False))
    # Exact match would score the verbose base 0/30 and the terse tuned model 30/30 on the
    # free items: a +0.75 "gain". Both state every answer, and the multiple-choice items are
    # scored identically by log-prob, so ability is unchanged.
    assert out["base"]["value"] == out["tuned"]["value"]
    assert out["diff"] == 0.0 and not out["flagged"]
    assert out["metric"] == "accuracy" and "log-probability" in out["method"]
    assert 0.0 <= out["base"]["ci_low"] < out["base"]["value"] <= out["base"]["ci_high"] <= 1
    # ... and the length change is reported apart, as a behaviour change
    assert out["behaviour_change"] is True
    length = out["length"]
    assert length["n"] == 30 and length["tuned_mean_tokens"] < length["base_mean_tokens"]
    notes = verdict_notes({"task": {"target": 0.5}, "rungs": [], "forgetting": out})
    assert any(n.startswith("behaviour change") and "shorter" in n for n in notes)


def test_lost_ability_is_still_flagged(general_task) -> None:
    class Forgetful(Talker):
        def generate(self, prompts, max_tokens, stop=None):
            return [Completion("no idea", 10, 2, 0.001) for _ in prompts]

    plan = plan_run(general_task, Store(Path("store.db")), backend=Talker(verbose=True))
    out = forgetting_check(plan.ctx, Forgetful(verbose=False))
    assert out["diff"] == pytest.approx(-30 / 40) and out["flagged"]
    assert out["p_value"] < 0.05


def test_length_shift_rule() -> None:
    assert length_shift([10] * 5, [4] * 5)["shifted"] is True
    assert length_shift([10] * 5, [9] * 5)["shifted"] is False
    assert length_shift([2] * 5, [1] * 5)["shifted"] is False  # under 2 tokens: noise
    assert length_shift([4] * 5, [10] * 5)["shifted"] is True
