"""`tunewise advise`: the flowchart by flags, in a real terminal, and combined with a run."""

from __future__ import annotations

import json
import os
import sys

import pexpect
import pytest
from cli_helpers import tunewise

from tunewise.advisor import Answers, advise
from tunewise.cli import app
from tunewise.errors import TunewiseError


def ask(runner, *flags: str) -> dict:
    out = runner.invoke(app, ["advise", *flags, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_few_examples_and_daily_facts_give_rag_and_no_fine_tuning(runner):
    got = ask(runner, "--examples", "50", "--knowledge-changes", "daily")
    assert got["recommendation"] == "rag"
    assert "do not fine-tune" in got["headline"]
    assert any("50 examples is under 100" in r for r in got["reasons"])
    assert any("change daily" in r for r in got["reasons"])
    assert any(a.startswith("fine-tuning: 50 examples is too few") for a in got["avoid"])


def test_many_examples_strict_format_high_volume_give_fine_tuning(runner):
    got = ask(runner, "--examples", "1000", "--strict-format", "--volume", "50000")
    assert got["recommendation"] == "fine_tune"
    assert any("1,000 examples clears the 200-example line" in r for r in got["reasons"])
    assert any("strict output format" in r for r in got["reasons"])
    assert any("50,000 requests/day" in r for r in got["reasons"])
    # ... with retrieval when knowledge is needed too
    both = ask(runner, "--examples", "1000", "--strict-format", "--volume", "50000",
               "--problem", "both")
    assert both["recommendation"] == "fine_tune+rag"
    assert "retrieval (RAG)" in both["approach"]
    assert any("facts come from retrieval" in a for a in both["avoid"])


def test_never_tried_prompting_starts_with_system_prompt_and_few_shot(runner):
    got = ask(runner, "--no-tried-prompting", "--examples", "1000", "--strict-format")
    assert got["recommendation"] == "prompting"
    assert got["approach"] == ["system prompt", "few-shot examples"]
    assert "system prompt" in got["headline"] and "few-shot" in got["headline"]
    assert "not tried prompting" in got["reasons"][0]
    text = runner.invoke(app, ["advise", "--no-tried-prompting"]).output
    assert "Recommendation: Start with a system prompt, then add few-shot examples." in text


def test_min_examples_threshold_is_a_setting(runner):
    loose = ask(runner, "--examples", "300", "--problem", "behaviour")
    strict = ask(runner, "--examples", "300", "--problem", "behaviour", "--min-examples", "500")
    assert loose["recommendation"] == "fine_tune"
    assert any("stricter rule of thumb asks for 500+" in r for r in loose["reasons"])
    assert strict["recommendation"] == "prompting"
    assert any("300 < 500" in a for a in strict["avoid"])


def test_bad_answers_are_one_line_errors():
    out = tunewise("advise", "--problem", "facts")
    assert out.returncode == 2 and "--problem must be one of knowledge" in out.stderr
    # no flags and no terminal: say how to answer instead of hanging on a prompt
    out = tunewise("advise")
    assert out.returncode == 2 and "no answers given" in out.stderr
    with pytest.raises(TunewiseError):
        advise(Answers(examples=-1))


def test_measurements_overrule_the_answers(make_task, runner):
    task = make_task(limit=200, target=0.3, rungs=["zero_shot", "system_prompt"])
    run = runner.invoke(app, ["run", str(task), "--all", "-o", "out"])
    assert run.exit_code == 0, run.output
    got = ask(runner, "--examples", "1000", "--strict-format", "--task", str(task))
    # the answers alone say fine-tune; the run shows prompting already meets the target
    assert got["recommendation"] == "prompting"
    assert got["measured"][0].startswith("run ") and "of the target 0.3" in got["measured"][0]
    assert any(r.startswith("measured:") for r in got["reasons"])
    assert any(a.startswith("fine-tune:") for a in got["avoid"])


def test_interactive_advise_in_a_real_terminal(tmp_path):
    env = dict(os.environ, NO_COLOR="1", TERM="dumb", COLUMNS="200")
    child = pexpect.spawn(sys.executable, ["-m", "tunewise.cli", "advise"], env=env,
                          encoding="utf-8", timeout=60, cwd=str(tmp_path),
                          dimensions=(50, 200))
    try:
        for question, answer in [
            ("tried a system prompt", "y"), ("What is the model missing", "both"),
            ("How often do the facts", "weekly"), ("cite their sources", "y"),
            ("strict format", "y"), ("How many good labelled examples", "lots"),
            ("non-negative number", None), ("How many good labelled examples", "800"),
            ("Requests per day", "20000"), ("latency", ""), ("budget", "300"),
        ]:
            child.expect(question)
            if answer is not None:
                child.sendline(answer)
        child.expect("Recommendation:")
        child.expect(pexpect.EOF)
        transcript = " ".join(child.before.split())  # unwrap the terminal's line breaks
    finally:
        child.close()
    assert child.exitstatus == 0
    assert transcript.startswith("Fine-tune for the behaviour and use retrieval (RAG) for the "
                                 "knowledge. (fine_tune+rag)")
    assert "800 examples clears the 200-example line" in transcript
    assert "allows about $0.000500 per request" in transcript


def test_measured_shortfall_supports_moving_past_prompting():
    run = {"run_id": "r1", "task": {"target": 0.8, "metric": "accuracy"},
           "split": {"train": 400},
           "rungs": [{"name": "few_shot_knn", "family": "prompting", "status": "done",
                      "value": 0.4}],
           "verdict": {"rule": "none_meets", "rung": "few_shot_knn",
                       "diagnosis": {"gap": "behaviour"}}}
    got = advise(Answers(), run)
    assert got.recommendation == "fine_tune"  # gap and 400 examples both come from the run
    assert "reaches only 50% of the target, under the 90% line" in got.reasons[0]
    assert "the run's diagnosis points to a behaviour gap" in got.measured
