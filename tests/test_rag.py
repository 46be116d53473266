"""The rag rung: passages in the prompt, citations checked, retrieval metrics, index cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunewise.cli import app
from tunewise.ladder import run_ladder
from tunewise.store import Store
from tunewise.task import load_task

REPO = Path(__file__).resolve().parents[1]
CLINIC = REPO / "tunewise" / "demo" / "clinic" / "task.yaml"
COQA = REPO / "examples" / "coqa" / "task.yaml"

FACTS = [
    ("hours", "Reception opens at 8:30 a.m. on weekdays.", "When does reception open?",
     "8:30 a.m."),
    ("parking", "Visitors park in car park P2 behind the Atrium.",
     "Which car park do visitors use?", "car park P2"),
    ("wifi", "The guest wireless password is rainbarrel77.", "What is the guest wireless "
     "password?", "rainbarrel77"),
    ("pharmacy", "The pharmacy is in room G14 on the ground floor.", "Which room is the "
     "pharmacy in?", "room G14"),
    ("cafe", "The café is run by Lottie Brannigan and opens at 7 a.m.",
     "Who runs the café?", "Lottie Brannigan"),
    ("fire", "Fire alarms are tested every Tuesday at 10:15 a.m.",
     "When are fire alarms tested?", "every Tuesday at 10:15 a.m."),
]


def write_qa_task(tmp_path: Path, make_task, repeats: int = 4, **fields) -> Path:
    """A QA task whose answers are only in the corpus (dummy backend, BM25)."""
    corpus = tmp_path / "corpus.jsonl"
    filler = [(f"memo-{i}", f"Memo {i}: the committee discussed budget item {i} at length.")
              for i in range(8)]
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                              for i, t in [(f[0], f[1]) for f in FACTS] + filler))
    rows = []
    for r in range(repeats):
        for doc, _, q, a in FACTS:
            rows.append({"input": q if r == 0 else f"{q} (asked {r})", "output": a,
                         "source_id": doc})
    spec = {"kind": "qa", "corpus": {"path": "corpus.jsonl"},
            "split": {"test": 12, "dev": 0, "seed": 0},
            "retrieval": {"method": "bm25", "k": 2, "chunk_tokens": 32, "overlap": 8,
                          "shots": 0},
            "rungs": ["zero_shot", "rag"], **fields}
    return make_task(rows, **spec)


def test_rag_answers_from_passages_and_reports_retrieval(tmp_path, make_task):
    task = load_task(write_qa_task(tmp_path, make_task))
    result = run_ladder(task, Store(), climb_all=True, out_dir=tmp_path / "out")
    zero, rag = result["rungs"]
    assert rag["status"] == "done" and rag["family"] == "retrieval"
    assert rag["value"] > zero["value"] + 0.3
    info = rag["info"]
    assert info["index"] == "built" and info["docs"] == 14 and info["chunks"] >= 14
    assert info["recall@2"]["value"] == 1.0 and info["mrr@2"]["value"] == 1.0
    assert info["questions_with_source"] == 12 and "citation_accuracy" in info
    rows = Store().predictions(result["run_id"], "rag")
    details = json.loads(rows[0]["details_json"])
    assert details["gold_in_passages"] is True and 1 <= len(details["passages"]) <= 2

    again = run_ladder(task, Store(), climb_all=True, out_dir=tmp_path / "out2")
    info2 = again["rungs"][1]["info"]
    assert info2["index"] == "cache hit" and info2["index_dir"] == info["index_dir"]
    assert again["rungs"][1]["value"] == rag["value"] and again["rungs"][1]["calls_made"] == 0


def test_changing_one_document_rebuilds_the_index(tmp_path, make_task):
    path = write_qa_task(tmp_path, make_task)
    first = run_ladder(load_task(path), Store(), rungs=["rag"], out_dir=tmp_path / "a")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("rainbarrel77", "sunflower12"))
    second = run_ladder(load_task(path), Store(), rungs=["rag"], out_dir=tmp_path / "b")
    info1, info2 = first["rungs"][0]["info"], second["rungs"][0]["info"]
    assert info2["index"] == "built" and info2["index_dir"] != info1["index_dir"]
    rows = {r["input"]: r["prediction"] for r in Store().predictions(second["run_id"], "rag")}
    assert any("sunflower12" in p for p in rows.values())


def test_citations_are_parsed_stripped_and_checked(tmp_path, make_task):
    from tunewise.dataset import Example
    from tunewise.ladder import plan_run
    from tunewise.rungs.rag import Rag

    plan = plan_run(load_task(write_qa_task(tmp_path, make_task)), Store(), rungs=["rag"])
    rung = Rag()
    prepared = rung.prepare(plan.ctx)
    ex = Example("x", "Which room is the pharmacy in?", "room G14", {"source_id": "pharmacy"})
    content = prepared.prompt_for(ex)[-1]["content"]
    assert content.splitlines()[-1] == "Question: Which room is the pharmacy in?"
    [label] = [line[1] for line in content.splitlines() if "room G14" in line]
    assert content.rstrip().splitlines()[-3].startswith(f"[{label}]")  # best passage last

    class Citing:  # cites the passage with the answer, like a well-behaved model
        def generate(self, prompts, max_tokens, stop=None):
            from tunewise.backends.base import Completion

            return [Completion(f"room G14 [{label}].", 10, 3, 0.0) for _ in prompts]

    prepared.backend = Citing()
    [pred] = rung.predict(prepared, [ex], plan.ctx)
    assert pred.text == "room G14."
    assert pred.details["cited"] == ["pharmacy"] and pred.details["citation_correct"] is True
    assert prepared.info["citation_accuracy"]["value"] == 1.0


def test_worked_examples_come_from_train_and_cite_the_right_passage(tmp_path, make_task):
    from tunewise.ladder import plan_run
    from tunewise.rungs.rag import Rag

    path = write_qa_task(tmp_path, make_task, retrieval={"method": "bm25", "k": 2,
                                                         "chunk_tokens": 32, "shots": 2})
    plan = plan_run(load_task(path), Store(), rungs=["rag"])
    prepared = Rag().prepare(plan.ctx)
    assert prepared.info["shots"] == 2
    test_inputs = {e.input for e in plan.ctx.split.test}
    messages = prepared.prompt_for(plan.ctx.split.test[0])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                             "assistant", "user"]
    for user, reply in [(messages[1], messages[2]), (messages[3], messages[4])]:
        question = user["content"].splitlines()[-1].removeprefix("Question: ")
        assert question not in test_inputs
        answer, label = reply["content"].rsplit(" [", 1)
        passage = next(x for x in user["content"].splitlines()
                       if x.startswith(f"[{label.rstrip(']')}]"))
        assert answer in passage


def test_rag_requires_a_corpus(tmp_path, make_task):
    rows = [{"input": f"q{i}", "output": "a"} for i in range(20)]
    task = load_task(make_task(rows, kind="qa", rungs=["zero_shot", "rag"],
                               split={"test": 5, "dev": 0, "seed": 0}))
    result = run_ladder(task, Store(), climb_all=True, out_dir=tmp_path / "out")
    assert result["rungs"][1]["status"] == "skipped"
    assert result["rungs"][1]["reason"] == "the task has no corpus"


def test_show_prompt_prints_the_passages(runner, tmp_path, make_task):
    path = write_qa_task(tmp_path, make_task)
    res = runner.invoke(app, ["show-prompt", str(path), "rag", "--input",
                              "What is the guest wireless password?"])
    assert res.exit_code == 0, res.output
    assert "rainbarrel77" in res.stdout and "Question: What is the guest" in res.stdout


@pytest.mark.parametrize(("corpus", "expected"), [
    ('{"id": "a", "text": "fine"}\n{"id": "b", "title": "no text"}\n',
     "corpus.jsonl:2: text: field 'text' is missing"),
    ("", "corpus.jsonl: the corpus has no documents"),
    ("\n\n", "corpus.jsonl: the corpus has no documents"),
])
def test_bad_corpus_is_one_line_error_with_file_and_line(runner, tmp_path, make_task,
                                                         corpus, expected):
    path = write_qa_task(tmp_path, make_task)
    (tmp_path / "corpus.jsonl").write_text(corpus)
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and expected in lines[0], res.output
    assert "Traceback" not in res.output


def test_corpus_text_may_hold_unicode_line_separators(tmp_path, make_task):
    from tunewise.dataset import load_corpus

    path = write_qa_task(tmp_path, make_task)
    with (tmp_path / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "odd", "text": "one\u2028two"}, ensure_ascii=False) + "\n")
    docs = load_corpus(load_task(path))
    assert docs[-1].id == "odd" and docs[-1].text == "one\u2028two"


def test_retrieval_settings_are_validated(tmp_path, make_task, runner):
    path = write_qa_task(tmp_path, make_task,
                         retrieval={"method": "bm25", "chunk_tokens": 32, "overlap": 32})
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "overlap must be smaller than chunk_tokens" in res.output
    path = write_qa_task(tmp_path, make_task, retrieval={"method": "bm52"})
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2 and "retrieval.method" in res.output


def test_shipped_task_files_parse_and_start_with_their_command():
    for path in (CLINIC, COQA):
        text = path.read_text()
        assert text.startswith("# tunewise "), path
        task = load_task(path)
        assert task.corpus is not None and task.kind == "qa"
        assert yaml.safe_load(text)["retrieval"]["k"] * task.retrieval.chunk_tokens <= 512
    assert load_task(CLINIC).freshness.run is True


# ---- real model -------------------------------------------------------------------------
@pytest.mark.integration
def test_clinic_demo_rag_beats_zero_shot_and_follows_edits(tmp_path):
    task = load_task(CLINIC)
    result = run_ladder(task, Store(), climb_all=True, out_dir=tmp_path / "out",
                        rungs=["zero_shot", "rag"])
    zero, rag = result["rungs"]
    assert rag["value"] > zero["value"] + 0.2
    assert rag["vs_zero_shot"]["p_value"] < 0.05
    assert rag["info"]["recall@3"]["value"] >= 0.8
    fresh = result["freshness"]
    assert fresh["status"] == "done" and fresh["edited_questions"] >= 20
    # Measured 15 of 20 edited answers followed (0.75) with 2 retrieved shots; a model that
    # answers from its weights follows none, so most edits followed is the claim.
    assert fresh["followed_share"] >= 0.7, fresh
