"""Hostile and odd input (issue 16): alias bombs, deep nesting, labels as numbers and in other
Unicode forms, files that cannot be read, failing stores, and task loading in `serve`.

The one-line refusals of single files are cases in ``tests/malformed/`` (run by
test_malformed.py); this file holds what a folder cannot express: timings, runs that must
now succeed, simulated disks, and the web server's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest
from conftest import unprivileged
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.store import Store, StoreError

BASELINE = Path(__file__).parent / "malformed" / "valid_baseline"
REPO = Path(__file__).resolve().parents[1]


def _baseline(where: Path) -> Path:
    """A copy of the valid baseline task (dummy backend) in ``where``; returns task.yaml."""
    shutil.copytree(BASELINE, where, dirs_exist_ok=True)
    (where / "case.json").unlink()
    return where / "task.yaml"


def _append(task: Path, text: str) -> Path:
    task.write_text(task.read_text(encoding="utf-8") + text, encoding="utf-8")
    return task


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


BOMB = "".join(
    f"x{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9) if i else ','.join(['lol'] * 9)}]\n"
    for i in range(10))


# ---- hostile YAML ---------------------------------------------------------------------------

def test_alias_bomb_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    """In a subprocess with a deadline: before the fix the duplicate-key walk never ends."""
    task = _append(_baseline(tmp_path), BOMB)
    code = ("import time, sys; from tunewise.task import load_task\n"
            "t = time.perf_counter()\n"
            "try:\n    load_task(sys.argv[1])\nexcept Exception as e:\n    print(e)\n"
            "print(time.perf_counter() - t)")
    proc = subprocess.run([sys.executable, "-c", code, str(task)], capture_output=True,
                          text=True, timeout=30, cwd=REPO)
    message, seconds = proc.stdout.strip().splitlines()
    assert message.endswith("task.yaml:14: x5: YAML aliases expand to 597,871 values (more "
                            "than 100,000); a task file never needs that many")
    assert float(seconds) < 0.5


def test_alias_bomb_in_a_real_field_names_it(tmp_path: Path) -> None:
    """Under ``labels`` the expansion would reach pydantic: refused before, at its line."""
    from tunewise.task import load_task

    task = _append(_baseline(tmp_path), BOMB.replace("x9: &a9", "labels: &a9"))
    with pytest.raises(TunewiseError) as err:
        load_task(task)
    assert (err.value.line, err.value.field) == (14, "x5")


def test_small_aliases_still_work_and_duplicates_behind_them_are_found(tmp_path: Path) -> None:
    from tunewise.task import load_task

    task = _append(_baseline(tmp_path), 'description: &d "Route support mail"\n'
                                        "instructions: *d\n")
    assert load_task(task).instructions == "Route support mail"
    dup = _append(_baseline(tmp_path / "dup"),
                  "freshness: &f {run: false, seed: 1, seed: 2}\n")
    with pytest.raises(TunewiseError, match="key given twice") as err:
        load_task(dup)
    assert (err.value.line, err.value.field) == (9, "freshness.seed")


def test_nesting_at_the_limit_is_read_and_one_more_level_is_refused(tmp_path: Path) -> None:
    from tunewise.task import parse_task
    from tunewise.text import MAX_DEPTH

    text = _baseline(tmp_path).read_text(encoding="utf-8")
    ok = text + "instructions: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    with pytest.raises(TunewiseError, match="Input should be a valid string"):
        parse_task(ok, "task.yaml")  # deep enough to reach validation, not refused for depth
    deep = text + "instructions: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"
    with pytest.raises(TunewiseError, match=f"nested more than {MAX_DEPTH} levels deep"):
        parse_task(deep, "task.yaml")


def test_deep_corpus_row_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    task = _append(_baseline(tmp_path), "corpus: {path: corpus.jsonl}\n")
    (tmp_path / "corpus.jsonl").write_text(
        '{"id": "d1", "text": "Refunds take five days."}\n'
        '{"id": "d2", "text": "x", "meta": ' + "[" * 3000 + "]" * 3000 + "}\n",
        encoding="utf-8")
    code, out, err = _run("run", str(task))
    assert code == 2 and out == ""
    assert err.strip() == (f"error: {tmp_path}/corpus.jsonl:2: the value is nested more than "
                           "64 levels deep")


def test_lone_surrogate_in_the_task_file_names_its_line(tmp_path: Path) -> None:
    task = _append(_baseline(tmp_path), 'description: "charged \\ud800 twice"\n')
    code, _, err = _run("run", str(task))
    assert code == 2
    assert err.strip().endswith("task.yaml:9: a lone surrogate (an unpaired \\ud800-\\udfff "
                                "escape) is not text")


# ---- labels and text ------------------------------------------------------------------------

def _numeric_outputs(where: Path) -> Path:
    """The repro labels_1_vs_1p0: outputs 1, 1.0 and 2 as JSON numbers."""
    task = _baseline(where)
    rows = [json.loads(line) for line in (where / "data.jsonl").read_text().splitlines()]
    values = [1, 1.0, 2]
    for i, row in enumerate(rows):
        row["output"] = values[i % 3]
    (where / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return task


def test_one_and_one_point_zero_are_one_class(tmp_path: Path) -> None:
    task = _numeric_outputs(tmp_path)
    assert '"output": 1.0' in (tmp_path / "data.jsonl").read_text()
    code, out, err = _run("run", str(task), "--json")
    assert code == 0, err
    assert json.loads(out)["data"]["label_counts"] == {"1": 12, "2": 6}


def test_declared_numeric_labels_follow_the_same_rule(tmp_path: Path) -> None:
    from tunewise.dataset import load_examples
    from tunewise.task import load_task

    task = _append(_numeric_outputs(tmp_path), "labels: [1.0, 2]\n")
    spec = load_task(task)
    assert spec.labels == ["1", "2"]
    assert {e.output for e in load_examples(spec)} == {"1", "2"}
    from tunewise.text import canonical_number

    assert [canonical_number(x) for x in (1, 1.0, 1e0, 0.50, 2.5e-7, 1e20)] == [
        "1", "1", "1", "0.5", "2.5e-07", "100000000000000000000"]


def test_labels_and_outputs_are_nfc(tmp_path: Path) -> None:
    from tunewise.dataset import load_examples
    from tunewise.task import load_task

    nfd = unicodedata.normalize("NFD", "café")
    task = _baseline(tmp_path)
    data = (tmp_path / "data.jsonl").read_text(encoding="utf-8")
    (tmp_path / "data.jsonl").write_text(
        data.replace('"billing"', json.dumps(nfd)), encoding="utf-8")
    spec = load_task(_append(task, 'labels: ["café", shipping, returns]\n'))
    assert spec.labels[0] == "café" and len(spec.labels[0]) == 4
    outputs = {e.output for e in load_examples(spec)}
    assert outputs == {"café", "shipping", "returns"}  # the NFD spelling matched the label
    twice = _append(_baseline(tmp_path / "twice"),
                    f'labels: ["café", "{nfd}", shipping, returns]\n')
    with pytest.raises(TunewiseError, match="label 'café' is given twice"):
        load_task(twice)


@pytest.mark.parametrize("blank", ["   ", "\u200b", "\u00a0\u2060", "\ufeff"])
def test_invisible_labels_are_empty(tmp_path: Path, blank: str) -> None:
    from tunewise.task import load_task

    task = _append(_baseline(tmp_path), f"labels: [{json.dumps(blank)}, billing, returns]\n")
    with pytest.raises(TunewiseError, match="label 1 is empty"):
        load_task(task)


def test_blank_text_rule() -> None:
    from tunewise.text import is_blank

    assert all(map(is_blank, ["", " \t\n", "\u200b\u200c\u200d", "\u00a0", "\u3164", "\u2800"]))
    assert not any(map(is_blank, ["a", " x ", "\u200bé", "0", "-"]))


def test_a_csv_with_json_inside_and_jsonl_with_csv_inside_say_so(tmp_path: Path) -> None:
    from tunewise.dataset import read_rows

    (tmp_path / "a.csv").write_text('{"input": "x", "output": "y"}\n', encoding="utf-8")
    with pytest.raises(TunewiseError, match="looks like JSON, not CSV: name the file .jsonl"):
        read_rows(tmp_path / "a.csv")
    (tmp_path / "b.jsonl").write_text("input,output\nx,y\n", encoding="utf-8")
    with pytest.raises(TunewiseError, match=r"looks like CSV: name the file \.csv"):
        read_rows(tmp_path / "b.jsonl")


# ---- files and disks ------------------------------------------------------------------------

def test_a_csv_field_over_128_kib_loads(tmp_path: Path) -> None:
    """The repro csv_128k: a 140,000-character field, as a long corpus document is."""
    task = _baseline(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    rows[0]["input"] = " ".join(["x"] * 70_000)
    import csv

    with (tmp_path / "data.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["id", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    task.write_text(task.read_text().replace("data.jsonl", "data.csv"), encoding="utf-8")
    code, out, err = _run("run", str(task), "--json")
    assert code == 0, err
    from tunewise.dataset import load_examples
    from tunewise.task import load_task

    longest = max(load_examples(load_task(task)), key=lambda e: len(e.input))
    assert len(longest.input) == 139_999 and json.loads(out)["data"]["n_examples"] == 18


def test_io_error_reading_data_is_one_line(tmp_path: Path) -> None:
    """/proc/self/mem is a regular file whose read fails with EIO."""
    task = _baseline(tmp_path)
    task.write_text(task.read_text().replace("path: data.jsonl", "path: /proc/self/mem"))
    code, out, err = _run("run", str(task))
    assert code == 2 and out == ""
    line = err.strip()
    assert line.startswith("error: /proc/") and line.endswith(
        "/mem: cannot read the file: Input/output error (errno 5)")


@pytest.mark.parametrize("which", ["task.yaml", "data.jsonl", "corpus.jsonl"])
def test_permission_denied_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       which: str) -> None:
    """Simulated (tests run as root, whom chmod does not stop); see the non-root test."""
    task = _append(_baseline(tmp_path), "corpus: {path: corpus.jsonl}\n")
    (tmp_path / "corpus.jsonl").write_text('{"id": "d1", "text": "Refunds take 5 days."}\n')
    denied = tmp_path / which
    read_bytes = Path.read_bytes

    def guarded(path: Path) -> bytes:
        if path == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    code, out, err = _run("run", str(denied if which == "task.yaml" else task))
    assert code == 2 and out == ""
    assert err.strip() == f"error: {denied}: permission denied: this user may not read the file"


def test_permission_denied_for_real(tmp_path: Path) -> None:
    """A real chmod 000, in a child that cannot override file modes even as root."""
    task = _baseline(tmp_path)
    (tmp_path / "data.jsonl").chmod(0)
    proc = subprocess.run(unprivileged([sys.executable, "-m", "tunewise.cli", "run", str(task)]),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith(
        "data.jsonl: permission denied: this user may not read the file")


def test_a_symlink_loop_and_a_nul_byte_are_one_line(tmp_path: Path) -> None:
    from tunewise.task import load_task

    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    with pytest.raises(TunewiseError, match="Too many levels of symbolic links"):
        load_task(tmp_path / "loop.yaml")
    with pytest.raises(TunewiseError, match=r"a\\x00b.yaml: the path contains a NUL byte"):
        load_task(tmp_path / "a\0b.yaml")


def _fill(store: Store, n: int = 50) -> None:
    store.put_calls([{"key": f"k{i}", "backend_id": "b", "kind": "score",
                      "request_json": "x" * 4000, "response_json": "{}", "prompt_tokens": 1,
                      "completion_tokens": 0, "latency_s": 0.0, "created_at": 0.0}
                     for i in range(n)])


def test_disk_full_says_so_keeps_earlier_work_and_never_blames_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    run_id = store.create_run("t", None, "fp", {}, {})
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL
    with pytest.raises(StoreError) as err:
        _fill(store)
    assert err.value.sqlite.sqlite_errorname == "SQLITE_FULL"
    assert "the disk holding the store is full" in str(err.value)
    assert "move the file away" not in str(err.value)
    assert not store.db.in_transaction  # rolled back: the connection is usable
    assert store.run(run_id)["status"] == "running"  # the earlier transaction is kept


def test_a_lock_held_past_the_busy_timeout_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    store.db.execute("PRAGMA busy_timeout=100")
    try:
        with pytest.raises(StoreError) as err:
            store.create_run("t", None, "fp", {}, {})
    finally:
        holder.execute("ROLLBACK")
    assert err.value.sqlite.sqlite_errorname == "SQLITE_BUSY"
    assert "locked by another process for over 30 s" in str(err.value)
    assert "the store itself is fine" in str(err.value)
    store.create_run("t", None, "fp", {}, {})  # and it works once the lock is gone


def test_a_read_only_store_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.db.execute("PRAGMA query_only=ON")  # SQLite refuses writes: SQLITE_READONLY
    with pytest.raises(StoreError) as err:
        store.create_run("t", None, "fp", {}, {})
    assert str(err.value) == (
        f"{tmp_path}/s.db: the store is read-only (this user may not write the file or its "
        "folder); fix the permissions, or point --store / TUNEWISE_DB at a writable path")


def test_a_read_only_store_file_for_real(tmp_path: Path) -> None:
    """Real modes, in a child that cannot override them even as root."""
    Store(tmp_path / "s.db").close()
    for p in tmp_path.iterdir():
        p.chmod(0o444)
    tmp_path.chmod(0o555)
    code = ("import sys\nfrom tunewise.errors import TunewiseError\n"
            "from tunewise.store import Store\n"
            "try:\n    Store(sys.argv[1]).create_run('t', None, 'fp', {}, {})\n"
            "except TunewiseError as err:\n    print(err)\n    sys.exit(2)\n")
    try:
        proc = subprocess.run(unprivileged([sys.executable, "-c", code, str(tmp_path / "s.db")]),
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        tmp_path.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert re.search("read-only|cannot open the store", proc.stdout), proc.stdout


def test_store_error_mid_run_is_one_line_exit_2(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while saving a rung: one line, exit 2, the calls made so far are kept."""
    from tunewise.store import store_error

    task = _baseline(tmp_path)

    def full(self: Store, *args: object, **kwargs: object) -> None:
        raise store_error(sqlite3.OperationalError("database or disk is full"), self.path)

    monkeypatch.setattr(Store, "save_rung", full)
    code, out, err = _run("run", str(task))
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        f"error: {os.environ['TUNEWISE_DB']}: the disk holding the store is full; free some "
        "space (or point --store / TUNEWISE_DB at another disk) and run again: finished work "
        "is kept")
    with sqlite3.connect(os.environ["TUNEWISE_DB"]) as db:
        # the 3 test items and the 3 single requests timed for latency (+ a warm-up)
        assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 3 + 3 + 1


