"""The checks after the ladder run for every model that trains, not only the first one:
a hosted (here dummy) model first and a local model tuned second is the usual layout of
"prompt the large model, or tune the small one"."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import e2e_rows, write_jsonl


def _task(folder: Path, tiny: Path) -> Path:
    write_jsonl(folder / "data.jsonl", e2e_rows(130))
    task = {"name": "e2e-two", "kind": "extraction", "data": {"path": "data.jsonl"},
            "target": 0.5, "split": {"test": 10, "dev": 10, "seed": 0},
            "models": {"large": {"kind": "dummy", "price": "example-hosted-large",
                                 "rungs": ["zero_shot"]},
                       "small": {"kind": "local", "model": str(tiny), "max_new_tokens": 6,
                                 "price": "local-cpu", "rungs": ["zero_shot", "lora"]}},
            "decision": {"latency_sample": 0},
            "lora": {"epochs": 1, "batch_size": 8, "curve": [50], "patience": 0}}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_forgetting_and_curve_run_on_the_second_model_that_trained(
        tmp_path: Path, tiny_model: Path, module_adapter_cache, one_thread) -> None:
    from tunewise.ladder import estimate_breakdown, plan_run, run_ladder
    from tunewise.results import check_result
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(_task(tmp_path, tiny_model))
    store = Store(tmp_path / "store.db")
    calls = estimate_breakdown(plan_run(task, store))
    assert calls["forgetting@small"] == 2 * 120  # base and tuned small model, general set
    assert calls["learning_curve@small"] == 10  # one subset size, 10 test items
    assert "forgetting" not in calls and "learning_curve" not in calls  # large: no training
    result = run_ladder(task, store, out_dir=tmp_path / "out", climb_all=True)
    assert "forgetting" not in result  # the first model trained nothing
    small = result["models"][1]
    assert small["model"] == "small"
    forgetting = small["forgetting"]
    assert forgetting["n"] == 120 and forgetting["set"]
    assert forgetting["base"]["ci_low"] <= forgetting["base"]["value"] <= \
        forgetting["base"]["ci_high"]
    assert "tuned" in forgetting and "error" not in forgetting
    lora = next(r for r in small["rungs"] if r["name"] == "lora")
    curve = lora["info"]["learning_curve"]
    assert [p["n"] for p in curve["points"]] == [50, 110]
    assert curve["points"][-1]["value"] == lora["value"]
    notes = [r for r in result["verdict"]["reasons"] if r.startswith("on small: ")]
    b = forgetting["base"]["value"]
    assert any("forgetting" in n and f"general set: base {b:.3f}" in n for n in notes), notes
    assert any("(learning curve 50: " in n or "(curve 50: " in n for n in notes), notes
    typed = check_result(result)  # the result's schema knows a further model's forgetting
    assert typed["models"][1]["forgetting"]["n"] == 120
