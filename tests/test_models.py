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


def cell_label(c: dict) -> str:
    return f"{c['rung']}@{c['model']}"


def two_models(make_task, large: str = HOSTED, small: str = CHEAP, **fields) -> Path:
    """A task with two dummy models (same seed: same answers) at the given prices."""
    fields.setdefault("decision", {"latency_sample": 0})  # call counts: test items only
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


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
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
                     decision={"latency_sample": 0},
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


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
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


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
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


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
def test_parity_is_a_paired_test_against_the_best_cell_of_the_other_model(make_task) -> None:
    store = Store()
    task = load_task(two_models(make_task, HOSTED, CHEAP, rungs=["zero_shot", "few_shot_knn"]))
    result = run_ladder(task, store, climb_all=True)
    v = result["verdict"]
    a = f"{v['choice']['rung']}@{v['choice']['model']}"
    parity = v["parity"]
    assert parity and all(p["a"] == a for p in parity)
    vs_large = next(p for p in parity if p["b"].endswith("@large"))
    cells = {cell_label(c): c for c in result["cells"]}
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
    assert set(matrix["cells"]) == {cell_label(c) for c in stored["cells"]}
    for c in stored["cells"]:
        new = matrix["cells"][cell_label(c)]
        assert new["per_request_usd"] == pytest.approx(c["cost"]["per_request_usd"])
        assert new["daily_usd"] == pytest.approx(20000 * new["per_request_usd"]
                                                 + new["maintenance_per_day_usd"])
    assert matrix["requests_per_day"] == 20000


# ---- distillation ------------------------------------------------------------------------


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """LoRA training replaced by a recorder: the dummy model 'trains' on whatever it is given
    and answers as another dummy. Records the examples each training call received."""
    from tunewise.rungs import distill, lora
    from tunewise.training.adapters import Adapter

    seen: list[list] = []

    def train(ctx, train, label="lora", on_step=None):
        seen.append(list(train))
        folder = tmp_path / f"adapter{len(seen)}"
        folder.mkdir()
        log = {"n_train": len(train), "train_seconds": 36.0, "train_tokens": 1000}
        return Adapter(folder, f"key{len(seen)}", log, True), 0

    monkeypatch.setattr(lora, "local_backend", lambda ctx: ctx.backend.inner)
    monkeypatch.setattr(distill, "train_adapter", train)
    monkeypatch.setattr(distill, "load_tuned", lambda ctx, adapter: DummyBackend(seed=5))
    return seen


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
def test_distillation_trains_on_the_teachers_labels_not_the_gold_ones(make_task, tmp_path,
                                                                       fake_training) -> None:
    from tunewise.rungs.base import get_rung

    extra = [{"input": "play some jazz by miles davis"}, {"input": "will it snow in oslo"}]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in extra))
    path = make_task(limit=200, backend=None, target=0.99, unlabelled={"path": "more.jsonl"},
                     decision={"latency_sample": 0},
                     distill={"teacher": "large"},
                     models={"large": {"kind": "dummy", "price": HOSTED,
                                       "rungs": ["zero_shot", "few_shot_knn"]},
                             "small": {"kind": "dummy", "price": "local-cpu",
                                       "rungs": ["zero_shot", "distill"]}})
    path.write_text(path.read_text().replace("backend: null\n", ""))
    task = load_task(path)
    store = Store()
    result = run_ladder(task, store, climb_all=True)

    assert len(fake_training) == 1
    trained = fake_training[0]
    plan = plan_run(task, store)
    train = plan.ctx.split.train
    assert [e.input for e in trained] == [e.input for e in train] + [r["input"] for r in extra]
    # what the teacher cell answers for those inputs, asked independently
    cell = next(c for c in result["models"][1]["rungs"] if c["name"] == "distill")
    teacher = cell["info"]["teacher"]
    assert teacher["model"] == "large" and teacher["rung"] in ("zero_shot", "few_shot_knn")
    large = plan.models[0].ctx
    rung = get_rung(teacher["rung"])
    inputs = train + [type(train[0])(f"x{i}", r["input"], "") for i, r in enumerate(extra)]
    expected = [p.text for p in rung.predict(rung.prepare(large), inputs, large)]
    assert [e.output for e in trained] == expected
    gold = [e.output for e in train]
    assert [e.output for e in trained[:len(train)]] != gold  # the teacher errs: not gold
    agree = sum(a == b for a, b in zip(expected, gold, strict=False)) / len(gold)
    assert teacher["agreement_with_gold"] == pytest.approx(agree) and agree < 1

    # scored on the gold test split, priced with the teacher's labelling at its price
    rows = store.predictions(result["run_id"], "distill@small")
    assert [r["gold"] for r in rows] == sorted_gold(plan, rows)
    c = next(c for c in result["cells"] if cell_label(c) == "distill@small")
    assert c["n"] == len(plan.ctx.split.test) and c["family"] == "fine_tuning"
    parts = c["cost"]["upfront_parts"]
    per = teacher["tokens"]
    teacher_usd = teacher["calls"] * (per["prompt_mean"] * 2.5 + per["completion_mean"] * 10) / 1e6
    assert parts["teacher_labels"] == pytest.approx(teacher_usd) and teacher_usd > 0
    assert teacher["calls"] == len(inputs) + len(plan.ctx.split.dev) * 2


