"""The freshness test: choosing edits, applying them, and counting answers that follow."""

from __future__ import annotations

import json

import pytest

from tunewise.cli import app
from tunewise.dataset import Document, Example
from tunewise.errors import TunewiseError
from tunewise.freshness import _shape, apply_edits, automatic_edits, rule_questions
from tunewise.task import FreshnessEdit

CORPUS = [
    Document("hours", "Reception opens at 8:30 a.m. on weekdays. The reception manager is "
                      "Priya Lanfield. Staff meet on Tuesday mornings."),
    Document("parking", "Patients may park for three hours. The parking warden is Oswin "
                        "Tremaine. The car park shuts at 9:15 p.m. every night."),
    Document("wifi", "The password is rainbarrel77 and sessions end after four hours. "
                     "The IT lead is Fenella Quist. Outages are posted on Friday afternoons."),
    Document("colours", "Kiosks are painted sky blue. The café is run by Lottie Brannigan."),
]


def ex(i: int, q: str, a: str, doc: str) -> Example:
    return Example(f"q{i}", q, a, {"source_id": doc})


QUESTIONS = [
    ex(1, "When does reception open?", "8:30 a.m.", "hours"),
    ex(2, "Who manages reception?", "Priya Lanfield", "hours"),
    ex(3, "How long can patients park?", "three hours", "parking"),
    ex(4, "What colour are the kiosks?", "sky blue", "colours"),
    ex(5, "Who is the IT lead?", "Fenella Quist", "wifi"),
    ex(6, "When are outages posted?", "Friday afternoons", "wifi"),
    ex(7, "Who is the parking warden?", "Oswin Tremaine", "parking"),
    ex(8, "Who runs the café?", "Lottie Brannigan", "colours"),
]


@pytest.mark.parametrize(("value", "matches", "rejects"), [
    ("8:30 a.m", "9:15 a.m", "9:15 p.m"),
    ("Priya Lanfield", "Oswin Tremaine", "sky blue"),
    ("three hours", "four hours", "many hours"),
    ("Tuesday mornings", "Friday mornings", "Friday afternoons"),
    ("room G14", "room B07", "room 14"),
])
def test_shape_keeps_the_form_of_a_fact(value, matches, rejects):
    pattern = _shape(value)
    assert pattern.fullmatch(matches) and not pattern.fullmatch(rejects)


def test_lowercase_phrases_are_not_facts():
    assert _shape("sky blue") is None
    assert _shape("feeling bright and eager") is None


def test_automatic_edits_swap_answers_for_same_shaped_values():
    edits, questions = automatic_edits(QUESTIONS, CORPUS, max_questions=20, seed=0)
    by_id = {q.example.id: q for q in questions}
    assert "q4" not in by_id  # "sky blue" is not a swappable fact
    # No other morning time in the corpus: the minutes are swapped, "a.m" is kept.
    assert by_id["q1"].old == "8:30 a.m" and by_id["q1"].new == "8:15 a.m"
    assert by_id["q2"].new in {"Oswin Tremaine", "Fenella Quist", "Lottie Brannigan"}
    assert by_id["q3"].old == "three hours" and by_id["q3"].new.endswith(" hours")
    assert by_id["q6"].new.endswith(" afternoons") and by_id["q6"].new != "Friday afternoons"
    for q in questions:  # the new value is not already in the edited document
        doc = next(d for d in CORPUS if d.id == q.doc)
        assert q.new.lower() not in doc.text.lower()
    assert automatic_edits(QUESTIONS, CORPUS, 20, seed=0) == (edits, questions)
    assert len(automatic_edits(QUESTIONS, CORPUS, 2, seed=0)[1]) == 2


def test_apply_edits_changes_only_the_named_document():
    edited = apply_edits(CORPUS, [FreshnessEdit(doc="hours", find="8:30 a.m",
                                                replace="7:45 a.m")])
    assert "7:45 a.m. on weekdays" in edited[0].text and "8:30" not in edited[0].text
    assert edited[1:] == CORPUS[1:]


def test_rules_find_affected_questions_and_reject_bad_rules():
    rule = FreshnessEdit(doc="parking", find="three hours", replace="two hours")
    [q] = rule_questions([rule], QUESTIONS, CORPUS, 10)
    assert (q.example.id, q.old, q.new) == ("q3", "three hours", "two hours")
    with pytest.raises(TunewiseError, match="'nowhere' is not in the corpus"):
        rule_questions([FreshnessEdit(doc="nowhere", find="a", replace="b")], QUESTIONS,
                       CORPUS, 10)
    with pytest.raises(TunewiseError, match="does not contain 'ten hours'"):
        rule_questions([FreshnessEdit(doc="parking", find="ten hours", replace="b")],
                       QUESTIONS, CORPUS, 10)


