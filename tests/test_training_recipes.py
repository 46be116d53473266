"""The training recipes take their pieces (a backend, a prompt function, train/predict
callables), not the rung context: they run here without a task, a store or a rung."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from tunewise.backends.base import Completion, Messages
from tunewise.backends.dummy import DummyBackend
from tunewise.training.curve import learning_curve
from tunewise.training.forgetting import GeneralItem, compare_general, score_general


@dataclass
class FakeAdapter:
    n: int
    train_seconds: float
    trained_now: bool = True
    log: dict[str, Any] = field(default_factory=dict)


def test_the_curve_trains_each_size_and_ends_with_the_full_result() -> None:
    gold = ["a", "b", "a", "b"]
    trained: list[tuple[int, str]] = []
    lines: list[str] = []

    def train(n: int, label: str) -> FakeAdapter:
        trained.append((n, label))
        return FakeAdapter(n, float(n), log={"steps_done": 2 * n})

    def predict(adapter: FakeAdapter, label: str) -> list[str]:
        assert label == f"lora@{adapter.n}"
        return gold[:adapter.n // 10] + ["x"] * (len(gold) - adapter.n // 10)  # 10 per right

    full = {"n": 40, "value": 1.0, "ci_low": 0.9, "ci_high": 1.0,
            "info": {"train_seconds": 40.0, "steps": 80, "trained_now": False}}
    out = learning_curve([10, 20], gold, "accuracy", 0.5, full, train=train, predict=predict,
                         log=lines.append)
    assert trained == [(10, "lora@10"), (20, "lora@20")]
    assert lines == ["learning curve: training on 10 examples",
                     "learning curve: training on 20 examples"]
    assert [(p["n"], p["value"], p["steps"]) for p in out["points"]] == [
        (10, 0.25, 20), (20, 0.5, 40), (40, 1.0, 80)]
    assert out["points"][-1]["trained_now"] is False
    assert out["examples_to_target"] == 20 and out["metric"] == "accuracy"
    assert out["slope_per_100"] == pytest.approx((1.0 - 0.5) / 20 * 100)


class Recorder(DummyBackend):
    """Adds the two numbers it is asked about (``wrong``: never), keeping every prompt."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.wrong = wrong
        self.seen: list[Messages] = []

    def generate(self, prompts, max_tokens, stop=None):
        self.seen += prompts
        out = []
        for p in prompts:
            n = int(re.search(r"What is (\d+)", p[-1]["content"]).group(1))
            text = "no idea" if self.wrong else f"That makes {2 * n}."
            out.append(Completion(text, 10, self.count_tokens(text), 0.001))
        return out

    def score(self, prompts, choices):
        self.seen += prompts
        return super().score(prompts, choices)


ITEMS = [GeneralItem(str(i), f"What is {i} plus {i}?", str(2 * i))
         for i in range(1, 13)]


def prompt(text: str) -> Messages:
    return [{"role": "user", "content": f"Q: {text}"}]


def test_forgetting_uses_the_prompt_function_it_is_given() -> None:
    model = Recorder()
    got = score_general(model, ITEMS, prompt)
    assert [m[-1]["content"] for m in model.seen] == [f"Q: {it.input}" for it in ITEMS]
    assert got.score.n == len(ITEMS) and len(got.lengths) == len(ITEMS)


def test_a_tuned_model_that_lost_its_answers_is_flagged() -> None:
    same = compare_general(Recorder(), Recorder(), ITEMS, prompt, 0.05, "a set")
    assert same["diff"] == 0.0 and not same["flagged"] and same["set"] == "a set"
    worse = compare_general(Recorder(), Recorder(wrong=True), ITEMS, prompt, 0.05, "a set")
    assert worse["tuned"]["value"] == 0.0 and worse["base"]["value"] == 1.0
    assert worse["flagged"] and worse["p_value"] < 0.05 and worse["threshold"] == 0.05
