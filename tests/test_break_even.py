"""Break-even only where it means something (issue 18): rungs that meet the target, no
negative savings shown as numbers, and a plain sentence when no comparison is meaningful."""

from __future__ import annotations

from cost_helpers import rung, spec
from rich.console import Console

from tunewise.cli import cost_tables
from tunewise.cost import break_even, summarize


def _render(cost: dict) -> str:
    console = Console(width=200, record=True)
    for table in cost_tables(cost):
        console.print(table)
    return console.export_text()


def test_a_pair_without_saving_never_pays_back_and_shows_no_negative_number():
    pair = break_even({"name": "few_shot_knn", "upfront": 0.5, "daily": 1.0},
                      {"name": "rag", "upfront": 2.0, "daily": 3.0})
    assert (pair["a"], pair["b"], pair["days"], pair["pays_back"]) == (
        "few_shot_knn", "rag", None, False)
    assert pair["daily_saving"] == 0.0
    assert pair["text"].startswith("rag never pays back")


def test_cost_table_of_two_rungs_meeting_the_target_reads_never_pays_back():
    result = {"split": {"train": 300}, "rungs": [
        rung("few_shot_knn", "prompting", 0.9, prompt=50),
        rung("rag", "retrieval", 0.95, prompt=900, upfront_s=600)]}
    cost = summarize(result, spec(count_eval_calls=False), volume=10_000)
    (pair,) = cost["break_even"]["pairs"]
    assert pair["days"] is None  # rag costs more upfront and per day
    text = _render(cost)
    assert "never pays back" in text
    assert "$-" not in text and "-$" not in text


def test_cost_table_when_nothing_meets_the_target_is_one_sentence_with_the_closest_cost():
    result = {"split": {"train": 300}, "rungs": [
        rung("zero_shot", "prompting", 0.2), rung("few_shot_knn", "prompting", 0.469)]}
    cost = summarize(result, spec(), volume=10_000)
    text = " ".join(_render(cost).split())
    assert "Break-even at" not in text  # no pair table between failing rungs
    assert "no break-even comparison is meaningful" in text
    assert "the closest, few_shot_knn (0.469), costs" in text


def test_one_rung_meeting_the_target_has_nothing_to_compare_with():
    result = {"split": {"train": 300}, "rungs": [
        rung("zero_shot", "prompting", 0.2), rung("lora", "fine_tuning", 0.9,
                                                  upfront_s=300)]}
    cost = summarize(result, spec(), volume=10_000)
    assert cost["break_even"]["pairs"] == [] and cost["break_even"]["closest"] is None
    assert "only lora meets the target" in cost["break_even"]["basis"]
