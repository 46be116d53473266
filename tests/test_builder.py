"""The web task builder and the try box (issue 18), through FastAPI's test client."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from tunewise.task import load_task
from tunewise.web.app import create_app

DATA = Path(__file__).parent / "data" / "init"


@pytest.fixture
def client(tmp_path, monkeypatch) -> TestClient:
    monkeypatch.setenv("TUNEWISE_TASKS", str(tmp_path / "tasks"))
    return TestClient(create_app(os.environ["TUNEWISE_DB"]))


def test_builder_reads_a_path_shows_columns_checks_and_the_yaml(client, tmp_path):
    data = tmp_path / "snips.jsonl"
    shutil.copy(DATA / "snips_intents.jsonl", data)
    page = client.get("/build", params={"data": str(data)})
    assert page.status_code == 200
    html = page.text
    assert '<option selected>input</option>' in html.replace("\n", "")
    assert "leakage: 0 test inputs also in train/dev" in html
    assert "size: 98 training examples, under 100" in html
    assert "add_to_playlist" in html and "# tunewise run task.yaml" in html


def test_builder_saves_a_task_that_loads_with_the_chosen_settings(client, tmp_path):
    data = tmp_path / "snips.jsonl"
    shutil.copy(DATA / "snips_intents.jsonl", data)
    form = {"data": str(data), "input": "input", "output": "output",
            "kind": "classification", "name": "intents", "target": "0.75",
            "requests_per_day": "5000", "latency_ms": "300", "price": "example-hosted-small",
            "backend": "dummy", "task_path": str(tmp_path / "intents.yaml")}
    res = client.post("/build", data=form)
    assert res.status_code == 200, res.text
    spec = load_task(tmp_path / "intents.yaml")
    assert (spec.name, spec.target, spec.volume.requests_per_day, spec.latency_ms) == (
        "intents", 0.75, 5000, 300)
    assert spec.cost.price == "example-hosted-small" and spec.backend.kind == "dummy"
    again = client.post("/build", data=form)  # never over an existing file unless asked
    assert again.status_code == 400 and "already exists" in again.text
    assert client.post("/build", data={**form, "overwrite": "true"}).status_code == 200


def test_upload_keeps_the_file_in_the_workspace_and_refuses_bad_ones(client, tmp_path):
    body = (DATA / "e2e_records.jsonl").read_bytes()
    res = client.post("/api/build/upload", content=body,
                      headers={"X-Filename": "../../my records.jsonl"})
    assert res.status_code == 200, res.text
    path = Path(res.json()["path"])
    assert path == tmp_path / "tasks" / "my-records" / "my-records.jsonl"
    assert path.read_bytes() == body
    made = client.get("/api/build", params={"data": str(path)}).json()
    assert made["kind"] == "extraction" and made["found"]["input"] == "input"
    bad = client.post("/api/build/upload", content=b"x", headers={"X-Filename": "a.exe"})
    assert bad.status_code == 400 and "upload a .jsonl or .csv file" in bad.json()["error"]


def test_builder_errors_are_shown_on_the_page(client, tmp_path):
    res = client.get("/build", params={"data": str(tmp_path / "missing.jsonl")})
    assert res.status_code == 400 and "file not found" in res.text
    data = tmp_path / "d.jsonl"
    shutil.copy(DATA / "snips_intents.jsonl", data)
    res = client.get("/build", params={"data": str(data), "target": "7"})
    assert res.status_code == 400 and "between 0 and 1" in res.text
    res = client.post("/build", data={"data": str(data)}, headers={"origin": "http://evil"})
    assert res.status_code == 403


def test_try_box_answers_with_every_finished_rung(client, make_task, runner):
    from tunewise.cli import app

    task = make_task(limit=200, rungs=["zero_shot", "system_prompt", "few_shot_random"])
    out = runner.invoke(app, ["run", str(task), "--all", "--json"])
    assert out.exit_code == 0, out.output
    import json

    run_id = json.loads(out.stdout)["run_id"]
    labels = set(yaml.safe_load(task.read_text()).get("labels") or []) or {
        json.loads(x)["output"] for x in (task.parent / "data.jsonl").read_text().splitlines()}
    res = client.post(f"/api/runs/{run_id}/try", data={"text": "play some jazz"})
    assert res.status_code == 200, res.text
    got = res.json()
    assert [a["rung"] for a in got["answers"]] == ["zero_shot", "system_prompt",
                                                  "few_shot_random"]
    for a in got["answers"]:
        assert a["answer"] in labels
        probs = [x["p"] for x in a["labels"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert a["labels"][0]["label"] == a["answer"]
    empty = client.post(f"/api/runs/{run_id}/try", data={"text": "  "})
    assert empty.status_code == 400 and "type an input" in empty.json()["error"]
    page = client.get(f"/runs/{run_id}")
    assert 'id="try-form"' in page.text


def test_builder_finds_the_corpus_and_previews_rows(client, tmp_path):
    for name in ("coqa_questions.jsonl", "coqa_stories.jsonl"):
        shutil.copy(DATA / name, tmp_path / name)
    made = client.get("/api/build", params={"data": str(tmp_path / "coqa_questions.jsonl")}
                      ).json()
    assert made["found"]["corpus"] == str(tmp_path / "coqa_stories.jsonl")
    assert made["kind"] == "qa" and made["fields"]["corpus"]["path"] == "coqa_stories.jsonl"
    first = (DATA / "coqa_questions.jsonl").read_text().splitlines()[0]
    import json

    assert made["sample"][0] == {k: json.loads(first)[k] for k in ("input", "output")}
    page = client.get("/build", params={"data": str(tmp_path / "coqa_questions.jsonl")})
    assert 'id="corpus-path"' in page.text and 'id="sample"' in page.text
