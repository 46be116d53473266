"""The task builder and the try box in a real headless Chromium (issue 18): upload a data
file, read its checks, set the task, save it, run it live, open the result and try an
input on it. Dummy backend; screenshots of each page go to ``artifacts/``."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_helpers import ARTIFACTS, CHROMIUM, shot

from tunewise.task import load_task

DATA = Path(__file__).parent / "data" / "init"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.model,  # the live run's default ladder embeds with the bundled MiniLM
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="/usr/bin/chromium is absent (bash scripts/install.sh dev)"),
]


def test_builder_create_task_run_result_and_try_box(page, server, tmp_path,  # noqa: F811
                                                     monkeypatch):
    monkeypatch.setenv("TUNEWISE_TASKS", str(tmp_path / "tasks"))
    page.goto(server + "/")
    page.click("nav >> text=New task")
    page.wait_for_selector("#step-data")
    shot(page, "builder-start.png")

    # 1. Upload: the page sends the file, fills the path and reads the data.
    page.set_input_files("#upload", str(DATA / "snips_intents.jsonl"))
    page.wait_for_selector("#step-columns")
    uploaded = tmp_path / "tasks" / "snips_intents" / "snips_intents.jsonl"
    assert uploaded.read_bytes() == (DATA / "snips_intents.jsonl").read_bytes()
    assert page.locator("#input").input_value() == "input"
    assert page.locator("#output").input_value() == "output"
    assert page.locator("#kind").input_value() == "classification"
    checks = page.locator("#checks").inner_text()
    assert "leakage: 0 test inputs also in train/dev" in checks
    assert "under 100: fine-tuning is not offered" in checks
    assert page.locator("#labels tr").count() == 7

    # 2. Settings, then save: the YAML on disk has them.
    page.fill("#name", "intents from the browser")
    page.fill("#target", "0.5")
    page.fill("#requests_per_day", "2500")
    page.fill("#latency_ms", "400")
    page.select_option("#price", "example-hosted-small")
    page.select_option("#backend", "dummy")
    task_path = tmp_path / "intents.yaml"
    page.fill("#task_path", str(task_path))
    page.click("#save")
    page.wait_for_selector("#saved")
    spec = load_task(task_path)
    assert (spec.name, spec.target, spec.volume.requests_per_day, spec.latency_ms,
            spec.cost.price, spec.backend.kind) == (
        "intents from the browser", 0.5, 2500, 400, "example-hosted-small", "dummy")
    assert page.locator("#yaml").inner_text() == task_path.read_text()
    shot(page, "builder-saved.png", full_page=True)

    # 3. Start it and watch it live until the result page is offered.
    page.click("#run")
    page.wait_for_selector("#job")
    page.wait_for_selector("#done-link:not([hidden])", timeout=180_000)
    assert page.locator("#status").inner_text() == "done"
    assert page.locator("#finished tbody tr").count() >= 5
    shot(page, "builder-job.png", full_page=True)
    page.click("#report-link")
    page.wait_for_selector("#verdict")
    assert "intents from the browser" in page.title()
    shot(page, "builder-result.png", full_page=True)

    # 4. The try box: every rung answers one input, side by side, with confidences.
    rungs = [t.strip() for t in page.locator("#rungs tbody tr td:first-child").all_inner_texts()
             if t.strip()]
    page.fill("#try-text", "Play the newest album by Adele")
    page.click("#try-button")
    page.wait_for_selector("#try-table")
    heads = page.locator("#try-table thead th").all_inner_texts()[1:]
    assert heads and set(heads) <= set(rungs)
    for rung in heads:
        answer = page.locator(f'#try-table td[data-rung="{rung}"] .try-answer').inner_text()
        assert answer in spec.labels
        confidences = page.locator(f'#try-table td[data-rung="{rung}"] .try-label')
        assert confidences.count() == 5
        top = confidences.first.inner_text()
        assert top.startswith(answer)
    assert page.js_errors == []
    page.locator("#try").screenshot(path=str(ARTIFACTS / "try-box.png"))
    assert (ARTIFACTS / "try-box.png").stat().st_size > 5_000
