"""The report and the web UI in a real headless Chromium (Debian's, driven by Playwright).

Screenshots go to ``artifacts/`` at the repository root (gitignored; CI keeps them), or to
``$TUNEWISE_ARTIFACTS``. ``playwright install`` is never needed: the system Chromium that
``scripts/install.sh dev`` installs is launched through ``executable_path``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from browser_helpers import ARTIFACTS, CHARTS, CHROMIUM, shot
from report_helpers import SCRIPT_INPUT, demo_like_run, write_task

from tunewise.advisor import Answers, advise
from tunewise.report import build_report
from tunewise.store import Store

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="/usr/bin/chromium is absent (bash scripts/install.sh dev)"),
]


@pytest.fixture
def demo(tmp_path: Path) -> tuple[str, dict, Path]:
    return demo_like_run(tmp_path, Path(os.environ["TUNEWISE_DB"]))


def table_values(pg) -> dict[str, tuple[str, str, str, float]]:
    """Rung -> (value, ci_low, ci_high as shown, full-precision data-value) of the table."""
    out = {}
    for row in pg.locator("#rungs tbody tr").all():
        name = row.locator("td").first.inner_text().strip()
        cell = row.locator("td.score")
        if cell.count():
            m = re.search(r"([0-9.]+)\s*\(([0-9.]+)–([0-9.]+)\)", cell.inner_text())
            out[name] = (*m.groups(), float(cell.get_attribute("data-value")))
    return out


def assert_table_matches(pg, result: dict) -> None:
    """Every done rung's score and CI on the page are result.json's, as formatted."""
    shown = table_values(pg)
    done = [r for r in result["rungs"] if r["status"] == "done"]
    assert set(shown) == {r["name"] for r in done}
    for r in done:
        assert shown[r["name"]] == (f"{r['value']:.3f}", f"{r['ci_low']:.2f}",
                                    f"{r['ci_high']:.2f}", r["value"]), r["name"]


def assert_charts_drawn(pg) -> None:
    for name in CHARTS:
        svg = pg.locator(f'figure[data-chart="{name}"] svg')
        assert svg.count() == 1, name
        box = svg.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 200, name
        marks = svg.locator("circle, polyline, path").count()
        assert marks >= 2, f"{name} has no data drawn"
        assert svg.locator(".axis-title").count() == 2, f"{name} lacks axis titles"
    target = pg.locator('figure[data-chart="quality_cost"] .refline')
    assert target.is_visible() and "target 0.8" in target.text_content()


def test_report_in_chromium(demo, page, tmp_path):
    run_id, result, _ = demo
    out = tmp_path / "report.html"
    build_report(Store(os.environ["TUNEWISE_DB"]), run_id, out)
    page.goto(out.as_uri())
    verdict = page.locator("#verdict .summary")
    assert verdict.inner_text() == result["verdict"]["summary"]
    # Verdict first: it starts above the rung table and the charts.
    assert verdict.bounding_box()["y"] < page.locator("#rungs").bounding_box()["y"]
    assert_charts_drawn(page)
    assert_table_matches(page, result)
    # The <script> in an input is text on the page and never ran.
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#errors td.input", has_text="<script>").first.inner_text() \
        == SCRIPT_INPUT
    page.fill("#error-filter", "pwned")
    assert page.locator("#error-count").inner_text() == "1"
    page.fill("#error-filter", "")
    assert page.js_errors == []
    shot(page, "report.png", full_page=True)
    page.locator(".grid").screenshot(path=str(ARTIFACTS / "report-charts.png"))


def test_serve_in_chromium(demo, page, server, tmp_path):
    run_id, result, _ = demo
    # 1. The advisor wizard, by clicking.
    page.goto(server + "/")
    page.click("text=Start the advisor")
    plan = {"tried_prompting": "Yes", "problem": "behaviour", "strict_format": "Yes",
            "examples": "300", "volume": "20000", "latency_ms": None, "budget_usd": None}
    for _ in range(len(plan) + 1):
        page.wait_for_selector("#wizard, #advice")
        wizard = page.locator("#wizard")
        if not wizard.count():
            break
        key = wizard.get_attribute("data-key")
        answer = plan[key]
        if key == "examples":
            shot(page, "serve-wizard.png")
        if page.locator("#answer").count():
            if answer is None:
                page.click("#skip")
            else:
                page.fill("#answer", answer)
                page.click("#next")
        else:
            page.click(f'#wizard button:text-is("{answer}")')
        page.wait_for_load_state()
    expected = advise(Answers(tried_prompting=True, problem="behaviour", strict_format=True,
                              examples=300, volume=20000))
    assert page.locator("#recommendation").inner_text() == expected.headline
    shot(page, "serve-advice.png", full_page=True)

    # 2. The demo-like run from the list; its table matches result.json.
    page.click("nav >> text=Runs")
    page.click(f'#run-list a:text-is("{run_id}")')
    page.wait_for_selector("#verdict")
    stored = json.loads((tmp_path / "run" / "result.json").read_text())
    assert page.locator("#verdict .summary").inner_text() == stored["verdict"]["summary"]
    assert_table_matches(page, stored)
    assert_charts_drawn(page)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("td.input", has_text="<script>").first.inner_text() == SCRIPT_INPUT
    shot(page, "serve-run.png", full_page=True)

    # 3. Start a run of a task file and watch it finish live.
    folder = tmp_path / "live"
    folder.mkdir()
    task = write_task(folder, rungs=["zero_shot", "system_prompt"])
    page.click("nav >> text=Start a run")
    page.fill("#task_path", str(task))
    page.click("#start")
    page.wait_for_selector("#report-link", state="visible", timeout=90_000)
    assert page.locator("#status").inner_text() == "done"
    assert page.locator("#finished tbody tr").count() == 2
    shot(page, "serve-job.png", full_page=True)
    page.click("#report-link")
    page.wait_for_selector("#verdict")
    new_run = page.url.rsplit("/", 1)[1]
    assert new_run != run_id

    # 4. The two runs side by side.
    page.click("nav >> text=Compare")
    page.select_option("#run-a", run_id)
    page.select_option("#run-b", new_run)
    page.click("#compare")
    page.wait_for_selector("#compare-table")
    assert page.locator("#compare-table tbody tr").count() == len(result["rungs"])
    assert page.js_errors == []
    shot(page, "serve-compare.png", full_page=True)
