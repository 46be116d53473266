"""Several models in one task: cells (rung, model), per-model prices, verdict across models,
distillation, and the bad-input errors of ``models:`` (all on the dummy backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunewise.backends.dummy import DummyBackend
from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.ladder import plan_run, run_ladder
from tunewise.store import Store
from tunewise.task import load_task, parse_task

BASE = "name: t\nkind: classification\ndata: {path: data.jsonl}\ntarget: 0.5\n"
HOSTED = "example-hosted-large"
CHEAP = "example-hosted-small"


def two_models(make_task, large: str = HOSTED, small: str = CHEAP, **fields) -> Path:
    """A task with two dummy models (same seed: same answers) at the given prices."""
    path = make_task(limit=200, backend=None, **fields,
                     models={"large": {"kind": "dummy", "price": large},
                             "small": {"kind": "dummy", "price": small}})
    path.write_text(path.read_text().replace("backend: null\n", ""))
    return path


# ---- the task file ---------------------------------------------------------------------------


def test_models_mapping_names_models_with_their_backend_and_price() -> None:
    task = parse_task(BASE + "models:\n"
                      "  large: {kind: openai, model: big, base_url: 'http://x', price: p1}\n"
                      "  small: {kind: local, price: local-cpu, rungs: [zero_shot, lora]}\n")
    models = task.model_entries()
    assert list(models) == ["large", "small"]
    assert models["large"].kind == "openai" and models["large"].price == "p1"
    assert models["small"].rungs == ["zero_shot", "lora"]
    assert task.backend.kind == "openai" and task.backend.model == "big"  # the first leads


def test_one_backend_is_one_model_named_by_its_model_id() -> None:
    task = parse_task(BASE + "backend: {kind: dummy, seed: 3}\n")
    models = task.model_entries()
    assert list(models) == ["dummy:smollm2-135m"] and models["dummy:smollm2-135m"].seed == 3
    legacy = parse_task(BASE + "backends: [{kind: dummy}, {kind: dummy, seed: 1}]\n")
    assert list(legacy.model_entries()) == ["dummy:smollm2-135m#1", "dummy:smollm2-135m#2"]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("models:\n  large: {kind: openai, base_url: 'http://x', rungs: [zero_shot, lora]}\n", 6,
     "lora needs the model's weights"),
    ("models:\n  a: {kind: dummy}\ndistill: {teacher: larg}\n", 7,
     "model 'larg' is not defined"),
    ("backend: {kind: dummy}\nmodels:\n  a: {kind: dummy}\n", 1, "either backend or models"),
])
def test_bad_models_are_one_line_errors_naming_the_line(text, line, message) -> None:
    with pytest.raises(TunewiseError) as err:
        parse_task(BASE + text, "task.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert err.value.line == line


def test_unknown_price_entry_lists_valid_names_and_the_line(tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text('{"input": "a", "output": "b"}\n')
    path = tmp_path / "task.yaml"
    path.write_text(BASE + "models:\n  a: {kind: dummy, price: local-cpu}\n"
                    "  b: {kind: dummy, price: example-hosted-larg}\n")
    with pytest.raises(TunewiseError) as err:
        load_task(path)
    text = str(err.value)
    assert err.value.line == 7 and "did you mean 'example-hosted-large'" in text
    assert "valid names: example-gpu-24gb, example-hosted-large" in text


def test_unlabelled_file_with_outputs_is_a_warning_naming_the_task_line(make_task, tmp_path
                                                                       ) -> None:
    rows = [{"input": "play a song", "output": "PlayMusic"}, {"input": "rain tomorrow?"}]
    (tmp_path / "extra.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = two_models(make_task, unlabelled={"path": "extra.jsonl"})
    task = load_task(path)
    plan = plan_run(task, Store())
    warning = next(n for n in plan.report.notes if "unlabelled" in n)
    line = task.line_of("unlabelled")
    assert f"task.yaml:{line}: unlabelled: 1 rows of extra.jsonl have an 'output'" in warning


# ---- cells -----------------------------------------------------------------------------------


def test_every_cell_has_its_own_score_and_its_own_models_price(make_task) -> None:
    task = load_task(two_models(make_task, rungs=["zero_shot", "few_shot_knn"]))
    result = run_ladder(task, Store(), climb_all=True)
    cells = {(c["rung"], c["model"]): c for c in result["cells"]}
    assert set(cells) == {(r, m) for r in ("zero_shot", "few_shot_knn")
                          for m in ("large", "small")}
    for rung in ("zero_shot", "few_shot_knn"):
        large, small = cells[(rung, "large")], cells[(rung, "small")]
        assert large["value"] == small["value"]  # same answers ...
        assert large["cost"]["price"] == HOSTED and small["cost"]["price"] == CHEAP
        # ... priced with each model's entry: input $2.50 vs $0.15 per 1M tokens
        tokens = large["tokens"]
        cached = tokens["shared_prefix"]
        expect = ((tokens["prompt_mean"] - cached) * 2.5 + cached * 1.25
                  + tokens["completion_mean"] * 10.0) / 1e6
        assert large["cost"]["per_request_usd"] == pytest.approx(expect)
        assert large["cost"]["daily_usd"] == pytest.approx(10_000 * expect)
        assert small["cost"]["per_request_usd"] < large["cost"]["per_request_usd"] / 10
        for c in (large, small):
            assert {"ci_low", "ci_high", "n"} <= set(c) and c["n"] == 40
            assert set(c["cost"]) >= {"per_request_usd", "daily_usd", "upfront_usd"}
    assert [m["model"] for m in result["models"]] == ["large", "small"]
    assert [r["name"] for r in result["rungs"]] == ["zero_shot", "few_shot_knn"]


def test_one_model_still_lists_every_rung_as_a_cell(make_task) -> None:
    task = load_task(make_task(limit=200, rungs=["zero_shot", "system_prompt"]))
    result = run_ladder(task, Store(), climb_all=True)
    assert [(c["rung"], c["model"]) for c in result["cells"]] == [
        ("zero_shot", "dummy:smollm2-135m"), ("system_prompt", "dummy:smollm2-135m")]
    assert "models" not in result  # the existing one-model shape is unchanged
    choice = result["verdict"]["choice"]
    assert choice == {"rung": result["verdict"]["rung"], "model": "dummy:smollm2-135m"}


def test_adding_a_model_to_a_finished_task_makes_no_calls_for_cells_that_ran(make_task
                                                                             ) -> None:
    path = make_task(limit=200, backend=None, rungs=["zero_shot", "few_shot_random"],
                     models={"large": {"kind": "dummy", "price": HOSTED}})
    path.write_text(path.read_text().replace("backend: null\n", ""))
    store = Store()
    first = DummyBackend()
    run_ladder(load_task(path), store, backends={"large": first}, climb_all=True)
    assert first.calls == 2 * 40
    spec = yaml.safe_load(path.read_text())
    spec["models"]["small"] = {"kind": "dummy", "seed": 7, "price": CHEAP}
    path.write_text(yaml.safe_dump(spec))
    again, new = DummyBackend(), DummyBackend(seed=7)
    result = run_ladder(load_task(path), store, backends={"large": again, "small": new},
                        climb_all=True)
    assert again.calls == 0  # every call of the finished cells came from the store
    assert new.calls == 2 * 40
    assert {(c["rung"], c["model"]) for c in result["cells"]} == {
        (r, m) for r in ("zero_shot", "few_shot_random") for m in ("large", "small")}


# ---- verdict across models ---------------------------------------------------------------


def test_verdict_picks_the_cheaper_cell_meeting_the_target_and_switches_with_prices(
        make_task) -> None:
    rungs = ["zero_shot", "few_shot_knn"]
    store = Store()
    one = run_ladder(load_task(two_models(make_task, HOSTED, CHEAP, rungs=rungs, target=0.3)),
                     store, climb_all=True)
    meeting = [c for c in one["cells"] if c["meets_target"]]
    assert {c["model"] for c in meeting} == {"large", "small"}  # both models qualify
    v = one["verdict"]
    assert v["choice"]["model"] == "small" and v["model"] == "small"
    chosen = next(c for c in one["cells"] if (c["rung"], c["model"]) ==
                  (v["choice"]["rung"], "small"))
    assert chosen["cost"]["total_usd"] == min(c["cost"]["total_usd"] for c in meeting)
    assert v["summary"].startswith(f"Use {chosen['rung']} on small")
    swapped = run_ladder(load_task(two_models(make_task, CHEAP, HOSTED, rungs=rungs,
                                              target=0.3)), store, climb_all=True)
    assert swapped["verdict"]["choice"] == {"rung": chosen["rung"], "model": "large"}


def test_verdict_prefers_a_cell_that_meets_the_target_over_a_cheaper_one_that_does_not(
        make_task) -> None:
    # The dearer model's kNN shots meet the target; the cheap one's zero-shot does not.
    store = Store()
    task = load_task(two_models(make_task, HOSTED, CHEAP, rungs=["zero_shot", "few_shot_knn"]))
    result = run_ladder(task, store, climb_all=True)
    by = {(c["rung"], c["model"]): c for c in result["cells"]}
    target = task.target
    zs, knn = by[("zero_shot", "small")], by[("few_shot_knn", "large")]
    assert zs["value"] < target <= knn["value"]
    assert zs["cost"]["total_usd"] < knn["cost"]["total_usd"]
    choice = result["verdict"]["choice"]
    assert choice["rung"] == "few_shot_knn"
    assert by[(choice["rung"], choice["model"])]["meets_target"]


def test_parity_is_a_paired_test_against_the_best_cell_of_the_other_model(make_task) -> None:
    store = Store()
    task = load_task(two_models(make_task, HOSTED, CHEAP, rungs=["zero_shot", "few_shot_knn"]))
    result = run_ladder(task, store, climb_all=True)
    v = result["verdict"]
    a = f"{v['choice']['rung']}@{v['choice']['model']}"
    parity = v["parity"]
    assert parity and all(p["a"] == a for p in parity)
    vs_large = next(p for p in parity if p["b"].endswith("@large"))
    cells = {c["label"]: c for c in result["cells"]}
    assert vs_large["diff"] == pytest.approx(cells[a]["value"] - cells[vs_large["b"]]["value"])
    assert vs_large["ci_low"] <= vs_large["diff"] <= vs_large["ci_high"]
    assert 0 < vs_large["p"] <= 1
    assert "on small reaches" in vs_large["text"] and "of the cost per request" in \
        vs_large["text"]
    assert any(vs_large["text"] in r for r in v["reasons"])


def test_cost_command_reprices_the_matrix_without_model_calls(make_task, runner) -> None:
    path = two_models(make_task, rungs=["zero_shot", "system_prompt"])
    res = runner.invoke(app, ["run", str(path), "--all"])
    assert res.exit_code == 0, res.output
    assert "Cells (rung x model)" in res.output
    store = Store()
    calls = store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
    out = runner.invoke(app, ["cost", str(path), "--volume", "20000", "--json"])
    assert out.exit_code == 0, out.output
    assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == calls
    stored = json.loads(next(Path("runs").glob("*/result.json")).read_text())
    matrix = json.loads(out.output)["matrix"]
    assert set(matrix["cells"]) == {c["label"] for c in stored["cells"]}
    for c in stored["cells"]:
        new = matrix["cells"][c["label"]]
        assert new["per_request_usd"] == pytest.approx(c["cost"]["per_request_usd"])
        assert new["daily_usd"] == pytest.approx(20000 * new["per_request_usd"]
                                                 + new["maintenance_per_day_usd"])
    assert matrix["requests_per_day"] == 20000
