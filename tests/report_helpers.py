"""A demo-like run for the report, web and browser tests (dummy backend, a few seconds).

The ladder really runs the prompting rungs on a slice of SNIPS. A fine-tuning rung with a
learning curve, a forgetting check and a freshness check (which the dummy backend cannot
run) are then added in the shapes the training and freshness code record, validated by
the same typed schema the ladder applies (``tunewise.results``), so every section and
chart of the report has something to show; cost and verdict are recomputed by their own
modules over the result.
One test input holds a ``<script>`` tag, to prove it is shown as text everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

SHARED_DATA = Path(__file__).parent / "data" / "slices"  # vendored (README there)
SCRIPT_INPUT = 'Play <script>window.__pwned = 1; alert("x")</script> by Queen'
RUNGS = ["zero_shot", "system_prompt", "few_shot_random"]


def write_task(folder: Path, n: int = 160, rungs: list[str] | None = None) -> Path:
    """A dummy-backend classification task whose first test example contains <script>."""
    from tunewise.dataset import load_examples, make_split
    from tunewise.task import load_task

    lines = (SHARED_DATA / "snips_intents.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines[:n]]
    data = folder / "data.jsonl"
    spec = {"name": "snips-demo", "kind": "classification", "data": {"path": "data.jsonl"},
            "target": 0.8, "split": {"test": 40, "dev": 10, "seed": 0},
            "volume": {"requests_per_day": 20000}, "backend": {"kind": "dummy"},
            "rungs": rungs or RUNGS}
    path = folder / "task.yaml"
    path.write_text("# tunewise run task.yaml\n" + yaml.safe_dump(spec), encoding="utf-8")
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    # The split depends on positions only, so the edited row stays in the test split.
    task = load_task(path)
    first_test = make_split(load_examples(task), task).test[0]
    line = int(first_test.id.lstrip("L"))
    rows[line - 1] = {"input": SCRIPT_INPUT, "output": "play_music"}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _lora_rung(base: dict[str, Any]) -> dict[str, Any]:
    curve = [{"n": n, "value": v, "ci_low": v - 0.12, "ci_high": min(1.0, v + 0.1)}
             for n, v in ((25, 0.55), (50, 0.68), (100, 0.8), (110, 0.875))]
    return {**base, "name": "lora", "family": "fine_tuning", "value": 0.875,
            "ci_low": 0.775, "ci_high": 0.975, "tokens": {**base["tokens"],
                                                          "prompt_mean": 14.0,
                                                          "shared_prefix": 2},
            "upfront_s": 900.0, "vs_zero_shot": {"diff": 0.4, "ci_low": 0.25,
                                                 "ci_high": 0.55, "p_value": 0.0005},
            "info": {"learning_curve": {"metric": "accuracy", "points": curve,
                                        "examples_to_target": 110, "monotone": True},
                     "train_examples": 110, "epochs": 3},
            "ece": 0.08}


def demo_like_run(folder: Path, store_path: Path) -> tuple[str, dict[str, Any], Path]:
    """Run the ladder, add the fine-tuning sections, store it; returns (run_id, result, task)."""
    from tunewise.cost import summarize
    from tunewise.ladder import run_ladder
    from tunewise.results import check_result
    from tunewise.store import Store
    from tunewise.task import load_task
    from tunewise.verdict import decide

    task_path = write_task(folder)
    task = load_task(task_path)
    store = Store(store_path)
    result = run_ladder(task, store, out_dir=folder / "run", climb_all=True)
    result.pop("result_path", None)
    run_id = result["run_id"]
    base = next(r for r in result["rungs"] if r["name"] == "system_prompt")
    lora = _lora_rung(base)
    # A second rung that meets the target, so break-even has a pair to compare (issue 18:
    # rungs below the target are never compared).
    lora_sp = {**lora, "name": "lora_system_prompt", "value": 0.85, "ci_low": 0.75,
               "tokens": {**lora["tokens"], "prompt_mean": 40.0},
               "info": {"train_examples": 110, "epochs": 3}}
    result["rungs"] = [r for r in result["rungs"] if r["name"] not in ("lora",
                                                                      "lora_system_prompt")]
    result["rungs"] += [lora, lora_sp]
    # Per-example rows of the tuned rung: right where gold is play_music or get_weather.
    rows = []
    for p in store.predictions(run_id, "system_prompt"):
        good = p["gold"] in ("play_music", "get_weather", "book_restaurant") or p["score"] == 1
        good = good and p["input"] != SCRIPT_INPUT  # so the error browser must show it
        rows.append({"example_id": p["example_id"], "input": p["input"], "gold": p["gold"],
                     "prediction": p["gold"] if good else p["prediction"],
                     "score": 1.0 if good else 0.0, "details": json.loads(p["details_json"])})
    store.save_rung(run_id, "lora", "done", lora, lora, rows)
    store.save_rung(run_id, "lora_system_prompt", "done", lora_sp, lora_sp, rows)
    result["forgetting"] = {"rung": "lora",
                            "base": {"value": 0.62, "ci_low": 0.55, "ci_high": 0.69},
                            "tuned": {"value": 0.6, "ci_low": 0.53, "ci_high": 0.67},
                            "diff": -0.02, "p_value": 0.31, "flagged": False, "n": 200}
    result["freshness"] = {"rung": "lora", "followed_share": 0.1, "kept_old_share": 0.85,
                           "n": 20}
    result["cost"] = summarize(result, task)
    result["verdict"] = decide(result, task, store)
    result = check_result(result)  # the shape the ladder writes, validated the same way
    store.finish_run(run_id, result)
    (folder / "run" / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    store.close()
    return run_id, result, task_path
