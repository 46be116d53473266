"""`tunewise init DATA_FILE` (issue 18): detection, the commented task file, clear errors,
and a file that runs as written, on slices of every public data file (tests/data/init)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cli_helpers import tunewise

from tunewise.cli import app
from tunewise.task import TaskSpec, load_task

DATA = Path(__file__).parent / "data" / "init"


@pytest.mark.parametrize(("name", "kind", "data_file", "corpus"), [
    ("snips_intents", "classification", "snips_intents.jsonl", None),
    ("e2e_records", "extraction", "e2e_records.jsonl", None),
    ("coqa_questions", "qa", "coqa_questions.jsonl", "coqa_stories.jsonl"),
    # a documents file is the corpus: init finds the examples that cite its ids
    ("coqa_stories", "qa", "coqa_questions.jsonl", "coqa_stories.jsonl"),
])
def test_init_writes_a_task_that_runs_as_written(name, kind, data_file, corpus, runner,
                                                 tmp_path: Path):
    out = tmp_path / "task.yaml"
    res = runner.invoke(app, ["init", str(DATA / f"{name}.jsonl"), "-o", str(out),
                              "--backend", "dummy"])
    assert res.exit_code == 0, res.output
    spec = load_task(out)
    assert spec.kind == kind and spec.backend.kind == "dummy"
    assert spec.data.path == (DATA / data_file).resolve()
    assert (spec.data.input, spec.data.output) == ("input", "output")
    assert (spec.corpus.path if spec.corpus else None) == (
        (DATA / corpus).resolve() if corpus else None)
    run = runner.invoke(app, ["run", str(out), "--rungs", "zero_shot", "-o",
                              str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    (zero,) = result["rungs"]
    assert zero["name"] == "zero_shot" and zero["status"] == "done"
    assert zero["n"] == result["split"]["test"] >= spec.split.test  # whole groups: >=


def test_classification_labels_and_data_check_findings_are_in_the_file(runner, tmp_path):
    out = tmp_path / "task.yaml"
    assert runner.invoke(app, ["init", str(DATA / "snips_intents.jsonl"), "-o", str(out)]
                         ).exit_code == 0
    text = out.read_text()
    rows = [json.loads(x) for x in (DATA / "snips_intents.jsonl").read_text().splitlines()]
    spec = load_task(out)
    assert spec.labels == sorted({r["output"] for r in rows})
    assert spec.backend.kind == "local"  # the default, written out
    assert text.startswith(f"# tunewise run {out.name}\n")
    n_train = len(rows) - spec.split.test - spec.split.dev
    for finding in (f"{len(rows)} examples: {n_train} train", "duplicates: 0 inputs",
                    "leakage: 0 test inputs", f"class balance: {len(spec.labels)} labels",
                    f"size: {n_train} training examples, under 100: fine-tuning is not "
                    "offered"):
        assert finding in text, finding
    # every section of the schema is there, with its defaults and descriptions
    for key in TaskSpec.model_fields:
        assert f"\n{key}:" in text or f"\n# {key}:" in text, key
    raw = yaml.safe_load(text)
    assert raw["decision"]["min_examples"] == 100 and raw["decision"]["warn_examples"] == 200
    assert raw["few_shot"]["k"] == TaskSpec.model_fields["few_shot"].default_factory().k
    assert "  r: 8  # LoRA rank." in text


def test_records_whose_answers_repeat_are_split_by_output(runner, tmp_path):
    """When the data check advises it (many distinct test records also in train), init
    sets split.group_by: output and says why."""
    rows = [{"input": f"{verb} R{i} in area {i % 3}.", "output": f"name: R{i}, area: A{i % 3}"}
            for i in range(120) for verb in ("Visit", "Try", "There is")]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "task.yaml"
    res = runner.invoke(app, ["init", str(data), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert load_task(out).kind == "extraction"
    assert load_task(out).split.group_by == "output"
    assert "split.group_by: output set because" in out.read_text()


def test_csv_columns_are_detected_without_conventional_names(runner, tmp_path):
    rows = ["ticket_id,body,team"]
    teams = ["billing", "shipping", "returns"]
    rows += [f"T{i:04d},\"my order {i} has a problem with {teams[i % 3]}\",{teams[i % 3]}"
             for i in range(90)]
    data = tmp_path / "tickets.csv"
    data.write_text("\n".join(rows) + "\n")
    res = runner.invoke(app, ["init", str(data), "--json", "--backend", "dummy"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert (got["format"], got["input"], got["output"], got["kind"]) == (
        "csv", "body", "team", "classification")
    assert got["labels"] == sorted(teams)
    assert got["data_check"]["sizes"] == {"train": 63, "dev": 9, "test": 18}
    assert runner.invoke(app, ["run", "task.yaml", "--rungs", "zero_shot"]).exit_code == 0


@pytest.mark.parametrize(("content", "message"), [
    (b"", "the file has no rows"),
    (b'{"input": "a", "output": "b"}\n{"input": \n', "data.jsonl:2: not valid JSON"),
    (b'{"input": "caf\xe9"}\n', "not UTF-8 text"),
    (b'["a", "b"]\n', "data.jsonl:1: this is one JSON array"),
    (b"".join(b'{"id": "k%d", "a": "x y"}\n' % i for i in range(3)),
     "cannot find an input and an output column"),
])
def test_unreadable_files_are_one_line_errors(content, message, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    out = tunewise("init", str(data))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "task.yaml").exists()


def test_missing_file_existing_output_and_a_lone_corpus(tmp_path):
    assert "file not found" in tunewise("init", "nope.jsonl").stderr
    (tmp_path / "task.yaml").write_text("keep me")
    out = tunewise("init", str(DATA / "snips_intents.jsonl"))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert (tmp_path / "task.yaml").read_text() == "keep me"
    lone = tmp_path / "docs"
    lone.mkdir()
    (lone / "stories.jsonl").write_text((DATA / "coqa_stories.jsonl").read_text())
    out = tunewise("init", str(lone / "stories.jsonl"), "-o", "t.yaml")
    assert out.returncode == 2 and "looks like a corpus of documents" in out.stderr
