"""End to end on the dummy backend: run, cache, predict, show-prompt, errors, leakage."""

from __future__ import annotations

import json

from conftest import DATA, e2e_rows

from tunewise.cli import app
from tunewise.store import Store


def _run(runner, *args):
    result = runner.invoke(app, list(args))
    return result


def test_run_writes_table_and_result_json(runner, make_task, tmp_path):
    task = make_task(limit=200, rungs=["zero_shot", "system_prompt"])
    res = _run(runner, "run", str(task), "--all", "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    names = [r["name"] for r in data["rungs"]]
    assert names == ["zero_shot", "system_prompt"]
    for r in data["rungs"]:
        assert r["status"] == "done"
        assert 0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1
        # The table shows the same numbers result.json holds.
        assert f"{r['value']:.3f}" in res.output
    assert data["split"] == {"seed": 0, "train": 140, "dev": 20, "test": 40}


def test_second_run_makes_zero_calls_and_same_numbers(runner, make_task, tmp_path):
    task = make_task(limit=200, rungs=["zero_shot", "system_prompt", "few_shot_random"])
    first = _run(runner, "run", str(task), "--all", "--json", "--out", str(tmp_path / "a"))
    second = _run(runner, "run", str(task), "--all", "--json", "--out", str(tmp_path / "b"))
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    # 3 rungs x 40 test items, plus per rung 20 single requests timed after 1 warm-up
    calls = 120 + 3 * 21
    assert sum(u["calls_made"] for u in a["usage"]["rungs"].values()) == calls
    assert a["usage"]["calls_made"] == calls and a["usage"]["calls"] == calls
    assert a["usage"]["rungs"]["latency:zero_shot"]["calls_made"] == 21
    assert sum(u["calls_made"] for u in b["usage"]["rungs"].values()) == 0
    assert sum(u["cache_hits"] for u in b["usage"]["rungs"].values()) == calls
    assert b["usage"]["cache_hits"] == calls and b["usage"]["calls"] == calls
    # fresh timings the first time; the cached re-run replays them and says so
    for first, again in zip(a["rungs"], b["rungs"], strict=True):
        assert first["latency"]["replayed"] is False and first["latency"]["n"] == 20
        assert again["latency"]["replayed"] is True
        assert again["latency"]["single_p95_ms"] == first["latency"]["single_p95_ms"]
        assert first["latency_ms"]["p95"] == first["latency"]["single_p95_ms"]
        assert first["throughput_items_s"] > 0
    def numbers(r):
        return [(x["name"], x["value"], x["ci_low"], x["latency_ms"]) for x in r["rungs"]]

    assert numbers(a) == numbers(b)


def test_predict_gives_top3_probabilities_summing_to_one(runner, make_task):
    task = make_task(limit=200)
    res = _run(runner, "predict", str(task), "play some jazz on my playlist", "--json")
    assert res.exit_code == 0, res.output
    probs = json.loads(res.stdout)["probs"]
    assert len(probs) == 7
    assert abs(sum(probs.values()) - 1) < 1e-9
    res = _run(runner, "predict", str(task), "play some jazz on my playlist")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3
    shown = [float(ln.split()[-1]) for ln in lines]
    assert shown == sorted(shown, reverse=True)


def test_show_prompt_prints_what_the_model_sees(runner, make_task):
    task = make_task(limit=200, description="Sort utterances by intent.")
    res = _run(runner, "show-prompt", str(task), "system_prompt", "--input", "wake me at 7")
    assert res.exit_code == 0, res.output
    assert "Sort utterances by intent." in res.stdout
    assert "wake me at 7" in res.stdout
    res = _run(runner, "show-prompt", str(task), "zero_shot", "--input", "wake me at 7")
    assert "Sort utterances" not in res.stdout


def test_leakage_is_reported_before_running(runner, make_task, tmp_path):
    rows = [json.loads(x) for x in
            (DATA / "snips_intents.jsonl").read_text()
            .splitlines()[:150]]
    rows += [dict(r) for r in rows[:60]]  # every one of these inputs now appears twice
    task = make_task(rows, rungs=["zero_shot"])
    res = _run(runner, "run", str(task), "--out", str(tmp_path / "o"))
    assert res.exit_code == 0
    assert "leakage:" in res.output
    data = json.loads((tmp_path / "o" / "result.json").read_text())
    assert data["data"]["leakage_exact"] > 0


def test_fine_tuning_blocked_under_100_examples(runner, make_task, tmp_path):
    task = make_task(limit=120, rungs=["zero_shot", "lora"])
    res = _run(runner, "run", str(task), "--json", "--out", str(tmp_path / "o"))
    data = json.loads(res.stdout)
    lora = next(r for r in data["rungs"] if r["name"] == "lora")
    assert lora["status"] == "skipped"
    assert "fine-tuning needs at least 100" in lora["reason"]


def test_rung_rows_are_stored(runner, make_task, tmp_path):
    task = make_task(limit=200, rungs=["zero_shot"])
    res = _run(runner, "run", str(task), "--json", "--out", str(tmp_path / "o"))
    run_id = json.loads(res.stdout)["run_id"]
    rows = Store().predictions(run_id, "zero_shot")
    assert len(rows) == 40
    assert all(json.loads(r["details_json"])["probs"] for r in rows)


def test_bad_inputs_give_one_line_errors(runner, make_task, tmp_path):
    good = make_task(limit=200)
    cases = []
    bad = tmp_path / "unknown.yaml"
    bad.write_text(good.read_text() + "tagret: 0.9\n")
    cases.append((bad, "unknown key 'tagret' (did you mean 'target'?)"))
    missing = tmp_path / "missing.yaml"
    missing.write_text(good.read_text().replace("data.jsonl", "nope.jsonl"))
    cases.append((missing, "nope.jsonl: file not found"))
    (tmp_path / "broken.jsonl").write_text('{"input": "a", "output": "b"}\n{"input": "c",\n')
    broken = tmp_path / "broken.yaml"
    broken.write_text(good.read_text().replace("data.jsonl", "broken.jsonl"))
    cases.append((broken, "broken.jsonl:2: not valid JSON"))
    (tmp_path / "nolabel.jsonl").write_text('{"input": "a", "output": "b"}\n{"input": "c"}\n')
    nolabel = tmp_path / "nolabel.yaml"
    nolabel.write_text(good.read_text().replace("data.jsonl", "nolabel.jsonl"))
    cases.append((nolabel, "nolabel.jsonl:2: output: field 'output' is missing"))
    for path, expected in cases:
        res = _run(runner, "run", str(path))
        assert res.exit_code == 2, (path, res.output)
        assert expected in res.stderr, (expected, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
        assert "Traceback" not in res.stderr


def test_group_split_keeps_every_answer_on_one_side(make_task):
    """split.group_by: output puts all sentences of one record in one part, seeded."""
    from tunewise.dataset import check_data, load_examples, make_split
    from tunewise.task import load_task

    task = load_task(make_task(e2e_rows(300), kind="extraction",
                               split={"test": 30, "dev": 20, "seed": 3, "group_by": "output"}))
    examples = load_examples(task)
    split = make_split(examples, task)
    sides = [{e.output for e in part} for part in (split.test, split.dev, split.train)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(split.test) >= 30 and len(split.dev) >= 20
    assert len(split.test) + len(split.dev) + len(split.train) == len(examples)
    assert [e.id for e in make_split(examples, task).test] == [e.id for e in split.test]
    # the plain split of the same data shares answers, and the data check says so
    plain = load_task(make_task(e2e_rows(300), kind="extraction",
                                split={"test": 30, "dev": 20, "seed": 3}))
    report = check_data(examples, make_split(examples, plain), plain)
    assert any("test answers also occur as training answers" in n for n in report.notes)
    assert not any("training answers" in n for n in check_data(examples, split, task).notes)


def test_group_split_on_a_missing_column_names_the_field(runner, make_task):
    path = make_task(e2e_rows(300), kind="extraction",
                     split={"test": 30, "dev": 20, "seed": 0, "group_by": "restaurant"})
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.startswith(f"error: {path}:") and "split.group_by" in line
    assert "has no field 'restaurant'" in line
