"""The HTML report and its JSON view: content, escaping, offline, optional sections."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from markupsafe import escape
from report_helpers import SCRIPT_INPUT, demo_like_run

from tunewise.cli import app
from tunewise.evaluate import reliability
from tunewise.report import build_report, render_html, report_data
from tunewise.report.svg import Axis, RefLine, Series, chart, log_ticks, nice_ticks
from tunewise.store import Store

CHARTS = ("quality_cost", "learning_curve", "break_even", "calibration")


@pytest.fixture
def demo(tmp_path: Path) -> tuple[str, dict, Path]:
    return demo_like_run(tmp_path, Path(os.environ["TUNEWISE_DB"]))


def test_report_cli_writes_one_offline_file_with_every_section(demo, runner, tmp_path):
    run_id, result, _ = demo
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", run_id, "-o", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    # Offline: nothing is fetched (no external script, stylesheet, image or font).
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    # The verdict comes before the table and the charts.
    summary = str(escape(result["verdict"]["summary"]))
    assert html.index(summary) < html.index('id="rungs"') < html.index('data-chart=')
    for name in CHARTS:
        figure = html.split(f'data-chart="{name}"', 1)[1].split("</figure>", 1)[0]
        assert figure.count("<circle") + figure.count("<polyline") >= 1, name
    assert 'id="break-even"' in html
    assert "forgetting" in html and "Freshness" in html
    assert 'id="errors"' in html and 'id="data-checks"' in html


def test_script_in_an_example_is_shown_as_text(demo):
    run_id, _, _ = demo
    _, html = build_report(Store(os.environ["TUNEWISE_DB"]), run_id)
    assert SCRIPT_INPUT not in html
    escaped = "Play &lt;script&gt;window.__pwned = 1; alert(&#34;x&#34;)&lt;/script&gt; by Queen"
    assert f'<td class="input"><div class="clip">{escaped}</div></td>' in html
    # The page's only script element is its own filter code.
    assert html.count("<script") == 1


def test_report_json_carries_the_result_numbers(demo, runner):
    run_id, result, _ = demo
    res = runner.invoke(app, ["report", run_id, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["run_id"] == run_id
    assert data["verdict"]["summary"] == result["verdict"]["summary"]
    by_name = {r["name"]: r for r in data["rungs"]}
    for rung in result["rungs"]:
        assert by_name[rung["name"]]["status"] == rung["status"]
        if rung["status"] == "done":
            assert by_name[rung["name"]]["value"] == rung["value"]
            assert by_name[rung["name"]]["ci_low"] == rung["ci_low"]
            per = result["cost"]["rungs"][rung["name"]]["per_request"]
            assert by_name[rung["name"]]["cost_per_request"] == per
    # JSON keeps the raw text; escaping is the HTML's job.
    inputs = [row["input"] for row in data["errors"]["rows"]]
    assert SCRIPT_INPUT in inputs
    assert data["learning_curves"]["lora"][-1]["value"] == 0.875


def test_unknown_run_is_one_line_exit_2(runner, tmp_path):
    res = runner.invoke(app, ["report", "no-such-run", "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    assert "no run 'no-such-run'" in res.output
    assert "Traceback" not in res.output


def test_calibration_bins_come_from_evaluate_reliability(demo):
    run_id, _, _ = demo
    store = Store(os.environ["TUNEWISE_DB"])
    rows = store.predictions(run_id)
    data = report_data(json.loads(store.run(run_id)["result_json"]), rows)
    zero = [r for r in rows if r["rung"] == "zero_shot"]
    conf = [max(json.loads(r["details_json"])["probs"].values()) for r in zero]
    assert data["calibration"]["zero_shot"]["bins"] == reliability(conf, [r["score"]
                                                                         for r in zero])
    assert data["calibration"]["zero_shot"]["n"] == 40


def test_optional_sections_are_left_out_when_absent(demo):
    _, result, _ = demo
    bare = {k: v for k, v in result.items() if k not in ("cost", "forgetting", "freshness")}
    bare["rungs"] = [r for r in result["rungs"] if r["name"] != "lora"]
    del bare["verdict"]
    html = render_html(report_data(bare, []))
    assert 'data-chart="quality_cost"' in html  # falls back to tokens per request
    assert "tokens per request" in html
    for absent in ("learning_curve", "break_even", "calibration"):
        assert f'data-chart="{absent}"' not in html
    assert "Forgetting" not in html and "Freshness" not in html
    assert "This run has no verdict." in html
    assert "No errors to show" in html


def test_svg_chart_escapes_labels_and_draws_target():
    svg = chart([Series("<b>x</b>", [(1, 0.5), (2, 0.7)], err=[(0.4, 0.6), (0.6, 0.8)],
                        point_labels=["<i>a</i>", "b"])],
                Axis("cost (USD)"), Axis("score", lo=0, hi=1),
                title="t<script>", refs=[RefLine(0.8, "target 0.8")])
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "&lt;script&gt;" in svg
    assert 'class="refline"' in svg and "target 0.8" in svg
    assert svg.count("<circle") == 2


def test_ticks_are_round_numbers():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 33, 6) == [0, 10, 20, 30]
    assert nice_ticks(0.5, 0.9) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert log_ticks(0.001, 0.1) == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
