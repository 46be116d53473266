"""`tunewise serve`: host policy, pages, JSON, background runs (FastAPI TestClient)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from report_helpers import SCRIPT_INPUT, demo_like_run, write_task

from tunewise.advisor import Answers, advise
from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.web.app import create_app
from tunewise.web.server import is_loopback, resolve_host


@pytest.fixture
def demo(tmp_path: Path) -> tuple[str, dict, Path]:
    return demo_like_run(tmp_path, Path(os.environ["TUNEWISE_DB"]))


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(os.environ["TUNEWISE_DB"]))


# ---- host policy ------------------------------------------------------------------------

def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.com"))


def test_default_host_is_loopback():
    assert resolve_host(None, {}) == ("127.0.0.1", None)
    assert resolve_host(None, {"TUNEWISE_HOST": "127.0.0.2"}) == ("127.0.0.2", None)


def test_env_cannot_open_the_server_to_the_network():
    with pytest.raises(TunewiseError, match="only binds beyond 127.0.0.1 when --host"):
        resolve_host(None, {"TUNEWISE_HOST": "0.0.0.0"})


def test_explicit_non_loopback_host_warns():
    host, warning = resolve_host("0.0.0.0", {"TUNEWISE_HOST": "0.0.0.0"})
    assert host == "0.0.0.0"
    assert "not a loopback address" in warning


def test_serve_refuses_env_host_with_one_line_and_exit_2(runner, monkeypatch):
    started = []
    monkeypatch.setattr("tunewise.web.server.run_server", lambda *a: started.append(a))
    monkeypatch.setenv("TUNEWISE_HOST", "0.0.0.0")
    res = runner.invoke(app, ["serve"])
    assert res.exit_code == 2
    assert started == []
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "TUNEWISE_HOST=0.0.0.0" in lines[0] and "--host" in lines[0]


def test_serve_binds_where_told_and_warns(runner, monkeypatch):
    started = []
    monkeypatch.setattr("tunewise.web.server.run_server", lambda *a: started.append(a))
    res = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9999"])
    assert res.exit_code == 0, res.output
    assert started and started[0][:2] == ("0.0.0.0", 9999)
    assert "warning" in res.output and "not a loopback address" in res.output
    started.clear()
    res = runner.invoke(app, ["serve"])
    assert started[0][:2] == ("127.0.0.1", 8765)
    assert "warning" not in res.output


# ---- pages and JSON -----------------------------------------------------------------------

def test_run_page_matches_result_and_escapes_input(demo, client):
    run_id, result, _ = demo
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    html = page.text
    assert SCRIPT_INPUT not in html
    assert "Play &lt;script&gt;window.__pwned" in html
    for rung in result["rungs"]:
        if rung["status"] != "done":
            continue
        row = html.split(f'<tr data-rung="{rung["name"]}"', 1)[1].split("</tr>", 1)[0]
        shown = re.search(r'data-value="([0-9.]+)"', row).group(1)
        assert float(shown) == rung["value"]
        assert f"{rung['value']:.3f}" in row
    listing = client.get("/runs").text
    assert run_id in listing
    api = client.get(f"/api/runs/{run_id}").json()
    assert api["verdict"] == result["verdict"]
    assert any(r["input"] == SCRIPT_INPUT for r in api["errors"]["rows"])


def test_downloaded_report_is_the_standalone_page(demo, client):
    run_id, result, _ = demo
    res = client.get(f"/runs/{run_id}/report.html")
    assert res.status_code == 200
    assert "attachment" in res.headers["content-disposition"]
    assert '<nav class="top">' not in res.text and 'data-chart="quality_cost"' in res.text


def test_unknown_run_is_404_with_message(client):
    res = client.get("/runs/nope")
    assert res.status_code == 404 and "no run &#39;nope&#39;" in res.text
    assert client.get("/api/runs/nope").json()["error"].endswith("no run 'nope' in the store")


def test_wizard_walks_the_advisor_questions(client):
    plan = {"tried_prompting": "yes", "problem": "behaviour", "strict_format": "yes",
            "examples": "300", "volume": "20000", "latency_ms": "", "budget_usd": ""}
    params: dict[str, str] = {}
    seen = []
    for _ in range(20):
        html = client.get("/advisor", params=params).text
        m = re.search(r'id="wizard" data-step="(\d+)" data-key="(\w+)"', html)
        if not m:
            break
        seen.append(m.group(2))
        params[m.group(2)] = plan[m.group(2)]
    assert seen == list(plan)  # knowledge questions are skipped for a behaviour problem
    expected = advise(Answers(tried_prompting=True, problem="behaviour", strict_format=True,
                              examples=300, volume=20000))
    assert f'id="recommendation">{expected.headline}<' in html
    assert client.get("/api/advisor", params=params).json()["headline"] == expected.headline


def test_wizard_asks_again_after_a_bad_number(client):
    html = client.get("/advisor", params={"tried_prompting": "yes", "problem": "behaviour",
                                          "strict_format": "no", "examples": "lots"}).text
    assert 'data-key="examples"' in html and "&#39;lots&#39; is not a number" in html


def test_start_a_run_and_watch_it_finish(tmp_path, client):
    folder = tmp_path / "job"
    folder.mkdir()
    task = write_task(folder, rungs=["zero_shot", "system_prompt"])
    res = client.post("/start", data={"task_path": str(task)}, follow_redirects=False)
    assert res.status_code == 303
    job_url = res.headers["location"]
    assert client.get(job_url).status_code == 200
    deadline = time.time() + 60
    while True:
        job = client.get("/api/jobs/" + job_url.rsplit("/", 1)[1]).json()
        if job["status"] in ("done", "error") or time.time() > deadline:
            break
        time.sleep(0.2)
    assert job["status"] == "done", job
    assert [r["name"] for r in job["finished"]] == ["zero_shot", "system_prompt"]
    stored = json.loads(client.get(f"/api/runs/{job['run_id']}").text)
    assert stored["rungs"][0]["value"] == job["finished"][0]["value"]


def test_start_with_a_bad_path_explains_on_the_form(client):
    res = client.post("/start", data={"task_path": "/nowhere/<b>task.yaml"})
    assert res.status_code == 400
    assert "task file not found" in res.text and "&lt;b&gt;task.yaml" in res.text


def test_compare_two_runs_side_by_side(demo, client, tmp_path):
    run_a, result, task = demo
    folder = tmp_path / "b"
    folder.mkdir()
    run_b, result_b, _ = demo_like_run(folder, Path(os.environ["TUNEWISE_DB"]))
    data = client.get("/api/compare", params={"a": run_a, "b": run_b}).json()
    assert [r["name"] for r in data["rows"]] == [r["name"] for r in result["rungs"]]
    assert all(r["diff"] == 0 for r in data["rows"] if r["diff"] is not None)
    html = client.get("/compare", params={"a": run_a, "b": run_b}).text
    assert 'id="compare-table"' in html and 'id="verdict-a"' in html and run_b in html


def test_other_sites_cannot_start_runs_or_rebind(tmp_path):
    guarded = TestClient(create_app(os.environ["TUNEWISE_DB"], allowed_hosts=["127.0.0.1"]),
                         base_url="http://127.0.0.1:8765")
    res = guarded.post("/start", data={"task_path": "x"},
                       headers={"origin": "http://evil.example"})
    assert res.status_code == 403
    rebound = TestClient(create_app(os.environ["TUNEWISE_DB"], allowed_hosts=["127.0.0.1"]),
                         base_url="http://evil.example")
    assert rebound.get("/runs").status_code == 400
    assert guarded.get("/runs").status_code == 200
