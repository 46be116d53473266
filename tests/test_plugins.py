"""Plugins: a rung, a backend or a metric is one file plus one entry point.

The example package in ``examples/plugin`` is installed with pip into a folder and used by
the CLI in a fresh process, exactly as a user would after ``pip install``; the rest checks
what the registry derives from a rung's metadata, and that a broken plugin costs one line.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_jsonl

from tunewise import plugins
from tunewise.dataset import check_data, load_examples, make_split
from tunewise.errors import TunewiseError
from tunewise.evaluate import evaluate
from tunewise.rungs.base import Prepared, PromptRung, RunContext, RungMeta
from tunewise.task import BackendSpec, parse_task

EXAMPLE = REPO / "examples" / "plugin"
BASE = ("name: t\nkind: classification\ndata: {path: data.jsonl}\ntarget: 0.5\n"
        "backend: {kind: dummy}\n")


def _contains(prediction: str, reference: str) -> bool:
    """The example metric's rule, written independently: the gold words inside the answer."""
    return f" {reference.lower()} " in f" {' '.join(prediction.lower().split())} "


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/plugin pip-installed into a folder (no network: --no-index, no deps, the
    system setuptools); returns the folder, to put on PYTHONPATH."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, tmp / "src")  # the build writes next to the sources
    target = tmp / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, done.stderr
    return target