def test_a_damaged_store_is_still_called_so(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable tunewise store .* move the file away"):
        Store(tmp_path / "s.db")


def test_stored_results_and_result_json_are_strict_json(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    run_id = store.create_run("t", None, "fp", {}, {})
    with pytest.raises(ValueError, match="not JSON compliant"):
        store.finish_run(run_id, {"usd": float("inf")})
    task = _baseline(tmp_path / "run")
    code, _, err = _run("run", str(task), "--out", str(tmp_path / "out"))
    assert code == 0, err

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in result.json")

    json.loads((tmp_path / "out" / "result.json").read_text(), parse_constant=refuse)


@pytest.mark.parametrize("field,value", [("split.seed", 2**32), ("lora.seed", -3),
                                         ("freshness.seed", -1), ("latency_ms", ".nan"),
                                         ("volume.requests_per_day", "true")])
def test_odd_numbers_in_the_task_file(tmp_path: Path, field: str, value: object) -> None:
    from tunewise.task import load_task

    section, _, key = field.rpartition(".")
    line = f"{section}: {{{key}: {value}}}\n" if section else f"{key}: {value}\n"
    task = _baseline(tmp_path)
    text = task.read_text().replace("split: {test: 3, dev: 3, seed: 0}\n", "")
    task.write_text(text + ("split: {test: 3, dev: 3}\n" if section != "split" else ""))
    if section == "split":
        line = f"split: {{test: 3, dev: 3, seed: {value}}}\n"
    with pytest.raises(TunewiseError) as err:
        load_task(_append(task, line))
    assert err.value.field == field and err.value.line == len(task.read_text().splitlines())


# ---- serve: loading a task file off the event loop ----------------------------------------

def test_a_slow_task_load_does_not_stall_other_requests(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """While one POST /start is stuck loading its task file, GET /api/runs is served."""
    import httpx

    import tunewise.task
    from tunewise.web.app import create_app

    served = threading.Event()

    def slow_load(path: object) -> None:
        served.wait(10)  # blocks this thread until the other request got its answer
        raise TunewiseError("task file not found", path=str(path))

    monkeypatch.setattr(tunewise.task, "load_task", slow_load)
    app = create_app(os.environ["TUNEWISE_DB"])
    done: list[str] = []

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            async def start() -> None:
                res = await client.post("/start", data={"task_path": "/slow/task.yaml"})
                assert res.status_code == 400 and "task file not found" in res.text
                done.append("start")

            async def runs() -> None:
                await asyncio.sleep(0.2)  # let the POST begin first
                res = await client.get("/api/runs")
                assert res.status_code == 200 and res.json() == []
                done.append("runs")
                served.set()

            started = time.perf_counter()
            await asyncio.gather(start(), runs())
            assert time.perf_counter() - started < 5

    asyncio.run(main())
    assert done == ["runs", "start"]


def test_a_price_file_gets_the_task_files_guards(tmp_path: Path) -> None:
    from tunewise.cost import resolve_price
    from tunewise.task import load_task

    task = _append(_baseline(tmp_path), "cost: {prices_file: prices.yaml, price: mine}\n")
    prices = tmp_path / "prices.yaml"
    prices.write_text("entries:\n  mine: {input_per_1m: " + "[" * 500 + "]" * 500 + "}\n")
    with pytest.raises(TunewiseError, match="prices.yaml:2: entries: nested more than 64 lev"):
        resolve_price(load_task(task))
    prices.write_text("entries:\n  mine: {input_per_1m: .inf, output_per_1m: 1}\n")
    with pytest.raises(TunewiseError, match="input_per_1m: Input should be a finite number"):
        resolve_price(load_task(task))
    prices.unlink()
    with pytest.raises(TunewiseError) as err:
        resolve_price(load_task(task))
    assert str(err.value) == f"{prices}: cost.prices_file: price file not found"


def test_a_yaml_boolean_label_asks_for_quotes(tmp_path: Path) -> None:
    from tunewise.task import load_task

    task = _append(_baseline(tmp_path), "labels: [billing, no, returns]\n")
    with pytest.raises(TunewiseError) as err:
        load_task(task)
    assert str(err.value) == (f"{task}:9: labels: label 2 is the YAML boolean false "
                              "(yes/no/on/off/true/false unquoted): quote it")
