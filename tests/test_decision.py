"""The verdict's decisions on constructed dummy-backend runs: ties go to the cheaper rung,
the three-way diagnosis follows the evidence, advice follows what the run could do.

Each run is a real ladder run on the dummy backend (real store, rows, costs and result
shape); then chosen rungs get constructed per-item answers (right on a given set of
items, wrong elsewhere), so a test controls exactly the evidence the verdict sees. A
fine-tuning rung, which the dummy backend cannot train, is added the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunewise.comparisons import holm, p_text, paired_bootstrap
from tunewise.cost import summarize
from tunewise.evaluate import evaluate
from tunewise.ladder import run_ladder
from tunewise.results import load_result
from tunewise.rungs.lora import training_stop
from tunewise.store import Store
from tunewise.task import load_task
from tunewise.verdict import decide

SHARED = Path(__file__).parent / "data" / "slices"  # vendored (README there)
CLINIC = Path(__file__).resolve().parents[1] / "tunewise" / "demo" / "clinic"


def write_task(folder: Path, **spec: Any) -> Path:
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump({"backend": {"kind": "dummy"}, **spec}), encoding="utf-8")
    return path


def snips_task(folder: Path, **extra: Any) -> Path:
    rows = (SHARED / "snips_intents.jsonl").read_text(encoding="utf-8").splitlines()[:400]
    (folder / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return write_task(folder, name="snips", kind="classification",
                      data={"path": "data.jsonl"}, target=0.99,
                      split={"test": 100, "dev": 20, "seed": 0}, **extra)


def clinic_task(folder: Path, **extra: Any) -> Path:
    for name in ("questions.jsonl", "corpus.jsonl"):
        shutil.copy(CLINIC / name, folder / name)
    return write_task(folder, name="clinic", kind="qa", data={"path": "questions.jsonl"},
                      corpus={"path": "corpus.jsonl"}, target=0.6,
                      retrieval={"method": "bm25", "k": 3, "chunk_tokens": 32, "overlap": 8},
                      split={"test": 60, "dev": 20, "seed": 0}, **extra)


class Run:
    """A dummy-backend run whose rungs can be given constructed answers."""

    def __init__(self, task_path: Path, rungs: list[str]) -> None:
        self.task = load_task(task_path)
        self.store = Store(task_path.parent / "store.db")
        self.result = run_ladder(self.task, self.store, out_dir=task_path.parent / "out",
                                 climb_all=True, rungs=rungs)
        self.run_id = self.result["run_id"]

    def rung(self, name: str) -> dict[str, Any]:
        return next(r for r in self.result["rungs"] if r["name"] == name)

    def answer(self, name: str, right: set[int] | range, wrong: str = "zzz",
               like: str | None = None, family: str | None = None,
               info: dict[str, Any] | None = None) -> None:
        """Give ``name`` answers right on the items ``right`` (by position), ``wrong``
        text elsewhere; ``like`` creates the rung as a copy of another (e.g. lora)."""
        base = self.store.predictions(self.run_id, like or name)
        rows, preds, gold = [], [], []
        for i, p in enumerate(base):
            text = p["gold"] if i in right else wrong
            rows.append({"example_id": p["example_id"], "input": p["input"],
                         "gold": p["gold"], "prediction": text, "score": 0.0,
                         "details": {}})
            preds.append(text)
            gold.append(p["gold"])
        score = evaluate(preds, gold, self.task.metric)
        for row, s in zip(rows, score.per_example, strict=True):
            row["score"] = s
        if like:
            r = {**json.loads(json.dumps(self.rung(like))), "name": name,
                 "family": family or self.rung(like)["family"]}
            r.pop("vs_zero_shot", None)
            self.result["rungs"].append(r)
        r = self.rung(name)
        r.update({k: v for k, v in score.to_dict().items() if k != "metric"})
        if info:
            r["info"] = {**r.get("info", {}), **info}
        self.store.save_rung(self.run_id, name, "done", r, r, rows)

    def verdict(self) -> dict[str, Any]:
        self.result["cost"] = summarize(self.result, self.task)
        self.result.pop("verdict", None)
        v = decide(self.result, self.task, self.store)
        self.result["verdict"] = v
        load_result(self.result)  # the constructed result has the shape the ladder writes
        return v


def cited_ids(v: dict[str, Any]) -> set[str]:
    ids = {c["id"] for c in v["comparisons"]}
    assert len(ids) == len(v["comparisons"])
    return ids


# ---- the paired test -------------------------------------------------------------------


def test_paired_bootstrap_recomputes_macro_f1_and_words_the_floor():
    gold = ["a"] * 50 + ["b"] * 50
    a = {str(i): {"prediction": "a", "gold": g, "score": float(g == "a")}
         for i, g in enumerate(gold)}
    b = {str(i): {"prediction": g, "gold": g, "score": 1.0} for i, g in enumerate(gold)}
    acc = paired_bootstrap(a, b, "accuracy")
    f1 = paired_bootstrap(a, b, "macro_f1")
    assert acc["diff"] == pytest.approx(0.5)
    # macro-F1 of "always a" is (2/3 + 0) / 2 = 1/3, so the gain is 2/3, not 0.5
    assert f1["diff"] == pytest.approx(1 - 1 / 3)
    assert f1["ci_low"] > 0.5 and f1["p"] == pytest.approx(1 / 2000)
    assert p_text(f1["p"]) == "p < 0.0005"
    same = paired_bootstrap(a, a, "accuracy")
    assert same["diff"] == 0 and same["p"] == 1.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# ---- choice by cost, ties toward cheap --------------------------------------------------


def test_a_costlier_rung_one_point_better_but_tied_loses_to_the_cheaper(tmp_path):
    run = Run(snips_task(tmp_path), ["zero_shot", "few_shot_random"])
    run.answer("zero_shot", range(60), wrong="zzz")
    run.answer("few_shot_random", range(61), wrong="zzz")  # +0.01, tied
    v = run.verdict()
    cost = run.result["cost"]["rungs"]
    assert cost["few_shot_random"]["total_over_horizon"] > cost["zero_shot"][
        "total_over_horizon"]
    assert v["rung"] == "zero_shot" and v["rule"] == "none_meets"
    assert set(v["tied"]) == {"zero_shot", "few_shot_random"}
    tie = next(c for c in v["comparisons"] if {c["a"], c["b"]} ==
               {"zero_shot", "few_shot_random"})
    assert tie["ci_low"] <= 0 <= tie["ci_high"] and not tie["significant"]
    text = " ".join(v["reasons"])
    assert f"(comparison {tie['id']}: " in text and "not significant after Holm" in text
    assert "they are tied, and zero_shot is" in text and "cheaper over 365 days" in text
    assert "tied for best" in v["summary"]


def test_a_significant_gain_still_wins_over_the_cheaper_rung(tmp_path):
    run = Run(snips_task(tmp_path), ["zero_shot", "few_shot_random"])
    run.answer("zero_shot", range(50), wrong="zzz")
    run.answer("few_shot_random", range(80), wrong="zzz")
    v = run.verdict()
    assert v["rung"] == "few_shot_random" and v["tied"] == []
    (c,) = [c for c in v["comparisons"] if "chosen vs runner-up" in c["purpose"]]
    assert c["significant"] and c["diff"] == pytest.approx(0.3)
    # every comparison sentence cites a stated comparison
    ids = cited_ids(v)
    for line in v["reasons"]:
        if "comparison #" in line:
            assert any(f"comparison {i}" in line for i in ids), line


def test_below_the_majority_baseline_is_never_called_useful(tmp_path):
    run = Run(snips_task(tmp_path), ["zero_shot", "few_shot_random"])
    run.answer("zero_shot", range(20), wrong="zzz")
    run.answer("few_shot_random", range(40), wrong="zzz")
    gold = [p["gold"] for p in run.store.predictions(run.run_id, "zero_shot")]
    label = max(set(gold), key=gold.count)
    per = [float(g == label) for g in gold]
    # a baseline stronger than every rung (as if the test set were that skewed)
    per = [1.0] * 45 + per[45:]
    run.result["baselines"] = {"majority": {"label": label, "value": sum(per) / len(per),
                                            "n": len(per), "per_item": per}}
    v = run.verdict()
    assert "Caution" in v["summary"] and label in v["summary"]
    ref = next(c for c in v["comparisons"] if c["a"] == "baseline:majority")
    assert not (ref["significant"] and ref["diff"] > 0)
    assert any("not significantly better than always answering" in r for r in v["reasons"])


# ---- the three-way diagnosis --------------------------------------------------------------


def test_high_recall_and_low_scores_is_reader_capacity(tmp_path):
    run = Run(clinic_task(tmp_path), ["zero_shot", "few_shot_random", "rag"])
    run.answer("zero_shot", range(5))
    run.answer("few_shot_random", range(8))
    run.answer("rag", range(10), info={"recall@3": {"value": 0.95, "ci_low": 0.88,
                                                     "ci_high": 0.99, "n": 60}})
    v = run.verdict()
    d = v["diagnosis"]
    assert d["gap"] == "reader" and d["recall"] == pytest.approx(0.95)
    assert "reader capacity" in v["summary"]
    assert any("larger model" in s and "0.95" in s for s in v["next"])
    assert not any("improve retrieval" in s for s in v["next"])


def test_low_recall_and_a_rag_gain_is_a_knowledge_gap(tmp_path):
    run = Run(clinic_task(tmp_path), ["zero_shot", "few_shot_random", "rag"])
    run.answer("zero_shot", range(3))
    run.answer("few_shot_random", range(5))
    run.answer("rag", range(30), info={"recall@3": {"value": 0.4, "ci_low": 0.3,
                                                     "ci_high": 0.5, "n": 60}})
    v = run.verdict()
    d = v["diagnosis"]
    assert d["gap"] == "knowledge"
    (c,) = [c for c in v["comparisons"] if "retrieval vs best few-shot" in c["purpose"]]
    assert c["significant"] and c["diff"] == pytest.approx(25 / 60)
    assert any(f"comparison {c['id']}" in line and "missing knowledge" in line
               for line in d["knowledge"])
    assert any("improve retrieval: recall@3 is 0.40" in s for s in v["next"])


def e2e_task(folder: Path) -> Path:
    rows = (SHARED / "e2e_records.jsonl").read_text(encoding="utf-8").splitlines()  # 400
    (folder / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return write_task(folder, name="e2e", kind="extraction", data={"path": "data.jsonl"},
                      metric="exact_match", target=0.9,
                      split={"test": 100, "dev": 20, "seed": 0})


def test_format_errors_fixed_by_lora_is_a_behaviour_gap(tmp_path):
    run = Run(e2e_task(tmp_path), ["zero_shot", "few_shot_random"])
    run.answer("zero_shot", range(10), wrong="I think it is a nice place to eat")
    run.answer("few_shot_random", range(30), wrong="a lovely restaurant by the river")
    run.answer("lora", range(70), wrong="name: Nowhere, eatType: pub", like="few_shot_random",
               family="fine_tuning", info={"stopped_by": "epochs", "loss_falling": False})
    v = run.verdict()
    d = v["diagnosis"]
    assert d["gap"] == "behaviour", d
    assert any("outside the expected format" in line and "tuning fixes the format" in line
               for line in d["behaviour"])
    assert any("a behaviour the prompt could not teach" in line for line in d["behaviour"])


# ---- under-training and consistent advice -----------------------------------------------


def test_training_stop_tells_a_capped_adapter_from_a_converged_one():
    falling = {"steps": [{"loss": 3.0 - 0.1 * i} for i in range(20)], "steps_done": 20,
               "epochs": [{"dev_loss": 2.5}], "stopped_early": False}
    state = training_stop(falling, 20)
    assert state["stopped_by"] == "max_steps" and state["loss_falling"] is True
    flat = {"steps": [{"loss": 1.0} for _ in range(20)], "steps_done": 40,
            "epochs": [{"dev_loss": 1.2}, {"dev_loss": 1.2}], "stopped_early": False}
    state = training_stop(flat, None)
    assert state["stopped_by"] == "epochs" and state["loss_falling"] is False


def test_an_under_trained_adapter_is_not_called_one_that_adds_little(tmp_path):
    run = Run(e2e_task(tmp_path), ["zero_shot", "few_shot_random"])
    run.answer("zero_shot", range(10), wrong="name: Nowhere")
    run.answer("few_shot_random", range(30), wrong="name: Nowhere")
    run.answer("lora", range(1), wrong="name: Nowhere", like="few_shot_random",
               family="fine_tuning", info={"stopped_by": "max_steps", "loss_falling": True,
                                           "steps": 30, "epochs": 0, "max_steps": 30})
    v = run.verdict()
    text = " ".join(v["reasons"])
    assert "under-trained" in text and "adds little" not in text
    assert any("raise lora.max_steps (it stopped at 30 steps)" in s for s in v["next"])


def test_next_steps_never_advise_a_rung_the_run_refused(tmp_path):
    rows = (SHARED / "snips_intents.jsonl").read_text(encoding="utf-8").splitlines()[:150]
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    path = write_task(tmp_path, name="small", kind="classification",
                      data={"path": "data.jsonl"}, target=0.99,
                      split={"test": 50, "dev": 20, "seed": 0})
    run = Run(path, ["zero_shot", "system_prompt", "lora"])
    v = run.verdict()
    lora = run.rung("lora")
    assert lora["status"] == "skipped"
    steps = " ".join(v["next"])
    assert "run lora" not in steps and "run the lora" not in steps
    assert "add a corpus" not in steps  # a closed-label classifier needs no corpus
    assert "lora was not run" in steps


def test_the_learning_curve_slope_at_its_largest_size_is_named(tmp_path):
    from tunewise.training.curve import slope_per_100

    points = [{"n": 50, "value": 0.4}, {"n": 100, "value": 0.5}, {"n": 300, "value": 0.7}]
    assert slope_per_100(points) == pytest.approx(0.1)
    assert slope_per_100(points[:1]) is None
    run = Run(e2e_task(tmp_path), ["zero_shot", "few_shot_random"])
    run.answer("zero_shot", range(10), wrong="name: Nowhere")
    run.answer("few_shot_random", range(30), wrong="name: Nowhere")
    curve = {"metric": "exact_match", "examples_to_target": None, "monotone": True,
             "slope_per_100": 0.1,
             "points": [{"n": n, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
                        for n, v in ((100, 0.2), (200, 0.3), (300, 0.4))]}
    run.answer("lora", range(40), wrong="name: Nowhere", like="few_shot_random",
               family="fine_tuning", info={"learning_curve": curve, "stopped_by": "epochs",
                                           "loss_falling": False})
    v = run.verdict()
    assert any("learning curve gains +0.100 exact_match per 100 examples at 300" in s
               and "more labelled data should help" in s for s in v["next"])


def test_vs_zero_shot_is_the_task_metric_for_macro_f1(tmp_path):
    run = Run(snips_task(tmp_path, metric="macro_f1"), ["zero_shot", "system_prompt"])
    zero, system = run.rung("zero_shot"), run.rung("system_prompt")
    vs = system["vs_zero_shot"]
    assert vs["diff"] == pytest.approx(system["value"] - zero["value"])
    assert vs["ci_low"] <= vs["diff"] <= vs["ci_high"]
