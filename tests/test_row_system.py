"""Per-row system prompts (``data.system``) and advice that fits the task (issue 14,
items 7 and 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_rows

from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.ladder import plan_run
from tunewise.rungs.base import get_rung
from tunewise.store import Store
from tunewise.task import load_task, parse_task

SYSTEMS = ["You are Ada, the booking desk of Hotel Nord.\nAnswer with the intent only.  ",
           "Tu es l'assistant vocal de la maison."]


def _rows(n: int = 80) -> list[dict]:
    rows = read_rows("snips_intents.jsonl")[:n]
    return [{**r, "sys": SYSTEMS[i % 2]} for i, r in enumerate(rows)]


@pytest.fixture
def task(make_task):
    return load_task(make_task(_rows(), data={"path": "data.jsonl", "system": "sys"},
                               description="Find the intent.", split={"test": 20, "dev": 10,
                                                                      "seed": 0}))


@pytest.mark.parametrize("rung", ["zero_shot", "system_prompt", "few_shot_random",
                                  "few_shot_best"])
def test_every_rung_sends_the_rows_system_prompt_as_written(task, rung) -> None:
    plan = plan_run(task, Store(Path("store.db")))
    prepared = get_rung(rung).prepare(plan.ctx)
    for ex in plan.ctx.split.test[:4]:
        messages = prepared.prompt_for(ex)
        own = ex.extra["sys"]
        assert messages[0]["role"] == "system"
        if rung == "zero_shot":  # the row's prompt alone, byte for byte
            assert messages[0]["content"] == own
        else:  # the row's prompt first, then the rung's text after a blank line
            assert messages[0]["content"].startswith(own + "\n\nFind the intent.")
            assert "Possible answers:" in messages[0]["content"]
        assert messages[-1] == {"role": "user", "content": ex.input}


def test_the_lora_rungs_train_and_predict_with_it(task) -> None:
    from tunewise.rungs.lora import train_prompt

    plan = plan_run(task, Store(Path("store.db")))
    ex = plan.ctx.split.train[0]
    assert train_prompt(plan.ctx, ex)[0] == {"role": "system", "content": ex.extra["sys"]}


def test_show_prompt_shows_it(runner, task) -> None:
    res = runner.invoke(app, ["show-prompt", str(task.source), "system_prompt", "--example",
                              "1", "--messages"])
    assert res.exit_code == 0, res.output
    messages = json.loads(res.stdout)
    plan = plan_run(task, Store(Path("store.db")))
    assert messages[0]["content"].startswith(plan.ctx.split.test[1].extra["sys"] + "\n\n")
    assert "column 'sys'" in res.stderr


def test_a_row_without_the_column_names_its_line(make_task) -> None:
    rows = _rows(30)
    del rows[6]["sys"]
    task = load_task(make_task(rows, data={"path": "data.jsonl", "system": "sys"}))
    with pytest.raises(TunewiseError) as err:
        plan_run(task, Store(Path("store.db")))
    assert err.value.line == 7 and "'sys' (data.system) is missing" in str(err.value)


@pytest.mark.parametrize("key", ["system_prompt", "system", "prompt"])
def test_a_system_prompt_key_points_to_the_right_keys(key: str) -> None:
    text = f"name: t\nkind: qa\ndata: {{path: d.jsonl}}\ntarget: 0.5\n{key}: Be brief.\n"
    with pytest.raises(TunewiseError) as err:
        parse_task(text)
    message = str(err.value)
    assert f"unknown key '{key}'" in message and "'description'" in message
    assert err.value.line == 5
    if key != "prompt":
        assert "'data.system'" in message


# ---- split.group_by advice ------------------------------------------------------------------
def _advice(make_task, rows, **fields) -> list[str]:
    from tunewise.dataset import check_data, load_examples, make_split

    task = load_task(make_task(rows, split={"test": 40, "dev": 0, "seed": 0}, **fields))
    examples = load_examples(task)
    return check_data(examples, make_split(examples, task), task).notes


def test_group_by_is_never_advised_for_a_closed_answer_set(make_task) -> None:
    titles = ["Software Developer", "Registered Nurse", "Retail Salesperson", "Cashier",
              "Accountant", "Truck Driver"]
    rows = [{"input": f"job title {i}", "output": titles[i % 6]} for i in range(200)]
    notes = _advice(make_task, rows, kind="generation")
    assert not any("group_by" in n for n in notes)
    assert any("closed set" in n and "kind: classification" in n for n in notes)


def test_group_by_is_advised_when_many_distinct_open_answers_repeat(make_task) -> None:
    # records described by two sentences each: knn can find the twin and copy its answer
    rows = [{"input": f"{w} sentence about place {i // 2}",
             "output": f"name: Place {i // 2}, area: zone {i // 2 % 7}"}
            for i, w in zip(range(200), ["first", "second"] * 100, strict=True)]
    notes = _advice(make_task, rows, kind="extraction")
    assert any("split.group_by: output" in n for n in notes)
    # ... but not when no rung copies shots by similarity
    notes = _advice(make_task, rows, kind="extraction", rungs=["zero_shot", "system_prompt"])
    assert not any("group_by" in n for n in notes)
