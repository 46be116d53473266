"""Baselines in every table, degenerate rungs and few_shot_best dev ties (issue 14, item 3),
on a real SNIPS slice with the dummy backend."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tunewise.backends.base import Scored
from tunewise.backends.dummy import DummyBackend
from tunewise.ladder import run_ladder
from tunewise.store import Store
from tunewise.task import load_task

RUNGS = ["zero_shot", "system_prompt", "few_shot_random", "few_shot_best"]


class OneLabel(DummyBackend):
    """A collapsed model: always prefers the same label, whatever the prompt says."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.id = f"one-label:{label}"

    def score(self, prompts, choices):
        return [Scored([1.0 if c == self.label else 0.0 for c in opts], 10, 0.001)
                for opts in choices]


def _snips(make_task, **fields) -> Path:
    fields.setdefault("rungs", RUNGS)
    return make_task(source="snips_intents.jsonl", limit=200,
                     split={"test": 60, "dev": 20, "seed": 0}, **fields)


def test_majority_baseline_is_in_the_result_and_the_table(make_task) -> None:
    from tunewise.cli import results_table

    task = load_task(_snips(make_task))
    result = run_ladder(task, Store(Path("store.db")), climb_all=True,
                        out_dir=Path("out"))
    saved = json.loads(Path("out/result.json").read_text())
    majority = saved["baselines"]["majority"]
    # the majority class is counted on TRAIN, then scored on test
    from tunewise.dataset import load_examples, make_split

    split = make_split(load_examples(task), task)
    train_counts = Counter(e.output for e in split.train)
    top = max(train_counts.values())
    assert majority["label"] == min(k for k, v in train_counts.items() if v == top)
    expected = sum(e.output == majority["label"] for e in split.test) / len(split.test)
    assert majority["value"] == expected and majority["n"] == 60
    assert majority["ci_low"] < expected < majority["ci_high"]
    assert len(majority["per_item"]) == 60
    # significance: zero_shot against the baseline, the others against the better of both
    rungs = {r["name"]: r for r in result["rungs"]}
    assert rungs["zero_shot"]["vs_baseline"]["against"] == "majority"
    better = "zero_shot" if rungs["zero_shot"]["value"] > majority["value"] else "majority"
    assert {r["vs_baseline"]["against"] for n, r in rungs.items() if n != "zero_shot"} == {
        better}
    table = results_table(result)
    first = [c._cells[0] for c in table.columns][0]
    assert str(first).startswith(f"majority class: {majority['label']}")
    assert table.columns[1]._cells[0].startswith(f"{majority['value']:.3f}")


def test_a_collapsed_rung_is_flagged_degenerate_and_ties_on_dev_are_noted(make_task) -> None:
    from rich.console import Console

    from tunewise.cli import results_table

    task = load_task(_snips(make_task))
    result = run_ladder(task, Store(Path("store.db")), backend=OneLabel("play_music"),
                        climb_all=True)
    for r in result["rungs"]:
        assert r["degenerate"] is True and r["top_share"] == 1.0, r["name"]
        assert r["top_answer"] == "play_music"
    best = next(r for r in result["rungs"] if r["name"] == "few_shot_best")
    assert best["info"]["dev_tie"] is True
    assert "too small to choose" in best["info"]["note"]
    console = Console(width=250, record=True)
    console.print(results_table(result))
    text = console.export_text()
    assert text.count("degenerate (100% one answer)") == len(RUNGS)
    assert "dev tie" in text


def test_a_varied_rung_is_not_degenerate(make_task) -> None:
    task = load_task(_snips(make_task, rungs=["few_shot_random"]))
    result = run_ladder(task, Store(Path("store.db")))
    rung = result["rungs"][0]
    assert rung["degenerate"] is False and rung["top_share"] < 0.9
    assert "dev_tie" not in rung["info"]


def test_generation_gets_the_most_common_training_answer(make_task) -> None:
    rows = [{"input": f"question {i}", "output": "yes" if i % 3 else "no"} for i in range(90)]
    task = load_task(make_task(rows, kind="qa", split={"test": 30, "dev": 0, "seed": 1},
                               rungs=["zero_shot"]))
    result = run_ladder(task, Store(Path("store.db")))
    common = result["baselines"]["most_common"]
    assert common["label"] == "yes"
    from tunewise.dataset import load_examples, make_split

    test = make_split(load_examples(task), task).test
    assert common["value"] == sum(e.output == "yes" for e in test) / 30
