"""User text (task names, labels, inputs) prints literally in every CLI output: never read as
Rich markup, never passed to the terminal as an escape sequence (issue 16, part 5).

The repros ../shared/repro/markup_name and markup_label are valid_baseline plus one defect;
the tests rebuild them from tests/malformed/valid_baseline so they run anywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.terminal import json_text, printable, safe

VALID = Path(__file__).parent / "malformed" / "valid_baseline"
ESC_NAME = "intent \x1b[2J\x1b]0;pwned\x07 x"  # clear screen + retitle the window


def _copy(tmp_path: Path, *, name: str | None = None, relabel: tuple[str, str] | None = None
          ) -> Path:
    """valid_baseline in ``tmp_path/task``, with another task name or one label renamed."""
    folder = tmp_path / "task"
    shutil.copytree(VALID, folder)
    task = folder / "task.yaml"
    if name is not None:
        spec = yaml.safe_load(task.read_text(encoding="utf-8"))
        spec["name"] = name
        task.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    if relabel is not None:
        data = folder / "data.jsonl"
        rows = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines()]
        for row in rows:
            if row["output"] == relabel[0]:
                row["output"] = relabel[1]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return task


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    assert "internal error" not in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    return result.output


def test_printable_and_safe() -> None:
    assert printable("a\x1b[31mb\x07\x9bc\u202ed\te\nf") == "a\\x1b[31mb\\x07\\x9bc\\u202ed\te\nf"
    from rich.console import Console

    # Rendered through Rich, in any surrounding markup, the text reads exactly as written
    # (escapes shown), trailing backslashes included (Textualize/rich#2993).
    for text in ("intent [/bold] x [red]y[/red]", "C:\\", "a\\\\", "\\[b]x", "\\",
                 "[/bold] \x1b]8;;x\x1b\\"):
        for template, tail in (("{}", ""), ("[dim]{}[/dim]", ""),
                               ("[bold]{}[/bold] and more", " and more")):
            console = Console(record=True, width=200)
            console.print(template.format(safe(text)))
            assert console.export_text() == printable(text) + tail + "\n", (text, template)


def test_markup_name_runs_and_lists(tmp_path: Path) -> None:
    """repro markup_name: the run, `runs` and `show` print the name as written."""
    task = _copy(tmp_path, name="intent [/bold] x")
    assert "intent [/bold] x: accuracy" in _ok("run", str(task))
    assert "intent [/bold] x" in _ok("runs")
    assert "intent [/bold] x: accuracy" in _ok("show")
    assert "Cost at" in _ok("cost", str(task))
    _ok("advise", "--task", str(task), "--examples", "300")


def test_markup_label_in_predict_and_show_prompt(tmp_path: Path) -> None:
    """repro markup_label: a label "[/x]returns" in predict and show-prompt."""
    task = _copy(tmp_path, relabel=("returns", "[/x]returns"))
    out = _ok("predict", str(task), "charged twice", "--rung", "zero_shot", "--top", "5")
    assert "[/x]returns" in out
    out = _ok("show-prompt", str(task), "zero_shot")
    assert "scored answers:" in out and "[/x]returns" in out
    assert "zero_shot" in _ok("run", str(task))


def test_escape_sequences_in_a_name_are_shown_not_obeyed(tmp_path: Path) -> None:
    task = _copy(tmp_path, name=ESC_NAME)
    shown = "intent \\x1b[2J\\x1b]0;pwned\\x07 x"
    assert shown in _ok("run", str(task))
    assert shown in _ok("runs")
    assert shown in _ok("show")


def test_escape_sequences_in_labels_and_inputs(tmp_path: Path) -> None:
    task = _copy(tmp_path, relabel=("returns", "ret\x1b[31murns"))
    assert "ret\\x1b[31murns" in _ok("predict", str(task), "x", "--rung", "zero_shot",
                                     "--top", "5")
    out = _ok("show-prompt", str(task), "zero_shot", "--input", "hi \x1b]0;t\x07 there")
    assert "hi \\x1b]0;t\\x07 there" in out
    assert "ret\\x1b[31murns" in out


def test_error_lines_show_escapes(tmp_path: Path) -> None:
    task = _copy(tmp_path)
    result = CliRunner().invoke(app, ["run", str(task), "--rungs", "zero\x1b[2J_shot"])
    assert result.exit_code == 2
    assert "zero\\x1b[2J_shot" in result.output and "\x1b" not in result.output


@pytest.mark.parametrize("name", ["[bold]x", "a\\", "[link=file:///etc]y[/link]"])
def test_odd_names_round_trip(tmp_path: Path, name: str) -> None:
    task = _copy(tmp_path, name=name)
    _ok("run", str(task))
    assert f" {name} " in _ok("runs")  # whole cell: a trailing backslash not doubled


def test_show_prompt_messages_stay_valid_json_without_raw_controls(tmp_path: Path) -> None:
    task = _copy(tmp_path)
    text = "caf\u00e9 \x1b[2J \x9b31m \u202e \x7f end"
    out = _ok("show-prompt", str(task), "zero_shot", "--messages", "--input", text)
    messages = json.loads(out[out.index("["):out.rindex("]") + 1])
    assert any(text in m["content"] for m in messages)  # the same text, round-tripped
    assert not {"\x9b", "\u202e", "\x7f"} & set(out)  # none of them raw on the terminal
    assert "café" in out  # non-ASCII stays readable
    assert json.loads(json_text({"a": "\x9b"})) == {"a": "\x9b"}