def _cli(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
           "TUNEWISE_DB": str(cwd / "store.db")}
    return subprocess.run([sys.executable, "-m", "tunewise.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_installed_example_plugin_adds_a_rung_a_backend_and_a_metric(installed, tmp_path):
    shutil.copy(EXAMPLE / "data.jsonl", tmp_path / "data.jsonl")
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({
        "name": "plugin-check", "kind": "classification",
        "data": {"path": "data.jsonl", "id": "id"}, "metric": "contains_answer",
        "target": 0.8, "split": {"test": 12, "dev": 6, "seed": 0},
        "models": {"dummy": {"kind": "dummy"}, "parrot": {"kind": "parrot", "echo_words": 4}},
        "rungs": ["recap_prompt", "zero_shot", "system_prompt"]}), encoding="utf-8")
    done = _cli(["run", "task.yaml", "--all", "--json", "--out", "out"], installed, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr and "Traceback" not in done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["task"]["metric"] == "contains_answer"
    # the rung's position (25) puts it between system_prompt (20) and few-shot (30)
    assert [r["name"] for r in result["rungs"]] == ["zero_shot", "system_prompt",
                                                     "recap_prompt"]
    recap = result["rungs"][2]
    assert recap["status"] == "done" and recap["family"] == "prompting"
    assert recap["metric"] == "contains_answer" and recap["n"] == 12
    assert recap["info"]["recap"] == "Answer with exactly one of: billing, returns, shipping."
    # the backend plugin served the second model: its own id, its own cells
    parrot = next(m for m in result["models"] if m["model"] == "parrot")
    assert parrot["backend"] == "parrot:v1:words=4"
    cells = {(c["rung"], c["model"]): c["value"] for c in result["cells"]}
    assert set(cells) == {(r, m) for r in ("zero_shot", "system_prompt", "recap_prompt")
                          for m in ("dummy", "parrot")}
    # every stored per-item score is the plugin metric's, and the rung's value their mean
    with sqlite3.connect(tmp_path / "store.db") as db:
        rows = db.execute("SELECT rung, gold, prediction, score FROM predictions WHERE run_id=?",
                          (result["run_id"],)).fetchall()
    for rung, model in (("recap_prompt", "dummy"), ("recap_prompt@parrot", "parrot")):
        mine = [(g, p, s) for r, g, p, s in rows if r == rung]
        assert len(mine) == 12
        assert all(s == float(_contains(p, g)) for g, p, s in mine)
        assert cells[("recap_prompt", model)] == pytest.approx(sum(s for *_, s in mine) / 12)
    shown = _cli(["show-prompt", "task.yaml", "recap_prompt"], installed, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Answer with exactly one of: billing, returns, shipping." in shown.stdout


def test_a_metric_by_reference_is_scored_per_item(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    ref = "tunewise_example_plugin.metrics:contains_answer"
    spec = parse_task(BASE + f"metric: {ref}\n", "task.yaml")
    assert spec.metric == ref
    score = evaluate(["It is billing.", "shipping", "returns please"],
                     ["billing", "returns", "Returns"], ref)
    assert score.per_example == [1.0, 0.0, 1.0]
    assert score.value == pytest.approx(2 / 3) and score.ci_method == "wilson"
    assert score.ci_low < 2 / 3 < score.ci_high


@pytest.mark.parametrize(("metric", "says"), [
    ("no_such_package.metrics:f", "did not import: ModuleNotFoundError"),
    ("tunewise_example_plugin.metrics:nothing", "has no attribute 'nothing'"),
    ("tunewise_example_plugin.metrics:re", "is not a function"),
    ("json:dumps", "must take (prediction, reference)"),
    ("accuracyy", "Input should be 'accuracy', 'macro_f1', 'exact_match', 'token_f1' or "
                  "'field_f1'"),
])
def test_a_bad_metric_is_one_line_naming_the_task_line(metric, says, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    with pytest.raises(TunewiseError) as err:
        parse_task(BASE + f"metric: '{metric}'\n", "task.yaml")
    assert str(err.value).startswith("task.yaml:6: metric: ")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_metric_that_returns_nonsense_stops_with_one_line(monkeypatch, tmp_path):
    (tmp_path / "bad_metric.py").write_text(
        "def half(prediction, reference):\n    return 'high'\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TunewiseError, match=r"metric 'bad_metric:half' returned 'high' for a "
                                            r"test item; a metric returns a number in \[0, 1\]"):
        evaluate(["a"], ["a"], "bad_metric:half")


# ---- the registry, with entry points of our own -------------------------------------------


class CorpusRung(PromptRung):
    """A test rung that needs a corpus and must be asked for."""

    name = "corpus_check"
    meta = RungMeta("retrieval", 65, needs={"corpus"}, opt_in=True)

    def prepare(self, ctx: RunContext) -> Prepared:
        return Prepared(self.name, lambda ex: [{"role": "user", "content": ex.input}])


class Nameless(CorpusRung):
    name = "other_name"


class NoMeta(PromptRung):
    name = "no_meta"


@pytest.fixture
def entry_points(monkeypatch):
    """Install entry points for the test (``add(group, name, value)``); caches are cleared
    before and after, so no other test sees them."""
    added: list[EntryPoint] = []

    def fake(group: str) -> list[EntryPoint]:
        return [ep for ep in added if ep.group == group]

    def add(group: str, name: str, value: str) -> None:
        added.append(EntryPoint(name, value, group))
        plugins.clear()

    monkeypatch.setattr(plugins, "entry_points", fake)
    plugins.clear()
    yield add
    plugins.clear()


def test_rung_metadata_drives_names_order_ladder_and_data_checks(entry_points, tmp_path):
    entry_points(plugins.RUNGS, "corpus_check", "test_plugins:CorpusRung")
    names = plugins.rung_names()
    assert names.index("rag") < names.index("corpus_check") < names.index("lora")
    assert plugins.family("corpus_check") == "retrieval"
    import tunewise.rungs.base as base
    import tunewise.task as task

    # the names older code reads are derived too
    assert names == task.RUNG_ORDER and base.FAMILY["corpus_check"] == "retrieval"
    assert "corpus_check" in task.OPT_IN_RUNGS and "corpus_check" not in task.FINE_TUNING
    write_jsonl(tmp_path / "data.jsonl", [{"input": f"question {i}", "output": "ab"[i % 2]}
                                          for i in range(40)])
    spec = parse_task(BASE + "split: {test: 10, dev: 5}\nrungs: [zero_shot, corpus_check]\n",
                      tmp_path / "task.yaml")
    spec.data.path = tmp_path / "data.jsonl"
    examples = load_examples(spec)
    report = check_data(examples, make_split(examples, spec), spec)
    assert report.rung_blocks["corpus_check"] == "the task has no corpus"
    from tunewise.ladder import default_rungs

    assert "corpus_check" not in default_rungs(spec.model_copy(update={"rungs": None}))
    assert default_rungs(spec) == ["zero_shot", "corpus_check"]
    with pytest.raises(TunewiseError, match=r"rungs\.0: Input should be .*'corpus_check'"):
        parse_task(BASE + "rungs: [corpus_chek]\n", "task.yaml")


def test_a_broken_plugin_is_one_warning_and_one_error_never_a_traceback(entry_points, capsys):
    entry_points(plugins.RUNGS, "gone", "no_such_plugin_module:Rung")
    entry_points(plugins.RUNGS, "corpus_chek", "test_plugins:Nameless")
    entry_points(plugins.RUNGS, "no_meta", "test_plugins:NoMeta")
    entry_points(plugins.RUNGS, "zero_shot", "test_plugins:CorpusRung")  # name taken
    names = plugins.rung_names()
    assert "zero_shot" in names and not {"gone", "corpus_chek", "no_meta"} & set(names)
    warned = capsys.readouterr().err.splitlines()
    assert len(warned) == 4 and all(w.startswith("warning: ") for w in warned)
    assert any("'gone' (no_such_plugin_module:Rung" in w and "ModuleNotFoundError" in w
               for w in warned)
    assert any("'corpus_chek'" in w and "the class's name is 'other_name'" in w
               for w in warned)
    assert any("'no_meta'" in w and "declares no meta = RungMeta" in w for w in warned)
    assert any("is ignored" in w and "tunewise.rungs already has 'zero_shot'" in w
               for w in warned)
    with pytest.raises(TunewiseError) as err:
        parse_task(BASE + "rungs: [zero_shot, gone]\n", "task.yaml")
    assert str(err.value).startswith("task.yaml:6: rungs.1: rung 'gone'")
    assert "did not import: ModuleNotFoundError" in str(err.value)


def test_a_backend_plugin_is_a_kind_of_the_union(entry_points, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    entry_points(plugins.BACKENDS, "parrot", "tunewise_example_plugin.parrot:ParrotSpec")
    spec = parse_task(BASE.replace("{kind: dummy}", "{kind: parrot, echo_words: 2}"),
                      "task.yaml")
    assert type(spec.backend).__name__ == "ParrotSpec" and spec.backend.echo_words == 2
    assert spec.backend.build().id == "parrot:v1:words=2"
    assert type(BackendSpec(kind="parrot")).__name__ == "ParrotSpec"
    with pytest.raises(TunewiseError, match=r"task.yaml:5: backend.echo_word: unknown key "
                                            r"'echo_word' \(did you mean 'echo_words'\?\)"):
        parse_task(BASE.replace("{kind: dummy}", "{kind: parrot, echo_word: 2}"), "task.yaml")
    with pytest.raises(TunewiseError, match=r"task.yaml:5: backend.kind: Input should be "
                                            r"'local', 'openai', 'dummy' or 'parrot'"):
        parse_task(BASE.replace("{kind: dummy}", "{kind: parot}"), "task.yaml")
    # a served model: the fine-tuning rungs are refused for it under models:
    with pytest.raises(TunewiseError, match=r"models.p: lora needs the model's weights"):
        parse_task(BASE.replace("backend: {kind: dummy}\n", "models:\n  p: {kind: parrot, "
                                "rungs: [lora]}\n"), "task.yaml")


def test_each_kind_takes_its_own_keys_and_says_whose_a_key_is():
    with pytest.raises(TunewiseError, match=r"backend.seed: unknown key 'seed' \(a key of "
                                            r"kind dummy\)"):
        parse_task(BASE.replace("{kind: dummy}", "{kind: local, seed: 1}"), "task.yaml")
    spec = parse_task(BASE.replace("{kind: dummy}", "{kind: openai, model: m, base_url: "
                                   "'http://127.0.0.1:9/v1', timeout_s: 5}"), "task.yaml")
    assert type(spec.backend).__name__ == "OpenAISpec" and spec.backend.timeout_s == 5
    # the dump keeps the kind's own keys, so a re-parse gives the same task
    again = parse_task(yaml.safe_dump(spec.model_dump(mode="json")), "again.yaml")
    assert again.backend.timeout_s == 5 and again.fingerprint() == spec.fingerprint()


def test_the_json_schema_lists_registered_names_and_each_kinds_keys(entry_points):
    from tunewise.task import TaskSpec

    entry_points(plugins.RUNGS, "corpus_check", "test_plugins:CorpusRung")
    schema = TaskSpec.model_json_schema()
    rungs = schema["properties"]["rungs"]["anyOf"][0]["items"]["enum"]
    assert rungs[:2] == ["zero_shot", "system_prompt"] and "corpus_check" in rungs
    metric = schema["properties"]["metric"]["anyOf"]
    assert metric[0]["enum"][0] == "accuracy" and ":" in metric[1]["pattern"]
    members = schema["$defs"]["BackendSpec"]["oneOf"]
    keys = {m["properties"]["kind"]["const"]: set(m["properties"]) for m in members}
    assert set(keys) == {"local", "openai", "dummy"}
    assert "threads" in keys["local"] and "seed" in keys["dummy"] and "base_url" in keys[
        "openai"] and "base_url" not in keys["dummy"]


def test_doctor_lists_plugins_and_says_why_one_does_not_load(entry_points, capsys):
    from tunewise.doctor import check_plugins

    assert [c.name for c in check_plugins()] == ["plugins"]  # none installed here
    entry_points(plugins.RUNGS, "corpus_check", "test_plugins:CorpusRung")
    entry_points(plugins.METRICS, "gone", "no_such_plugin_module:metric")
    rows = {c.name: c for c in check_plugins()}
    assert set(rows) == {"plugin rung corpus_check", "plugin metric gone"}
    assert rows["plugin rung corpus_check"].status == "ok"
    assert rows["plugin metric gone"].status == "warn"
    assert "did not import: ModuleNotFoundError" in rows["plugin metric gone"].detail


def test_a_backend_block_written_by_an_earlier_init_still_loads():
    # before each kind had its own class, `tunewise init` wrote every kind's keys, at their
    # defaults; those are ignored, while a value that would matter is an error
    old = ("{kind: local, model: smollm2-135m, batch_size: 8, max_new_tokens: 48, "
           "timeout_s: 60.0, concurrency: 8, max_retries: 6, score_method: auto, "
           "score_end_of_turn: true, seed: 0}")
    spec = parse_task(BASE.replace("{kind: dummy}", old), "task.yaml")
    assert type(spec.backend).__name__ == "LocalSpec"
    assert spec.backend.model_dump() == {"kind": "local", "model": "smollm2-135m",
                                         "batch_size": 8, "max_new_tokens": 48,
                                         "score_end_of_turn": True, "threads": None}
    with pytest.raises(TunewiseError, match=r"backend.concurrency: unknown key 'concurrency' "
                                            r"\(a key of kind openai\)"):
        parse_task(BASE.replace("{kind: dummy}", old.replace("concurrency: 8",
                                                             "concurrency: 2")), "task.yaml")