def sorted_gold(plan, rows) -> list[str]:
    by_id = {e.id: e.output for e in plan.ctx.split.test}
    return [by_id[r["example_id"]] for r in rows]


def test_distill_needs_a_second_model_and_is_not_a_default_with_one(make_task) -> None:
    from tunewise.ladder import default_rungs

    one = load_task(make_task(limit=200))
    assert "distill" not in default_rungs(one)
    two = load_task(two_models(make_task))
    assert "distill" in default_rungs(two)
    plan = plan_run(load_task(make_task(limit=200, rungs=["zero_shot", "distill"])), Store())
    assert "second model" in plan.skipped["distill"]


@pytest.mark.model  # few_shot_knn embeds with the bundled MiniLM
def test_report_and_web_show_the_matrix_and_chart_every_cell(make_task) -> None:
    from fastapi.testclient import TestClient

    from tunewise.report import build_report
    from tunewise.web.app import create_app

    task = load_task(two_models(make_task, rungs=["zero_shot", "few_shot_knn"]))
    result = run_ladder(task, Store(), climb_all=True)
    data, html = build_report(Store(), result["run_id"])
    assert [m["model"] for m in data["models"]["models"]] == ["large", "small"]
    by = {cell_label(c): c for c in result["cells"]}
    for row in data["models"]["rows"]:
        for model, cell in zip(("large", "small"), row["cells"], strict=True):
            mine = by[f"{row['rung']}@{model}"]
            assert cell["value"] == mine["value"]
            assert cell["per_1k"] == pytest.approx(mine["cost"]["per_request_usd"] * 1000)
    chosen = [c for row in data["models"]["rows"] for c in row["cells"] if c["chosen"]]
    assert len(chosen) == 1
    page = TestClient(create_app()).get(f"/runs/{result['run_id']}").text
    for doc in (html, page):
        table = doc.split('id="models"', 1)[1].split("</table>", 1)[0]
        assert table.count('<tr data-rung="') == 2 and table.count("◆") == 1
        assert "example-hosted-large" in table and "/1k req" in table
        chart = doc.split('data-chart="quality_cost"', 1)[1].split("</figure>", 1)[0]
        for label in by:
            assert label in chart


def test_budget_estimate_prices_each_models_calls_with_its_own_entry(make_task) -> None:
    from tunewise.estimate import estimate_run

    rungs = ["zero_shot", "system_prompt"]
    one = estimate_run(plan_run(load_task(two_models(make_task, HOSTED, HOSTED, rungs=rungs)),
                                Store()))
    mixed = estimate_run(plan_run(load_task(two_models(make_task, HOSTED, CHEAP, rungs=rungs)),
                                  Store()))
    assert one["calls"] == mixed["calls"] == 2 * 2 * 40
    assert set(mixed["rungs"]) == {*rungs, *(f"{r}@small" for r in rungs)}  # as stored
    large = sum(mixed["rungs"][r]["usd"] for r in rungs)
    small = sum(mixed["rungs"][f"{r}@small"]["usd"] for r in rungs)
    assert one["usd"] == pytest.approx(2 * large) and small < large / 10
    assert mixed["usd"] == pytest.approx(large + small)


def test_split_train_caps_the_training_examples_and_keeps_test_and_dev(make_task) -> None:
    from tunewise.dataset import load_examples, make_split

    full = load_task(make_task(limit=200))
    capped = load_task(make_task(limit=200, split={"test": 40, "dev": 20, "seed": 0,
                                                   "train": 30}))
    a, b = make_split(load_examples(full), full), make_split(load_examples(capped), capped)
    assert [e.id for e in b.test] == [e.id for e in a.test]
    assert [e.id for e in b.dev] == [e.id for e in a.dev]
    assert [e.id for e in b.train] == [e.id for e in a.train[:30]] and len(a.train) == 140


def test_self_hosted_cells_are_priced_by_measured_throughput() -> None:
    from tunewise.cost import Price, PriceEntry, rung_cost

    task = parse_task(BASE + "backend: {kind: dummy}\n")
    machine = Price("box", "2026", PriceEntry(kind="self_hosted", compute_per_hour=3.6,
                                              input_per_1m=1.0, output_per_1m=1.0))
    rung = {"name": "zero_shot", "family": "prompting", "value": 0.5, "n": 10,
            "tokens": {"prompt_mean": 100, "completion_mean": 1, "shared_prefix": 0},
            "latency_ms": {"mean": 500.0, "p50": 400.0, "p95": 900.0}}
    c = rung_cost(rung, task, machine, 1000, 0, 0)
    assert c["per_request"] == pytest.approx(0.5 * 3.6 / 3600)  # 0.5 s of a $3.60/h machine
    assert c["daily"] == pytest.approx(1000 * 0.5 * 3.6 / 3600)
    assert "serving: 500 ms/request measured" in c["basis"][0]
    hosted = Price("api", "2026", PriceEntry(kind="hosted", input_per_1m=1.0,
                                             output_per_1m=1.0))
    assert rung_cost(rung, task, hosted, 1000, 0, 0)["per_request"] == pytest.approx(101 / 1e6)
