"""Typed, versioned results: every example and demo writes a result the schema reads back,
old files migrate or fail in one line, and the readers render from the typed model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.results import SCHEMA_VERSION, RunResult, load_result

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "slices"  # examples/ read ../shared/data; tests these
TASKS = {
    "demo-symptoms": REPO / "tunewise/demo/symptoms/task.yaml",
    "demo-clinic": REPO / "tunewise/demo/clinic/task.yaml",
    "examples-snips": REPO / "examples/snips/task.yaml",
}


def dummy_run(path: Path, tmp_path: Path) -> dict:
    """Run a shipped task on the dummy backend (bm25 retrieval, no few_shot_knn: no
    embedding weights), on the vendored slice when the example reads the public data."""
    from tunewise.ladder import run_ladder
    from tunewise.plugins import rung_names
    from tunewise.store import Store
    from tunewise.task import BackendSpec, load_task

    task = load_task(path)
    if not task.data.path.is_relative_to(REPO):  # an example over the public data sets
        task.data.path = DATA / task.data.path.name
    update = {"backend": BackendSpec(kind="dummy"), "backends": None,
              # few_shot_knn embeds with the bundled MiniLM: this module stays model-free
              "rungs": [r for r in task.rungs or rung_names() if r != "few_shot_knn"]}
    if task.corpus is not None:
        update["retrieval"] = task.retrieval.model_copy(update={"method": "bm25"})
    task = task.model_copy(update=update)
    object.__setattr__(task, "_source", path)
    return run_ladder(task, Store(tmp_path / "store.db"), out_dir=tmp_path / "out",
                      climb_all=True)


@pytest.fixture(scope="module", params=sorted(TASKS))
def shipped_run(request, tmp_path_factory) -> tuple[str, dict]:
    tmp = tmp_path_factory.mktemp(request.param)
    return request.param, dummy_run(TASKS[request.param], tmp)


def test_every_shipped_task_writes_a_valid_versioned_result(shipped_run):
    name, result = shipped_run
    written = json.loads(Path(result["result_path"]).read_text(encoding="utf-8"))
    assert written["schema_version"] == SCHEMA_VERSION
    typed = RunResult.model_validate(written)
    assert typed.verdict is not None and typed.verdict.rung in {r.name for r in typed.done()}
    # the thresholds the verdict applied are echoed
    assert typed.decision["prompting_enough"] == 0.9 and typed.decision["horizon_days"] > 0
    # the per-rung calls add up to the totals
    assert typed.usage.calls == sum(u.calls_made + u.cache_hits
                                    for u in typed.usage.rungs.values())
    # writing what was read back changes nothing: no field is lost or invented
    assert load_result(written).to_json() == written


def test_the_estimate_is_within_10_percent_of_calls_and_25_percent_of_tokens(shipped_run):
    name, result = shipped_run
    usage = result["usage"]
    calls, tokens = usage["calls"], usage["tokens"]
    assert abs(usage["estimated_tokens"] - tokens) <= 0.25 * tokens, (name, usage)
    # A budget guard must not under-count; the one part it cannot know before the run is
    # how many of the freshness questions the rung answers right (only those are asked
    # again after the edit), so that part is counted at its upper bound.
    assert usage["estimated_calls"] >= calls, (name, usage)
    fresh = result.get("freshness") or {}
    unknowable = min(30, fresh.get("candidates", 0)) - fresh.get("edited_questions", 0)
    assert usage["estimated_calls"] - unknowable - calls <= 0.10 * calls, (name, usage)


def test_a_version_0_file_migrates(shipped_run):
    _, result = shipped_run
    old = json.loads(Path(result["result_path"]).read_text(encoding="utf-8"))
    old.pop("schema_version")
    old["usage"] = old["usage"]["rungs"]  # version 0 kept calls per rung at the top level
    typed = load_result(old)
    assert typed.schema_version == SCHEMA_VERSION
    assert typed.usage.calls_made == sum(u["calls_made"] for u in old["usage"].values())


def test_an_unreadable_result_is_one_line_saying_to_rerun():
    with pytest.raises(TunewiseError) as err:
        load_result({"schema_version": 1, "task": {"name": "x"}}, where="run r1")
    text = str(err.value)
    assert "run r1" in text and "re-run" in text and "\n" not in text
    with pytest.raises(TunewiseError, match="newer than this tunewise"):
        load_result({"schema_version": SCHEMA_VERSION + 1})


def test_show_renders_a_stored_run_through_the_typed_model(make_task, runner, tmp_path):
    task = make_task(limit=200, rungs=["zero_shot", "system_prompt"])
    out = runner.invoke(app, ["run", str(task), "--all", "-o", str(tmp_path / "o")])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    shown = runner.invoke(app, ["show", result["run_id"]])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert result["verdict"]["summary"].split(":")[0] in text
    assert "prompting_enough 0.9" in text  # the thresholds are echoed
    as_json = runner.invoke(app, ["show", result["run_id"], "--json"])
    assert json.loads(as_json.output)["schema_version"] == SCHEMA_VERSION


def test_report_shows_the_comparisons_thresholds_and_single_request_latency(tmp_path):
    import os

    from report_helpers import demo_like_run

    from tunewise.report import build_report
    from tunewise.store import Store

    run_id, result, _ = demo_like_run(tmp_path, Path(os.environ["TUNEWISE_DB"]))
    _, html = build_report(Store(os.environ["TUNEWISE_DB"]), run_id)
    comparisons = result["verdict"]["comparisons"]
    assert comparisons and 'id="comparisons"' in html
    for c in comparisons:
        assert f'data-comparison="{c["id"]}"' in html
    assert 'id="thresholds"' in html and "prompting enough 0.9" in html
    row = html.split('<tr data-rung="zero_shot"', 1)[1].split("</tr>", 1)[0]
    single = result["rungs"][0]["latency"]
    assert f"{single['single_p95_ms']:.0f}" in row and "items/s" in row
