"""`tunewise demo` (issue 18): both sides of the central question in one command, ending
with two verdicts, each with its diagnosis and cost line; `demo NAME` still runs one.

The dummy backend keeps these fast (fine-tuning needs the real model, so here the
symptom demo's lora rung is skipped and says why); the full demo on SmolLM2 is in the
integration test at the end."""

from __future__ import annotations

import json

import pytest
import yaml
from cli_helpers import tunewise

from tunewise.cli import app
from tunewise.demos import DEMOS, closing, demo_path


def test_demo_tasks_climb_to_fine_tuning_and_to_retrieval_with_freshness():
    symptoms = yaml.safe_load(demo_path("symptoms").read_text())
    clinic = yaml.safe_load(demo_path("clinic").read_text())
    assert symptoms["rungs"][-1] == "lora" and symptoms["lora"]["curve"] == []
    assert "rag" in clinic["rungs"] and clinic["freshness"]["run"] is True
    for name in DEMOS:
        assert demo_path(name).read_text().startswith(f"# tunewise demo {name}")


@pytest.mark.model  # few_shot_knn and rag embed with the bundled MiniLM
def test_demo_runs_both_and_ends_with_two_verdicts(runner, tmp_path):
    res = runner.invoke(app, ["demo", "--backend", "dummy", "--json", "-o",
                              str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert list(data["demos"]) == ["symptoms", "clinic"]
    for name in DEMOS:
        assert (tmp_path / "out" / name / "result.json").is_file()
    clinic = {r["name"]: r for r in data["demos"]["clinic"]["rungs"]}
    assert clinic["rag"]["status"] == "done"
    assert "freshness" in data["demos"]["clinic"]
    symptoms = {r["name"]: r for r in data["demos"]["symptoms"]["rungs"]}
    assert symptoms["lora"]["status"] == "skipped"  # dummy: no weights to tune
    verdicts = data["verdicts"]
    assert [v["demo"] for v in verdicts] == ["symptoms", "clinic"]
    for v, name in zip(verdicts, DEMOS, strict=True):
        result = data["demos"][name]
        assert v["summary"] == result["verdict"]["summary"]
        assert v["gap"] == result["verdict"]["diagnosis"]["gap"]
        per_1k = result["cost"]["rungs"][v["rung"]]["per_1k"]
        assert v["cost"].startswith(f"{v['rung']}: $") and "per 1,000 requests" in v["cost"]
        assert per_1k > 0
        chosen = next(r for r in result["rungs"] if r["name"] == v["rung"])
        assert f"(95% CI {chosen['ci_low']:.3f}-{chosen['ci_high']:.3f})" in v["score"]


def test_demo_text_and_stderr_are_clean(tmp_path):
    out = tunewise("demo", "--backend", "dummy", timeout=900)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "demo 1/2: symptom-to-specialty" in text and "demo 2/2: clinic-handbook" in text
    closing_part = text.split("The two verdicts", 1)[1]
    assert closing_part.count("verdict: ") == 2 and closing_part.count("diagnosis: ") == 2
    assert closing_part.count("cost: ") == 2
    assert not [line for line in out.stderr.splitlines() if "Warning" in line], out.stderr


@pytest.mark.model  # few_shot_knn and rag embed with the bundled MiniLM
def test_one_demo_by_name_and_an_unknown_name(runner):
    res = runner.invoke(app, ["demo", "clinic", "--backend", "dummy", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["task"]["name"] == "clinic-handbook"
    bad = runner.invoke(app, ["demo", "nope"])
    assert bad.exit_code == 2 and "unknown demo 'nope'" in bad.output


def test_closing_reads_the_diagnosis_and_cost_of_each_verdict():
    result = {"task": {"name": "t", "metric": "accuracy"}, "run_id": "r1",
              "rungs": [{"name": "lora", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9}],
              "verdict": {"rung": "lora", "summary": "Use lora.",
                          "diagnosis": {"gap": "behaviour", "behaviour": ["lora +0.2"]}},
              "cost": {"requests_per_day": 1000, "price": {"name": "p", "example": True},
                       "rungs": {"lora": {"per_1k": 0.5, "daily": 0.5, "upfront": 3.0}}}}
    (v,) = closing({"symptoms": result})
    assert v["diagnosis"] == "a behaviour gap: training helps"
    assert v["evidence"] == ["lora +0.2"]
    assert v["cost"] == ("lora: $0.50 per 1,000 requests, $0.50/day at 1,000 requests/day, "
                         "$3.00 upfront (price 'p', example prices)")
    assert v["score"] == "accuracy 0.800 (95% CI 0.700-0.900)"


@pytest.mark.integration
@pytest.mark.slow
def test_full_demo_on_smollm2_measures_both_diagnoses(tmp_path):
    """The real thing (minutes): both diagnoses measured, never 'unmeasured'."""
    out = tunewise("demo", "--json", "-o", str(tmp_path / "out"), timeout=3600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for v in data["verdicts"]:
        assert v["gap"] != "unmeasured"
    assert {r["name"]: r["status"] for r in data["demos"]["symptoms"]["rungs"]}["lora"] == "done"
    assert not [line for line in out.stderr.splitlines() if "Warning" in line]
