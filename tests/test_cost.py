"""Cost arithmetic pinned on hand-computed cases, break-even, the budget stop, `tunewise cost`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from cli_helpers import tunewise
from cost_helpers import rung, spec

from tunewise.cli import app
from tunewise.cost import (
    Price,
    PriceEntry,
    break_even,
    format_days,
    format_usd,
    per_million_from_throughput,
    request_cost,
    resolve_price,
    rung_cost,
    summarize,
)
from tunewise.errors import TunewiseError
from tunewise.task import load_task


def price(**fields) -> Price:
    return Price("test", "2026-01-01", PriceEntry(**fields))


TOKENS = {"prompt_mean": 1000, "completion_mean": 100, "shared_prefix": 600}


def test_request_cost_applies_the_cached_prefix_discount():
    p = price(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5)
    got = request_cost(TOKENS, p)
    # 400 uncached x $2 + 600 cached x $0.50 + 100 out x $8, per 1M tokens
    assert got["usd"] == pytest.approx((800 + 300 + 800) / 1e6)
    assert got["cached_input_usd"] == pytest.approx(300 / 1e6)
    assert got["cached_tokens"] == 600 and got["uncached_tokens"] == 400


def test_request_cost_without_a_prefix_cache_charges_full_input():
    p = price(input_per_1m=2.0, output_per_1m=8.0)
    assert request_cost(TOKENS, p)["usd"] == pytest.approx((2000 + 800) / 1e6)


def test_tuned_model_prices_keep_the_cache_ratio():
    p = price(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5,
              tuned_input_per_1m=4.0, tuned_output_per_1m=16.0)
    # cached is a quarter of input, so a tuned cached token costs 4 / 4 = $1 per 1M
    assert request_cost(TOKENS, p, tuned=True)["usd"] == pytest.approx(
        (400 * 4 + 600 * 1 + 100 * 16) / 1e6)


def test_shared_prefix_is_capped_at_the_prompt():
    p = price(input_per_1m=1.0, output_per_1m=1.0, cached_input_per_1m=0.0)
    got = request_cost({"prompt_mean": 10, "completion_mean": 0, "shared_prefix": 50}, p)
    assert got["usd"] == 0.0 and got["cached_tokens"] == 10


def test_local_cpu_prices_derive_from_throughput():
    p = resolve_price(spec())
    assert p.name == "local-cpu" and not p.entry.example
    assert p.input == pytest.approx(0.10 / (700 * 3600) * 1e6)  # ~$0.0397 per 1M
    assert p.output == pytest.approx(0.10 / (30 * 3600) * 1e6)  # ~$0.926 per 1M
    assert per_million_from_throughput(3.6, 1000) == pytest.approx(1.0)


def test_task_overrides_and_unknown_entries():
    p = resolve_price(spec(price="example-hosted-small", override={"input_per_1m": 1.0}))
    assert p.input == 1.0 and p.output == 0.60 and p.entry.example
    with pytest.raises(TunewiseError, match="did you mean 'local-cpu'"):
        resolve_price(spec(price="local-cpux"))


def test_user_price_file_adds_entries(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"input": "a", "output": "x"}\n')
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(
        {"as_of": "2030-01-01", "entries": {"mine": {"input_per_1m": 3, "output_per_1m": 4}}}))
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "t", "kind": "classification", "data": {"path": "d.jsonl"}, "target": 0.5,
        "cost": {"price": "mine", "prices_file": "my.yaml"}}))
    p = resolve_price(load_task(tmp_path / "task.yaml"))
    assert (p.name, p.as_of, p.input, p.output) == ("mine", "2030-01-01", 3.0, 4.0)


def test_rung_cost_self_hosted_training_data_prep_and_retraining():
    task = spec(data_prep_hours=10, hourly_rate=40, retrain_every_days=30)
    p = price(input_per_1m=1.0, output_per_1m=2.0, compute_per_hour=2.0)
    c = rung_cost(rung("lora", "fine_tuning", 0.9, upfront_s=1800), task, p, 1000, 500, 100)
    per_request = (100 * 1.0 + 10 * 2.0) / 1e6
    assert c["per_request"] == pytest.approx(per_request)
    assert c["upfront_parts"] == pytest.approx({
        "compute": 0.0, "training": 1.0, "data_prep": 400.0, "evaluation": 100 * per_request})
    assert c["maintenance_per_day"] == pytest.approx(1.0 / 30)
    assert c["daily"] == pytest.approx(1000 * per_request + 1.0 / 30)


def test_rung_cost_hosted_training_bills_tokens():
    task = spec(count_eval_calls=False, retrain_every_days=None)
    p = price(input_per_1m=1.0, output_per_1m=2.0, training_per_1m=10.0, compute_per_hour=5.0)
    r = rung("lora", "fine_tuning", 0.9, upfront_s=3600, info={"train_tokens": 2_000_000})
    c = rung_cost(r, task, p, 0, 500, 100)
    assert c["upfront"] == pytest.approx(20.0)  # 2M tokens x $10/1M, time not billed
    assert c["maintenance_per_day"] == 0.0
    # without a measured count: examples x epochs x tokens per example
    r2 = rung("lora", "fine_tuning", 0.9, info={"epochs": 2})
    assert rung_cost(r2, task, p, 0, 500, 0)["upfront"] == pytest.approx(500 * 2 * 110 * 10 / 1e6)


def test_retrieval_upkeep_is_reindexing():
    task = spec(reindex_every_days=7, count_eval_calls=False)
    p = price(input_per_1m=1.0, output_per_1m=1.0, compute_per_hour=3.6)
    c = rung_cost(rung("rag", "retrieval", 0.9, upfront_s=700), task, p, 0, 10, 0)
    assert c["upfront"] == pytest.approx(0.7)  # 700 s at $3.60/h
    assert c["maintenance_per_day"] == pytest.approx(0.1)


def test_break_even_hand_computed():
    cheap_upfront = {"name": "few_shot", "upfront": 0.0, "daily": 100.0}
    tuned = {"name": "lora", "upfront": 500.0, "daily": 50.0}
    got = break_even(tuned, cheap_upfront)
    assert (got["a"], got["b"], got["days"]) == ("few_shot", "lora", pytest.approx(10.0))
    assert "pays back after 10.0 days" in got["text"]
    dominated = break_even(cheap_upfront, {"name": "x", "upfront": 5.0, "daily": 100.0})
    assert dominated["days"] is None and "never pays back" in dominated["text"]


def test_summarize_pairs_only_rungs_meeting_the_target_and_charts_them():
    task = spec(count_eval_calls=False, retrain_every_days=None)
    result = {"split": {"train": 300}, "rungs": [
        rung("zero_shot", "prompting", 0.5, prompt=50),
        rung("few_shot_best", "prompting", 0.85, prompt=2000),
        rung("lora", "fine_tuning", 0.86, prompt=50, upfront_s=3600),
        {"name": "rag", "family": "retrieval", "status": "skipped", "reason": "no corpus"},
    ]}
    cost = summarize(result, task, volume=10_000)
    assert cost["met_target"] == ["few_shot_best", "lora"]
    assert cost["break_even"]["candidates"] == ["few_shot_best", "lora"]
    (pair,) = cost["break_even"]["pairs"]
    fs, lo = cost["rungs"]["few_shot_best"], cost["rungs"]["lora"]
    assert pair["days"] == pytest.approx((lo["upfront"] - fs["upfront"])
                                         / (fs["daily"] - lo["daily"]))
    series = cost["chart"]["series"]
    assert series["lora"][0] == pytest.approx(lo["upfront"])
    # the cumulative lines cross where the table says they do
    days = cost["chart"]["days"]
    assert days[-1] >= pair["days"]
    assert series["lora"][-1] < series["few_shot_best"][-1]


def test_cost_shape_agrees_with_the_lesson_table_at_10k_per_day():
    """Prompting: ~no upfront, dearest per request; RAG: index upfront, most upkeep;
    fine-tuned: most upfront, cheapest per request, retraining upkeep in between."""
    task = spec(data_prep_hours=4, retrain_every_days=30, reindex_every_days=7)
    result = {"split": {"train": 500}, "rungs": [
        rung("few_shot_best", "prompting", 0.9, prompt=2000),
        rung("rag", "retrieval", 0.9, prompt=1200, upfront_s=600),
        rung("lora", "fine_tuning", 0.9, prompt=60, upfront_s=1800),
    ]}
    c = summarize(result, task, volume=10_000, price_name="example-gpu-24gb")["rungs"]
    fs, rag, lora = c["few_shot_best"], c["rag"], c["lora"]
    assert fs["upfront"] < rag["upfront"] < lora["upfront"]
    assert fs["per_request"] > rag["per_request"] > lora["per_request"]
    assert fs["maintenance_per_day"] == 0 < lora["maintenance_per_day"] \
        < rag["maintenance_per_day"]


def test_summarize_without_any_rung_meeting_compares_nothing_and_names_the_closest():
    result = {"split": {"train": 50}, "rungs": [
        rung("zero_shot", "prompting", 0.2), rung("system_prompt", "prompting", 0.3),
        rung("few_shot_random", "prompting", 0.4), rung("few_shot_knn", "prompting", 0.5)]}
    cost = summarize(result, spec(), volume=10_000)
    be = cost["break_even"]
    assert cost["met_target"] == [] and be["candidates"] == [] and be["pairs"] == []
    assert "no break-even comparison is meaningful" in be["basis"]
    knn = cost["rungs"]["few_shot_knn"]
    assert be["closest"] == {"name": "few_shot_knn", "value": 0.5, "per_1k": knn["per_1k"],
                             "daily": knn["daily"], "upfront": knn["upfront"]}
    assert "the closest, few_shot_knn (0.500)" in be["basis"]
    assert cost["chart"]["series"] == {}


def test_formatting():
    assert format_usd(0) == "$0"
    assert format_usd(1234.5) == "$1,234"
    assert format_usd(12.345) == "$12.35"
    assert format_usd(0.0000123) == "$0.0000123"
    assert format_days(None) == "never"
    assert format_days(0.5) == "12.0 hours"
    assert format_days(180) == "5.9 months"


# ---- budget and the `tunewise cost` command on the dummy backend ------------------------


def _calls(tmp_path: Path) -> int:
    db = tmp_path / "store.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


@pytest.mark.parametrize("budget, field", [({"max_usd": 0.000001}, "budget.max_usd"),
                                           ({"max_calls": 5}, "budget.max_calls")])
def test_budget_below_the_estimate_stops_before_any_call(make_task, tmp_path, budget, field):
    task = make_task(limit=200, budget=budget, rungs=["zero_shot", "system_prompt"])
    out = tunewise("run", str(task))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and field in line
    if field == "budget.max_usd":
        assert "estimated at $" in line and "nothing was run" in line
        text = " ".join(out.stderr.split())  # the estimate is shown first
        # 2 rungs x (40 test items + 20 single requests timed for latency + 1 warm-up)
        assert -1 < text.find("estimate: up to 122 model calls, about $") < text.find("error:")
    else:
        assert "needs up to 122 model calls but the budget allows 5" in line
    assert _calls(tmp_path) == 0
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_budget_above_the_estimate_runs_and_shows_it(make_task, runner, tmp_path):
    task = make_task(limit=200, budget={"max_usd": 5.0}, rungs=["zero_shot"])
    out = runner.invoke(app, ["run", str(task)])
    assert out.exit_code == 0, out.output
    assert "estimate: up to 61 model calls" in out.output  # 40 items + 21 timed for latency
    assert _calls(tmp_path) == 61


def test_cost_command_recomputes_without_model_calls(make_task, runner, tmp_path):
    task = make_task(limit=200, rungs=["zero_shot", "system_prompt"])
    assert runner.invoke(app, ["run", str(task), "--all"]).exit_code == 0
    before = _calls(tmp_path)
    out = runner.invoke(app, ["cost", str(task), "--volume", "20000", "--json"])
    assert out.exit_code == 0, out.output
    cost = json.loads(out.output)
    assert _calls(tmp_path) == before
    stored = json.loads((tmp_path / "runs").glob("*/result.json").__next__().read_text())
    for name, c in cost["rungs"].items():
        old = stored["cost"]["rungs"][name]
        assert c["per_request"] == pytest.approx(old["per_request"])
        assert c["daily"] == pytest.approx(20000 * c["per_request"] + c["maintenance_per_day"])
        assert c["daily"] == pytest.approx(2 * old["daily"] - old["maintenance_per_day"])
    table = runner.invoke(app, ["cost", str(task), "--price", "example-hosted-small"])
    assert table.exit_code == 0
    assert "Cost at 10,000 requests/day" in table.output  # neither rung meets the target:
    assert "no break-even comparison is meaningful" in " ".join(table.output.split())
    assert "example-hosted-small" in table.output


def test_cost_command_without_a_run_says_so(make_task):
    out = tunewise("cost", str(make_task(limit=200)))
    assert out.returncode == 2 and "no finished run" in out.stderr
