"""Per-task prompt templates (issue 20): ``prompts:`` in task.yaml replaces a built-in.

The task's templates see the same variables as the built-ins, show-prompt prints what they
produce, the cache tells them apart, and a template mistake is one line naming the task
file's line, before any model call.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.prompts import build_messages
from tunewise.task import load_task

ROWS = [{"input": f"my order {i} is {'late' if i % 2 else 'broken'}",
         "output": "delivery" if i % 2 else "damage"} for i in range(60)]


def _task(make_task, prompts: dict | None = None, **fields) -> Path:
    if prompts is not None:
        fields["prompts"] = prompts
    return make_task(ROWS, split={"test": 10, "dev": 6, "seed": 0}, **fields)


def test_a_task_template_replaces_the_builtin_with_the_same_variables(make_task) -> None:
    task = load_task(_task(make_task, {
        "system": "Route tickets for {{ task.name }}. Labels: {{ labels | join('/') }}.",
        "user": "Ticket: {{ input }}",
    }))
    messages = build_messages(task, ["damage", "delivery"], "box crushed",
                              shots=[{"input": "late again", "output": "delivery"}])
    assert messages == [
        {"role": "system", "content": "Route tickets for t. Labels: damage/delivery."},
        {"role": "user", "content": "Ticket: late again"},
        {"role": "assistant", "content": "delivery"},
        {"role": "user", "content": "Ticket: box crushed"},
    ]
    # zero_shot and rag_user were not replaced: the built-ins still answer.
    assert build_messages(task, None, "hi", system=False) == [{"role": "user", "content": "hi"}]
    rag = build_messages(task, ["a", "b"], "q?", passages=[{"id": "1", "text": "P"}])
    assert rag[-1]["content"].endswith("[1] P\n\nQuestion: q?")


def test_a_task_without_prompts_gets_exactly_the_builtins(make_task) -> None:
    plain = load_task(_task(make_task))
    messages = build_messages(plain, ["damage", "delivery"], "box crushed")
    assert messages[0]["content"].startswith('You perform the task "t".')
    assert "Possible answers: damage, delivery." in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "box crushed"}


def test_show_prompt_prints_the_task_template_and_runs_use_it(make_task) -> None:
    path = _task(make_task, {"user": "TICKET >>> {{ input }} <<<"}, rungs=["system_prompt"])
    runner = CliRunner()
    res = runner.invoke(app, ["show-prompt", str(path), "system_prompt", "--input", "dented",
                              "--messages"])
    assert res.exit_code == 0, res.output
    messages = json.loads(res.stdout)
    assert messages[-1] == {"role": "user", "content": "TICKET >>> dented <<<"}

    res = runner.invoke(app, ["run", str(path), "--json"])
    assert res.exit_code == 0, res.output
    # A changed template is a different prompt: a second run with the built-in template
    # cannot be served from the first run's cache.
    def made(out: str) -> int:
        return json.loads(out)["usage"]["rungs"]["system_prompt"]["calls_made"]

    made_custom = made(res.stdout)
    plain = yaml.safe_load(path.read_text())
    del plain["prompts"]
    path.write_text(yaml.safe_dump(plain))
    res = runner.invoke(app, ["run", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert made(res.stdout) == made_custom > 0


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    path = tmp_path / "task.yaml"
    path.write_text(text, encoding="utf-8")
    return path


HEAD = """name: t
kind: classification
data: {path: data.jsonl}
target: 0.8
backend: {kind: dummy}
prompts:
"""


@pytest.mark.parametrize(("body", "line", "message"), [
    # Block scalar: line 9 of the file is the template's third line.
    ("  system: |-\n    Route the ticket.\n    Labels: {{ labels | join(', ') }}\n"
     "    {% if input %}unclosed\n", 10, "template syntax error: Unexpected end of template"),
    ("  user: 'Ticket: {{ input }'\n", 7, "template syntax error"),
    ("  user: |\n    Ticket: {{ input }}\n    From: {{ customer }}\n", 9,
     "template error: 'customer' is undefined (templates see task, labels, input, shots, "
     "passages, row_system)"),
    ("  system: \"{{ task.nmae }}\"\n", 7, "has no attribute 'nmae'"),
])
def test_a_template_mistake_is_one_line_naming_the_task_file_line(tmp_path, body, line,
                                                                  message) -> None:
    path = _write(tmp_path, HEAD + body)
    with pytest.raises(TunewiseError) as err:
        load_task(path)
    text = str(err.value)
    assert text.startswith(f"{path}:{line}: prompts."), text
    assert message in text
    assert "\n" not in text


def test_an_unknown_template_name_suggests_the_closest(tmp_path) -> None:
    path = _write(tmp_path, HEAD + "  sytem: hi\n")
    with pytest.raises(TunewiseError) as err:
        load_task(path)
    assert f"{path}:7:" in str(err.value) and "'system'" in str(err.value)


def test_the_cli_reports_a_template_error_as_one_line_exit_2(tmp_path) -> None:
    path = _write(tmp_path, HEAD + "  user: '{{ input'\n")
    res = CliRunner().invoke(app, ["show-prompt", str(path), "system_prompt"])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith(f"error: {path}:7: prompts.user: template syntax error")
    assert "Traceback" not in res.output
