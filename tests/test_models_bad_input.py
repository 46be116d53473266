"""Bad input of several models and of preference tuning, through the CLI: one line on
stderr naming the task file and its line, exit code 2, no traceback, nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA

from tunewise.cli import app

HEAD = ("name: t\nkind: classification\ndata: {path: data.jsonl}\ntarget: 0.5\n"
        "split: {test: 20, dev: 10, seed: 0}\n")


def _write(tmp_path: Path, body: str) -> Path:
    lines = (DATA / "snips_intents.jsonl").read_text().splitlines()[:80]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    path = tmp_path / "task.yaml"
    path.write_text(HEAD + body)
    return path


@pytest.mark.parametrize(("body", "line", "needle"), [
    # a fine-tuning rung asked of a model that cannot train
    ("models:\n  large: {kind: openai, model: m, base_url: 'http://127.0.0.1:9',\n"
     "          rungs: [zero_shot, lora]}\n  small: {kind: dummy}\n", 7,
     "lora needs the model's weights (kind: local)"),
    # an unknown price entry: the valid names are listed
    ("models:\n  a: {kind: dummy, price: local-cpu}\n  b: {kind: dummy, price: nope}\n", 8,
     "unknown price entry 'nope'; valid names: "),
    # a model name used but not defined
    ("models:\n  a: {kind: dummy}\n  b: {kind: dummy}\ndistill: {teacher: c}\n", 9,
     "model 'c' is not defined; models: a, b"),
    # a dpo run without preference data (no data.rejected)
    ("backend: {kind: dummy}\nrungs: [zero_shot, dpo]\n", 7,
     "the dpo rung needs preference data: set data.rejected"),
])
def test_bad_input_is_one_line_naming_the_task_file_line(tmp_path: Path, runner, body: str,
                                                         line: int, needle: str) -> None:
    path = _write(tmp_path, body)
    out = runner.invoke(app, ["run", str(path)])
    assert out.exit_code == 2, out.output
    text = out.output.strip()
    assert "\n" not in text and "Traceback" not in text
    assert text.startswith(f"error: {path}:{line}: ") and needle in text, text
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_unknown_price_lists_every_valid_name(tmp_path: Path, runner) -> None:
    from tunewise.cost import price_table

    path = _write(tmp_path, "models:\n  a: {kind: dummy, price: nope}\n")
    out = runner.invoke(app, ["run", str(path)])
    assert out.exit_code == 2
    assert f"valid names: {', '.join(sorted(price_table()))}" in out.output
