"""CLI odds and ends (issue 16, part 8 and part 6's files): repeated rungs, serve's port,
odd paths, output locations, atomic writes, and runs that fail or are killed.

Each error is one line, exit 2, no traceback, and is found before any work is done.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunewise.cli import app
from tunewise.errors import TunewiseError
from tunewise.files import write_text_atomic
from tunewise.store import Store

VALID = Path(__file__).parent / "malformed" / "valid_baseline"


@pytest.fixture
def task(tmp_path: Path) -> Path:
    shutil.copytree(VALID, tmp_path / "task")
    return tmp_path / "task" / "task.yaml"


def _error(args: list[str], *expected: str) -> str:
    """The command fails as bad input: exit 2, one line naming the problem."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for text in expected:
        assert text in result.output, result.output
    return result.output


def _no_runs() -> None:
    assert Store(os.environ["TUNEWISE_DB"]).runs() == []


def test_repeated_rung_runs_once(task: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(task), "--rungs", "zero_shot,zero_shot",
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout[result.stdout.index("{\n"):])  # click 8.1 mixes stderr
    assert [r["name"] for r in data["rungs"]] == ["zero_shot"]
    # 3 test items, once, and 3 single requests timed for latency after a warm-up
    assert data["usage"]["rungs"]["zero_shot"]["calls_made"] == 3
    assert data["usage"]["calls_made"] == 3 + 3 + 1


def test_serve_port_out_of_range() -> None:
    out = _error(["serve", "--port", "99999"], "--port", "out of range (1-65535)")
    assert "web UI on" not in out and len(out.strip().splitlines()) == 1


def test_serve_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _error(["serve", "--port", str(port)], f"127.0.0.1:{port}", "in use")
    assert "web UI on" not in out and len(out.strip().splitlines()) == 1


def test_nul_byte_in_a_path_argument(task: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(task) + "\x00x"])
    assert result.exit_code == 2 and "internal error" not in result.output
    assert "null byte" in result.output.lower() or "NUL byte" in result.output
    from tunewise.cli import check_path

    with pytest.raises(TunewiseError, match="NUL byte"):
        check_path(Path("a\x00b"), "task")


def test_symlink_loop(tmp_path: Path, task: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    _error(["run", str(loop)], "loop.yaml", "symbolic link loop")
    _error(["run", str(task), "--out", str(loop)], "--out", "symbolic link loop")
    _error(["--store", str(loop), "runs"], "--store", "symbolic link loop")
    _no_runs()


def test_out_pointing_at_a_file_or_a_missing_parent(tmp_path: Path, task: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    _error(["run", str(task), "--out", str(afile)], "--out", "is a file")
    _error(["run", str(task), "--out", str(tmp_path / "no" / "such" / "dir")], "--out",
           "does not exist")
    assert afile.read_text() == "keep me"
    _no_runs()  # refused before the run started
    # A new folder in an existing one is fine, and so is an existing folder.
    for out in (tmp_path / "new", tmp_path / "new"):
        result = CliRunner().invoke(app, ["run", str(task), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert (out / "result.json").is_file()


def test_report_out_pointing_at_a_folder_or_a_missing_parent(tmp_path: Path,
                                                             task: Path) -> None:
    assert CliRunner().invoke(app, ["run", str(task)]).exit_code == 0
    _error(["report", "latest", "-o", str(tmp_path)], "--out", "is a folder")
    _error(["report", "latest", "-o", str(tmp_path / "missing" / "r.html")], "does not exist")
    target = tmp_path / "r.html"
    target.write_text("old")
    result = CliRunner().invoke(app, ["report", "latest", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text().lstrip().lower().startswith("<!doctype html")


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.json"
    write_text_atomic(target, '{"a": 1}')
    assert json.loads(target.read_text()) == {"a": 1}

    def full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TunewiseError, match="No space left on device") as err:
        write_text_atomic(target, '{"a": 2}')
    assert "result.json" in str(err.value)
    assert json.loads(target.read_text()) == {"a": 1}  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left


def test_result_and_report_are_written_through_the_atomic_helper(
        tmp_path: Path, task: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunewise.files as files

    written: list[str] = []
    real = files.write_text_atomic

    def spy(path: Path, text: str) -> None:
        written.append(Path(path).name)
        real(path, text)

    monkeypatch.setattr(files, "write_text_atomic", spy)
    import tunewise.ladder as ladder

    monkeypatch.setattr(ladder, "write_text_atomic", spy)
    assert CliRunner().invoke(app, ["run", str(task), "--out", str(tmp_path / "o")]
                              ).exit_code == 0
    assert CliRunner().invoke(app, ["report", "-o", str(tmp_path / "r.html")]).exit_code == 0
    assert written == ["result.json", "r.html"]


def test_result_json_on_a_full_disk_keeps_the_run(tmp_path: Path, task: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The run is stored before result.json is written: a full disk costs only the file."""
    def full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", full)
        result = CliRunner().invoke(app, ["run", str(task), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "internal error" not in result.output
    assert "result.json: cannot write this file (No space left on device)" in result.output
    run_id = Store(os.environ["TUNEWISE_DB"]).runs()[0]["id"]
    assert f"tunewise show {run_id} --json" in result.output
    assert list((tmp_path / "o").iterdir()) == []  # no empty or partial result.json
    shown = CliRunner().invoke(app, ["show", run_id])
    assert shown.exit_code == 0 and "support-intent" in shown.output, shown.output


def test_a_run_that_raises_is_marked_failed_with_the_reason(
        task: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunewise.ladder as ladder

    def boom(*_a, **_k):
        raise RuntimeError("the rung broke")

    monkeypatch.setattr(ladder, "run_rung", boom)
    result = CliRunner().invoke(app, ["run", str(task)])
    assert result.exit_code == 1 and "the rung broke" in result.output
    rows = Store(os.environ["TUNEWISE_DB"]).runs()
    assert [(r["status"], r["error"]) for r in rows] == [
        ("failed", "RuntimeError: the rung broke")]
    listed = CliRunner().invoke(app, ["runs"])
    assert "failed" in listed.output and "RuntimeError" in listed.output  # cells wrap
    shown = CliRunner().invoke(app, ["show"])
    assert shown.exit_code == 2 and "did not finish (RuntimeError: the rung broke)" in (
        shown.output)


def test_ctrl_c_marks_the_run_interrupted(task: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunewise.ladder as ladder

    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ladder, "run_rung", interrupt)
    result = CliRunner().invoke(app, ["run", str(task)])
    assert result.exit_code == 130
    rows = Store(os.environ["TUNEWISE_DB"]).runs()
    assert [(r["status"], r["error"]) for r in rows] == [("failed", "interrupted (Ctrl-C)")]


def test_a_killed_run_is_listed_as_failed_not_running(tmp_path: Path) -> None:
    """A process that created a run and died without finishing it (kill -9 looks the same
    to the store) leaves a run that `runs` shows as failed; a live process's run stays."""
    db = os.environ["TUNEWISE_DB"]
    code = ("import os, sys; from tunewise.store import Store\n"
            "Store(sys.argv[1]).create_run('killed', None, 'fp', {}, {})\n"
            "os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 9, proc.stderr
    store = Store(db)
    alive = store.create_run("alive", None, "fp2", {}, {})  # this process: still running
    result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 0
    rows = {r["task_name"]: r for r in Store(db).runs()}
    assert rows["killed"]["status"] == "failed"
    assert rows["killed"]["error"].startswith("interrupted: its process")
    assert rows["alive"]["status"] == "running" and rows["alive"]["id"] == alive
    assert "failed (interrupted" in result.output.replace("\n", " ")
