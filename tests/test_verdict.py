"""The stop rule, diagnosis and verdict on synthetic results, and a demo-like dummy run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tunewise.cli import app
from tunewise.task import TaskSpec
from tunewise.verdict import decide, error_types, format_problem

NUMBER = re.compile(r"\d")


def spec(target: float = 0.85, kind: str = "classification", **extra) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "kind": kind, "data": {"path": "d.jsonl"},
                                    "target": target, **extra})


def rung(name: str, family: str, value: float, prompt: float = 100, upfront_s: float = 1.0,
         **extra) -> dict:
    out = {"name": name, "family": family, "status": "done", "value": value,
           "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100,
           "tokens": {"prompt_mean": prompt, "completion_mean": 1, "shared_prefix": 20},
           "latency_ms": {"p50": 40, "p95": 90}, "upfront_s": upfront_s,
           "calls_made": 100, "cache_hits": 0, **extra}
    if name != "zero_shot":
        out.setdefault("vs_zero_shot", {"diff": value - 0.4, "ci_low": 0.0, "ci_high": 0.5,
                                        "p_value": 0.001})
    return out


def result(*rungs: dict, train: int = 400) -> dict:
    return {"run_id": "", "task": {"name": "t", "kind": "classification",
                                   "metric": "accuracy", "target": 0.85},
            "split": {"train": train, "dev": 50, "test": 100}, "rungs": list(rungs)}


class RowsStore:
    """Per-item rows consistent with each synthetic rung's value: rung i gets the first
    round(value * n) items right, so higher rungs answer a superset (paired, like a real
    ladder where better context fixes more items)."""

    def __init__(self, result: dict, n: int = 100) -> None:
        self.rows = {}
        for r in result["rungs"]:
            if r.get("status") != "done":
                continue
            k = round(r["value"] * n)
            self.rows[r["name"]] = [
                {"example_id": f"L{i}", "input": f"q{i}", "gold": "a" if i % 2 else "b",
                 "prediction": ("a" if i % 2 else "b") if i < k else ("b" if i % 2 else "a"),
                 "score": 1.0 if i < k else 0.0} for i in range(n)]

    def predictions(self, run_id, rung):
        return self.rows.get(rung, [])


def decide_rows(r: dict, task: TaskSpec) -> dict:
    """The verdict with per-item rows (so every comparison is tested)."""
    r = {**r, "run_id": r.get("run_id") or "run-1"}
    return decide(r, task, RowsStore(r))


def assert_cited(verdict: dict) -> None:
    assert len(verdict["reasons"]) >= 3
    assert all(NUMBER.search(r) for r in verdict["reasons"]), verdict["reasons"]


def test_target_met_at_the_first_rung_stops_there():
    r = result(rung("zero_shot", "prompting", 0.9),
               {"name": "system_prompt", "family": "prompting", "status": "not_needed",
                "reason": "zero_shot already meets the target"})
    v = decide_rows(r, spec())
    assert (v["rung"], v["rule"], v["meets_target"]) == ("zero_shot", "target_met", True)
    assert v["met_target"] == ["zero_shot"]
    assert "accuracy 0.900" in v["reasons"][0] and "meeting the target 0.85" in v["reasons"][0]
    assert any("system_prompt: not_needed" in x for x in v["rejected"])
    assert_cited(v)


def test_ninety_percent_rule_prefers_prompting_over_fine_tuning():
    r = result(rung("zero_shot", "prompting", 0.4),
               rung("few_shot_best", "prompting", 0.78, prompt=1500),   # 0.78 / 0.85 = 92%
               rung("rag", "retrieval", 0.70),
               rung("lora", "fine_tuning", 0.90, prompt=60, upfront_s=900))
    v = decide_rows(r, spec())
    assert (v["rung"], v["rule"], v["meets_target"]) == ("few_shot_best", "prompting_enough",
                                                         False)
    assert "Prompting is enough" in v["summary"] and "92%" in v["summary"]
    (lora,) = [x for x in v["rejected"] if x.startswith("lora:")]
    assert "meets the target (0.900)" in lora and "prompting already reaches 92%" in lora
    assert any("improve" in s or "prompt" in s for s in v["next"])
    assert_cited(v)


def test_below_ninety_percent_fine_tuning_that_meets_wins():
    r = result(rung("zero_shot", "prompting", 0.3), rung("few_shot_best", "prompting", 0.6),
               rung("lora", "fine_tuning", 0.88, prompt=40, upfront_s=600))
    v = decide_rows(r, spec())
    assert (v["rung"], v["rule"]) == ("lora", "target_met")
    assert v["diagnosis"]["gap"] == "behaviour"
    assert v["diagnosis"]["lora_gain"] == pytest.approx(0.28)
    assert any("+0.280" in x for x in v["reasons"])
    assert_cited(v)


def test_nothing_meets_names_the_closest_and_diagnoses_knowledge():
    r = result(rung("zero_shot", "prompting", 0.2), rung("few_shot_knn", "prompting", 0.4),
               rung("rag", "retrieval", 0.65), train=60)
    v = decide_rows(r, spec())
    assert (v["rung"], v["rule"], v["meets_target"]) == ("rag", "none_meets", False)
    assert v["met_target"] == []
    assert v["diagnosis"]["gap"] == "knowledge"
    assert v["diagnosis"]["rag_gain"] == pytest.approx(0.25)
    assert "No rung meets the target 0.85; rag comes closest" in v["summary"]
    assert any("retrieval" in s for s in v["next"])
    assert any("60 training examples" in s for s in v["next"])
    assert_cited(v)


def test_only_prompting_ran_leaves_the_gap_unmeasured():
    r = result(rung("zero_shot", "prompting", 0.13), rung("few_shot_knn", "prompting", 0.47,
                                                          prompt=400),
               rung("few_shot_best", "prompting", 0.19, prompt=800, upfront_s=300))
    v = decide_rows(r, spec(target=0.7))
    assert (v["rung"], v["rule"]) == ("few_shot_knn", "none_meets")
    assert v["diagnosis"]["gap"] == "unmeasured"
    assert "only prompting rungs ran" in v["summary"]
    # no corpus: rag cannot run, so only lora is advised (consistent with what can run)
    assert any("run lora" in s for s in v["next"])
    assert not any("rag" in s for s in v["next"])
    # a cheaper-per-day rung that misses the target is not offered as a break-even
    assert not any("repays" in s for s in v["next"])
    assert_cited(v)


def test_nothing_ran():
    v = decide(result({"name": "lora", "family": "fine_tuning", "status": "skipped",
                       "reason": "under 100 examples"}), spec())
    assert v["rung"] is None and "under 100 examples" in v["reasons"][0]


def test_freshness_and_forgetting_feed_the_verdict():
    r = result(rung("zero_shot", "prompting", 0.2), rung("few_shot_knn", "prompting", 0.5),
               rung("rag", "retrieval", 0.9), rung("lora", "fine_tuning", 0.52))
    # the shapes the freshness test and the forgetting check record
    r["freshness"] = {"status": "done", "rung": "rag", "edited_questions": 20, "followed": 18,
                      "followed_share": 0.9, "kept_old": 1, "kept_old_share": 0.05}
    r["forgetting"] = {"base": {"value": 0.6, "ci_low": 0.5, "ci_high": 0.7},
                       "tuned": {"value": 0.45, "ci_low": 0.35, "ci_high": 0.55}, "diff": -0.15,
                       "diff_ci_low": -0.2, "diff_ci_high": -0.1, "flagged": True}
    v = decide_rows(r, spec())
    assert (v["rung"], v["rule"]) == ("rag", "target_met")
    assert v["diagnosis"]["freshness"] == {"rag": 0.9}
    assert v["diagnosis"]["gap"] == "knowledge"
    assert any("90% of rag's answers follow the edit" in x for x in v["reasons"])
    (lora,) = [x for x in v["rejected"] if x.startswith("lora:")]
    assert "0.520, below the target" in lora and "forgetting flagged (-0.150" in lora


def test_format_errors_point_to_behaviour():
    assert format_problem("", "name: a", "extraction") == "empty"
    assert format_problem("a nice place", "name: a", "extraction") == "unparseable record"
    assert format_problem("name: a, colour: b", "name: a", "extraction", "",
                          {"name"}) == "unknown fields"
    assert format_problem("name: a", "name: b", "extraction", "", {"name"}) is None
    assert format_problem("one two three four five six seven eight nine ten eleven twelve "
                          "thirteen", "blue", "qa") == "too long for a short answer"
    assert format_problem("Hi there", "x", "generation", "hi there!") == "echoes the input"

    class FakeStore:
        rows = {
            "few_shot_best": [("free text", "name: a", 0.0), ("name: a", "name: a", 1.0),
                              ("name: z", "name: a", 0.0), ("blah", "name: b", 0.0)],
            "lora": [("name: a", "name: a", 1.0), ("name: c", "name: a", 0.0),
                     ("name: b", "name: b", 1.0), ("name: b", "name: b", 1.0)],
        }

        def predictions(self, run_id, rung):
            return [{"prediction": p, "gold": g, "score": s, "input": "in"}
                    for p, g, s in self.rows.get(rung, [])]

    r = result(rung("few_shot_best", "prompting", 0.25), rung("lora", "fine_tuning", 0.75))
    r["run_id"] = "run-1"
    task = spec(kind="extraction", metric="exact_match")
    errors = error_types(r, task, FakeStore())
    assert errors["few_shot_best"] == {"wrong": 3, "format_errors": 2,
                                       "share_of_wrong": pytest.approx(2 / 3),
                                       "kinds": {"unparseable record": 2}}
    v = decide(r, task, FakeStore())
    assert any("67% of few_shot_best's wrong answers (2 of 3) are outside the expected format"
               in x for x in v["reasons"])
    assert v["diagnosis"]["gap"] == "behaviour"


def test_demo_like_run_ends_with_a_cited_verdict_and_break_even(make_task, runner,
                                                                tmp_path: Path):
    task = make_task(limit=300, target=0.95, volume={"requests_per_day": 10000})
    out = runner.invoke(app, ["run", str(task), "--all", "--rungs", "zero_shot,system_prompt",
                              "-o", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    v = res["verdict"]
    assert v["rung"] in {"zero_shot", "system_prompt"}
    assert_cited(v)
    cost = res["cost"]
    assert cost["requests_per_day"] == 10000 and cost["price"]["name"] == "local-cpu"
    assert cost["break_even"]["pairs"] == []  # neither meets the 0.95 target
    assert cost["break_even"]["closest"]["name"] in {"zero_shot", "system_prompt"}
    for c in cost["rungs"].values():
        assert c["per_request"] > 0 and c["daily"] == pytest.approx(10000 * c["per_request"])
    text = " ".join(out.output.split())
    assert "Break-even: no rung meets the target, so no break-even comparison is " \
        "meaningful" in text
    assert "rungs meeting the target: none" in text
    assert f"Verdict: {v['summary'].split(':')[0]}" in text


def test_among_rungs_meeting_the_target_the_cheapest_over_the_horizon_wins():
    # few_shot_best is lower on the ladder but its long prompt costs more every day than
    # the tuned rung's training costs once: over 365 days lora is cheaper
    r = result(rung("zero_shot", "prompting", 0.4),
               rung("few_shot_best", "prompting", 0.9, prompt=3000),
               rung("lora", "fine_tuning", 0.9, prompt=40, upfront_s=600))
    v = decide_rows(r, spec())
    assert (v["rung"], v["rule"]) == ("lora", "target_met")
    assert any("costs the least over 365 days" in x for x in v["reasons"])
    (fsb,) = [x for x in v["rejected"] if x.startswith("few_shot_best:")]
    assert "also meets the target" in fsb and "more over 365 days" in fsb
    # a shorter horizon makes the upfront training count: few_shot_best wins
    v = decide_rows(r, spec(decision={"horizon_days": 0.001}))
    assert v["rung"] == "few_shot_best"
