"""The lora rungs in the ladder: adapter per run, reload without retraining, the learning
curve, the forgetting check, guard rails; and the real SmolLM2 on e2e (integration).

Fast tests use the tiny random Llama from test_training (real code paths, seconds); the
integration test trains SmolLM2 on e2e records and checks acceptance 1-3 of issue 6.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import DATA, REPO, e2e_rows, write_jsonl

from tunewise.cli import app

pytestmark = pytest.mark.usefixtures("one_thread", "module_adapter_cache")



def tiny_task(tmp_path: Path, model: Path, n: int = 150, **lora) -> Path:
    write_jsonl(tmp_path / "data.jsonl", e2e_rows(n))
    task = {"name": "e2e-tiny", "kind": "extraction", "data": {"path": "data.jsonl"},
            "target": 0.5, "split": {"test": 10, "dev": 10, "seed": 0},
            "backend": {"kind": "local", "model": str(model), "max_new_tokens": 6},
            "lora": {"epochs": 1, "batch_size": 8, "curve": [40, 80], "patience": 0,
                     **lora}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
             ) -> tuple[Path, dict]:
    """One ladder run on the tiny model (trains the adapter and the curve points once)."""
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    folder = tmp_path_factory.mktemp("tiny_run")
    path = tiny_task(folder, tiny_model)
    result = run_ladder(load_task(path), Store(folder / "store.db"), out_dir=folder / "out",
                        climb_all=True, rungs=["system_prompt", "lora", "lora_system_prompt"])
    return path, result


def test_ladder_trains_once_and_reports_curve_and_forgetting(tiny_run) -> None:
    path, result = tiny_run
    by = {r["name"]: r for r in result["rungs"]}
    lora, lsp = by["lora"], by["lora_system_prompt"]
    assert lora["status"] == "done" and lora["family"] == "fine_tuning"
    info = lora["info"]
    assert info["train_examples"] == 130 and info["trained_now"]
    assert info["steps"] == 17  # ceil(130 / 8), one epoch
    assert info["train_tokens"] > 130 * 20 and info["final_loss"] > 0
    assert lora["upfront_s"] == info["train_seconds"] > 0
    # the combination reuses the adapter: same key, nothing trained again
    assert lsp["info"]["adapter_key"] == info["adapter_key"]
    # the run keeps its own copy of the adapter and its training log
    saved = path.parent / "out" / "adapters" / "lora"
    assert (saved / "adapter_model.safetensors").is_file()
    log = json.loads((saved / "training_log.json").read_text())
    assert len(log["steps"]) == 17 and log["epochs"][0]["dev_loss"] > 0
    # records: field-level F1 beside exact match for every rung
    for r in (by["system_prompt"], lora, lsp):
        assert 0 <= r["secondary"]["field_f1"]["value"] <= 1
        assert "ci_low" in r["secondary"]["field_f1"]
    curve = info["learning_curve"]
    assert [p["n"] for p in curve["points"]] == [40, 80, 130]
    assert curve["points"][-1]["value"] == lora["value"]
    assert all(p["ci_low"] <= p["value"] <= p["ci_high"] for p in curve["points"])
    f = result["forgetting"]
    assert f["n"] == 120 and f["threshold"] == 0.05
    for side in ("base", "tuned"):
        assert f[side]["ci_low"] <= f[side]["value"] <= f[side]["ci_high"]
    assert f["diff"] == pytest.approx(f["tuned"]["value"] - f["base"]["value"])
    assert f["flagged"] == (-f["diff"] > 0.05)
    assert any("general set" in r for r in result["verdict"]["reasons"])
    assert any("learning curve" in r or "curve" in r for r in result["verdict"]["reasons"])


def test_predict_reloads_the_adapter_without_training(tiny_run, runner, monkeypatch) -> None:
    """Acceptance 5: `tunewise predict --rung lora` finds the cached adapter."""
    from tunewise.store import Store
    from tunewise.training import lora as trainer_module

    path, result = tiny_run
    key = next(r for r in result["rungs"] if r["name"] == "lora")["info"]["adapter_key"]

    def no_training(self):
        raise AssertionError("predict must not train")

    monkeypatch.setattr(trainer_module.LoraTrainer, "train", no_training)
    out = runner.invoke(app, ["predict", str(path), "--rung", "lora", "--json",
                              "Blue Spice is a coffee shop in the city centre."])
    assert out.exit_code == 0, out.output
    assert "answer" in json.loads(out.stdout)
    ids = {r[0] for r in Store().db.execute("SELECT backend_id FROM calls")}
    assert any(key in i for i in ids)  # answered by the tuned model, cached apart from base


def test_train_command_finds_the_cached_adapter(tiny_run, runner) -> None:
    path, result = tiny_run
    out = runner.invoke(app, ["train", str(path), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert not summary["trained_now"] and summary["steps"] == 17


def test_too_few_examples_block_lora_with_a_reason(tmp_path, tiny_model) -> None:
    from tunewise.ladder import plan_run
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(tiny_task(tmp_path, tiny_model, n=80))  # 60 training examples
    plan = plan_run(task, Store(), rungs=["lora", "lora_system_prompt"])
    assert "fine-tuning needs at least 100" in plan.skipped["lora"]
    assert "lora_system_prompt" in plan.skipped
    lowered = load_task(tiny_task(tmp_path, tiny_model, n=80, min_examples=50))
    plan = plan_run(lowered, Store(), rungs=["lora"])
    assert plan.rungs == ["lora"]
    assert any("fragile" in note for note in plan.report.notes)


def test_train_command_refuses_below_the_minimum(tmp_path, tiny_model, runner) -> None:
    path = tiny_task(tmp_path, tiny_model, n=80)
    out = runner.invoke(app, ["train", str(path)])
    assert out.exit_code == 2
    assert "fine-tuning needs at least 100" in out.output


def test_lora_needs_the_local_backend(make_task) -> None:
    from tunewise.ladder import plan_run
    from tunewise.store import Store
    from tunewise.task import load_task

    rows = e2e_rows(200)
    task = load_task(make_task(rows, kind="extraction"))  # dummy backend
    plan = plan_run(task, Store(), rungs=["lora", "lora_system_prompt"])
    assert "local backend" in plan.skipped["lora"]
    assert "local backend" in plan.skipped["lora_system_prompt"]


def test_lora_rag_skips_when_the_retrieval_rung_is_missing(monkeypatch, make_task) -> None:
    from tunewise.ladder import plan_run
    from tunewise.rungs import lora
    from tunewise.rungs.base import RungUnavailable
    from tunewise.store import Store
    from tunewise.task import load_task

    def missing(name: str):
        raise RungUnavailable(f"rung '{name}' is not implemented in this version")

    monkeypatch.setattr(lora, "get_rung", missing)
    task = load_task(make_task(e2e_rows(200), kind="extraction"))
    reason = lora.LoraRag().requires(plan_run(task, Store(), rungs=["zero_shot"]).ctx)
    assert reason and "needs the retrieval rung" in reason


def test_lora_rag_answers_with_the_adapter_through_the_rag_rung(tmp_path,
                                                                tiny_model) -> None:
    """The combination: rag's retrieval and prompts, the lora adapter's model."""
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    questions = [json.loads(x) for x in
                 (DATA / "coqa_questions.jsonl").read_text().split("\n")[:130]]
    wanted = {q["source_id"] for q in questions}
    stories = [s for s in (json.loads(x) for x in
                           (DATA / "coqa_stories.jsonl").read_text().split("\n") if x)
               if s["id"] in wanted]
    write_jsonl(tmp_path / "data.jsonl", questions)
    write_jsonl(tmp_path / "corpus.jsonl", stories)
    task = {"name": "qa-tiny", "kind": "qa", "data": {"path": "data.jsonl"},
            "corpus": {"path": "corpus.jsonl"}, "target": 0.5,
            "split": {"test": 10, "dev": 10, "seed": 0},
            "backend": {"kind": "local", "model": str(tiny_model), "max_new_tokens": 4},
            "lora": {"epochs": 1, "batch_size": 8, "curve": []}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    result = run_ladder(load_task(tmp_path / "task.yaml"), Store(), out_dir=tmp_path / "out",
                        climb_all=True, rungs=["lora_rag"])
    (r,) = result["rungs"]
    assert r["status"] == "done", r.get("reason")
    assert r["info"]["lora"]["train_examples"] == 110
    assert r["upfront_s"] >= r["info"]["lora"]["train_seconds"] > 0
    assert r["tokens"]["prompt_mean"] > 100  # retrieved passages are in the prompt
    assert "tuned" in result["forgetting"]


def test_lora_settings_are_validated_with_the_closest_key(tmp_path) -> None:
    from tunewise.errors import TunewiseError
    from tunewise.task import parse_task

    text = yaml.safe_dump({"name": "t", "kind": "extraction", "data": {"path": "d.jsonl"},
                           "target": 0.5, "lora": {"alpah": 4}})
    with pytest.raises(TunewiseError, match="did you mean 'alpha'"):
        parse_task(text)
    text = yaml.safe_dump({"name": "t", "kind": "extraction", "data": {"path": "d.jsonl"},
                           "target": 0.5, "lora": {"r": 4, "general": "g.jsonl"}})
    spec = parse_task(text)
    assert spec.lora.r == 4 and spec.lora.alpha == 16 and spec.decision.min_examples == 100


# ---- the general set and the checks' arithmetic -----------------------------------------
def test_bundled_general_set_is_varied_and_well_formed() -> None:
    from collections import Counter

    from tunewise.training.forgetting import bundled_path, load_general

    items = load_general()
    assert len(items) == 120
    assert all(it.output in it.choices and len(set(it.choices)) == len(it.choices)
               for it in items)
    rows = [json.loads(x) for x in bundled_path().read_text().split("\n") if x]
    assert len(Counter(r["category"] for r in rows)) == 5
    assert len({it.input for it in items}) == 120


def test_general_set_errors_name_the_line(tmp_path) -> None:
    from tunewise.errors import TunewiseError
    from tunewise.training.forgetting import load_general

    bad = write_jsonl(tmp_path / "g.jsonl", [
        {"input": "2+2?", "output": "4", "choices": ["3", "4"]},
        {"input": "Capital of France?", "output": "Paris", "choices": ["Rome", "Berlin"]},
    ])
    with pytest.raises(TunewiseError) as err:
        load_general(bad)
    assert err.value.line == 2 and "not among the choices" in str(err.value)


def test_curve_helpers() -> None:
    from tunewise.training.curve import curve_sizes, examples_to_target, monotone_within_ci

    assert curve_sizes([400, 50, 100, 200, 100, 0], 300) == [50, 100, 200]
    pts = [{"n": 50, "value": 0.2, "ci_low": 0.1, "ci_high": 0.3},
           {"n": 100, "value": 0.15, "ci_low": 0.05, "ci_high": 0.25},
           {"n": 200, "value": 0.6, "ci_low": 0.5, "ci_high": 0.7}]
    assert monotone_within_ci(pts)  # 0.15 is within the first point's CI
    assert examples_to_target(pts, 0.5) == 200
    assert examples_to_target(pts, 0.9) is None
    pts.append({"n": 400, "value": 0.4, "ci_low": 0.3, "ci_high": 0.5})
    assert not monotone_within_ci(pts)  # 0.4 is below the 200-example CI


def test_verdict_notes_cite_the_numbers() -> None:
    from tunewise.finetune_checks import verdict_notes

    curve = {"points": [{"n": 50, "value": 0.1, "ci_low": 0.0, "ci_high": 0.2},
                        {"n": 300, "value": 0.7, "ci_low": 0.6, "ci_high": 0.8}],
             "examples_to_target": 300}
    result = {"task": {"target": 0.6},
              "rungs": [{"name": "lora", "status": "done", "info": {"learning_curve": curve}}],
              "forgetting": {"base": {"value": 0.6, "ci_low": 0.5, "ci_high": 0.7},
                             "tuned": {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5},
                             "diff": -0.2, "p_value": 0.001, "flagged": True,
                             "threshold": 0.05}}
    notes = verdict_notes(result)
    assert "with 300 training examples" in notes[0] and "50: 0.100" in notes[0]
    assert notes[1].startswith("forgetting flagged") and "-0.200" in notes[1]


# ---- the real model on e2e (acceptance 1-3) ----------------------------------------------
@pytest.mark.integration
def test_e2e_lora_beats_few_shot_on_new_records_and_reports_forgetting(tmp_path) -> None:
    """SmolLM2 tuned on e2e records beats few-shot prompting on exact match (p < 0.05).

    examples/e2e/task.yaml (group split: no test record is also a training record) on a
    260-row slice to bound CI time: about 40 test, 12 dev, 200 train (1 epoch), 4 random
    shots. Measured: 0.244 vs 0.073 exact match (p = 0.015; 2 epochs gave 0.488 in twice
    the training time). With 200 examples the adapter only ties nearest-neighbour shots
    (0.49 vs 0.49 at 2 epochs); the full example (827 training records) beats them 0.807
    vs 0.339, p = 0.0005, as the README records. The learning curve is checked on a tiny
    model above and on the full example; here the real model's forgetting check runs.
    """
    from tunewise.evaluate import compare
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(REPO / "examples" / "e2e" / "task.yaml")
    assert task.split.group_by == "output"
    write_jsonl(tmp_path / "data.jsonl", e2e_rows(260))
    task = task.model_copy(update={
        "split": task.split.model_copy(update={"test": 40, "dev": 12}),
        "lora": task.lora.model_copy(update={"curve": [], "epochs": 1}),
        "few_shot": task.few_shot.model_copy(update={"k": 4}),
        # 2 single-request timings, not 20: at ~2.5 s per generated record they were 90 s
        "decision": task.decision.model_copy(update={"latency_sample": 2}),
    })
    task.data.path = tmp_path / "data.jsonl"
    store = Store()
    result = run_ladder(task, store, out_dir=tmp_path / "out", climb_all=True,
                        rungs=["few_shot_random", "lora"])
    by = {r["name"]: r for r in result["rungs"]}
    lora, shots = by["lora"], by["few_shot_random"]
    assert lora["info"]["train_seconds"] < 15 * 60 and lora["info"]["train_examples"] >= 190
    per = {r["name"]: [row["score"] for row in store.predictions(result["run_id"], r["name"])]
           for r in (lora, shots)}
    test = compare(per["few_shot_random"], per["lora"])
    assert lora["value"] > shots["value"] and test["p_value"] < 0.05, (lora["value"],
                                                                       shots["value"], test)
    for r in (lora, shots):
        assert 0 <= r["secondary"]["field_f1"]["value"] <= 1
    assert lora["secondary"]["field_f1"]["value"] > shots["secondary"]["field_f1"]["value"]
    f = result["forgetting"]
    assert f["base"]["value"] > 0.35  # the base model beats chance (~0.4) on the set
    assert f["base"]["ci_low"] < f["base"]["value"] < f["base"]["ci_high"]
    assert f["tuned"]["ci_low"] <= f["tuned"]["value"] <= f["tuned"]["ci_high"]