# ---- end to end on the dummy backend ----------------------------------------------------
def _clinic_like(tmp_path, make_task, **fields):
    """A QA task over CORPUS whose test split holds every question (train: one repeat)."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text}) + "\n" for d in CORPUS))
    rows = [{"input": q.input, "output": q.output, "source_id": q.extra["source_id"]}
            for q in QUESTIONS]
    rows.append({"input": "Who is the warden?", "output": "Oswin Tremaine",
                 "source_id": "parking"})
    return make_task(rows, kind="qa", corpus={"path": "corpus.jsonl"},
                     split={"test": len(QUESTIONS), "dev": 0, "seed": 0},
                     retrieval={"method": "bm25", "k": 2, "chunk_tokens": 24, "overlap": 4,
                                "shots": 0},
                     **fields)


def test_ladder_runs_freshness_and_rag_follows_the_edit(tmp_path, make_task):
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    path = _clinic_like(tmp_path, make_task, rungs=["zero_shot", "rag"],
                        freshness={"run": True})
    result = run_ladder(load_task(path), Store(), climb_all=True, out_dir=tmp_path / "out")
    fresh = json.loads((tmp_path / "out" / "result.json").read_text())["freshness"]
    assert fresh == result["freshness"]
    assert {"rung", "edited_questions", "followed", "followed_share", "kept_old_share",
            "examples"} <= set(fresh)
    assert fresh["rung"] == "rag" and fresh["edited_questions"] >= 5
    assert fresh["index"] == "built"  # the edited corpus has a new hash
    assert fresh["followed_share"] >= 0.8
    for row in fresh["examples"]:
        assert row["followed"] == (row["new"].lower() in row["after"].lower())


class Memorised:
    """A rung that learnt every answer by heart (what a fine-tuned model may do)."""

    name = "lora"

    def predict(self, prepared, examples, ctx):
        from tunewise.rungs.base import Prediction

        return [Prediction(e.id, f"It is {e.output}", 5, 3, 0.0, False) for e in examples]


def test_a_rung_that_memorised_the_facts_keeps_the_old_ones(tmp_path, make_task):
    from tunewise.freshness import run_freshness
    from tunewise.ladder import plan_run
    from tunewise.rungs.base import Prepared
    from tunewise.store import Store
    from tunewise.task import load_task

    plan = plan_run(load_task(_clinic_like(tmp_path, make_task)), Store(), rungs=["zero_shot"])
    fresh = run_freshness(plan.ctx, Memorised(), Prepared("lora", lambda e: []),
                          max_questions=5)
    assert fresh["rung"] == "lora" and fresh["knew_before"] == fresh["candidates"] >= 5
    assert fresh["edited_questions"] == 5 and fresh["edits"] <= 5
    assert fresh["followed"] == 0 and fresh["kept_old_share"] == 1.0


def test_only_known_off_counts_every_editable_question(tmp_path, make_task):
    from tunewise.freshness import run_freshness
    from tunewise.ladder import plan_run
    from tunewise.rungs.base import get_rung
    from tunewise.store import Store
    from tunewise.task import load_task

    path = _clinic_like(tmp_path, make_task, freshness={"only_known": False})
    plan = plan_run(load_task(path), Store(), rungs=["system_prompt"])
    rung = get_rung("system_prompt")
    fresh = run_freshness(plan.ctx, rung, rung.prepare(plan.ctx), max_questions=5)
    assert fresh["knew_before"] == 0 and fresh["edited_questions"] == 5
    assert fresh["followed"] == 0  # no retrieval: nothing to follow


def test_cli_freshness_prints_share_and_json(runner, tmp_path, make_task):
    path = _clinic_like(tmp_path, make_task,
                        freshness={"edits": [{"doc": "parking", "find": "three hours",
                                              "replace": "two hours"}]})
    res = runner.invoke(app, ["freshness", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["mode"] == "rules" and data["edited_questions"] == 1
    assert data["examples"][0]["new"] == "two hours"
    res = runner.invoke(app, ["freshness", str(path), "--edits", "3"])
    assert res.exit_code == 0, res.output
    assert "followed the edit" in res.stdout


def test_cli_freshness_needs_a_corpus(runner, make_task):
    path = make_task([{"input": f"q{i}", "output": "a"} for i in range(10)], kind="qa",
                     split={"test": 3, "dev": 0, "seed": 0})
    res = runner.invoke(app, ["freshness", str(path)])
    assert res.exit_code == 2
    assert "the task has no corpus" in res.output
