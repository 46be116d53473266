"""Help, usage errors and Exit codes reach the user as typer/click show them, never as an
"internal error" (issue 16: typer 0.2x raises its own copies of click's exceptions).

Each case of ../shared/repro/README.md "CLI usage errors" runs through CliRunner and through
the real entry point in a subprocess, and must show click's message with click's exit code.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import typer
from cli_helpers import tunewise
from typer.testing import CliRunner

from tunewise.cli import app, is_framework_signal

VALID = Path(__file__).parent / "malformed" / "valid_baseline"

# (argv, exit code, text that must be in the output): the README's repro list.
USAGE_CASES = [
    (["run", "--help"], 0, "Climb the ladder"),
    (["--help"], 0, "Measure whether your LLM task"),
    (["cache", "--help"], 0, "stats"),
    (["run", "TASK", "--bogus"], 2, "No such option: --bogus"),
    (["predict", "TASK"], 2, "Missing argument"),
    (["runs", "--limit", "abc"], 2, "Invalid value for '--limit'"),
    (["cost", "TASK", "--volume", "-5"], 2, "Invalid value for '--volume'"),
    (["no-such-command"], 2, "No such command"),
]


def _argv(argv: list[str]) -> list[str]:
    return [str(VALID / "task.yaml") if a == "TASK" else a for a in argv]


def _no_args_is_help_code() -> int:
    """What this typer/click does for a group called without a command: 0 up to click 8.1,
    2 (NoArgsIsHelpError) since; tunewise must not change it either way."""
    probe = typer.Typer(no_args_is_help=True)
    probe.command("a")(lambda: None)
    probe.command("b")(lambda: None)
    return CliRunner().invoke(probe, []).exit_code


@pytest.mark.parametrize(("argv", "code", "text"), USAGE_CASES,
                         ids=[" ".join(c[0]) for c in USAGE_CASES])
def test_usage_through_cli_runner(argv: list[str], code: int, text: str) -> None:
    result = CliRunner().invoke(app, _argv(argv))
    assert "internal error" not in result.output
    assert result.exit_code == code, result.output
    assert text in result.output


@pytest.mark.parametrize(("argv", "code", "text"), USAGE_CASES,
                         ids=[" ".join(c[0]) for c in USAGE_CASES])
def test_usage_through_the_entry_point(argv: list[str], code: int, text: str) -> None:
    proc = tunewise(*_argv(argv))
    output = proc.stdout + proc.stderr
    assert "internal error" not in output and "Traceback" not in output
    assert proc.returncode == code, output
    assert text in output
    if code == 2:  # click's usage hint, on stderr
        assert "Try '" in proc.stderr and "--help" in proc.stderr


def test_group_without_a_command_shows_its_help() -> None:
    expected = _no_args_is_help_code()
    for argv in (["cache"], []):
        result = CliRunner().invoke(app, argv)
        assert "internal error" not in result.output
        assert result.exit_code == expected
        assert ("clear" in result.output) if argv else ("show-prompt" in result.output)
    proc = tunewise("cache")
    assert proc.returncode == expected and "internal error" not in proc.stderr
    assert "stats" in proc.stdout + proc.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_doctor_with_an_unreachable_server_exits_1_without_internal_error(
        make_task, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H1_TEST_CRED", "tw-cli-usage-key-123456")
    rows = [{"input": f"request {i}", "output": "ab"[i % 2]} for i in range(80)]
    task = make_task(rows, backend={"kind": "openai", "model": "m", "max_retries": 0,
                                        "base_url": f"http://127.0.0.1:{_closed_port()}/v1",
                                        "api_key_env": "H1_TEST_CRED"})
    result = CliRunner().invoke(app, ["doctor", "--task", str(task)])
    assert result.exit_code == 1, result.output
    assert "internal error" not in result.output
    assert "not reachable" in result.output
    proc = tunewise("doctor", "--task", str(task))
    assert proc.returncode == 1 and "internal error" not in proc.stdout + proc.stderr


def test_exit_codes_raised_by_commands_pass_through() -> None:
    """typer.Exit(n) inside a command keeps n, whichever click typer ships."""
    def fail(code: int) -> None:
        raise typer.Exit(code)

    from tunewise.cli import _Group

    probe_app = typer.Typer(cls=_Group)
    probe_app.command("fail")(fail)
    probe_app.command("other")(lambda: None)
    assert CliRunner().invoke(probe_app, ["fail", "3"]).exit_code == 3
    assert CliRunner().invoke(probe_app, ["fail", "0"]).exit_code == 0


def test_signal_classification_is_by_origin_and_exit_code() -> None:
    """A class typer or click may add later (their module, an int exit_code) is a signal;
    an ordinary exception, or one of ours with an exit_code, is a bug."""
    future = type("UsageProblem", (Exception,), {"exit_code": 2, "__module__": "typer._new"})
    ours = type("Odd", (Exception,), {"exit_code": 2, "__module__": "tunewise.x"})
    assert is_framework_signal(future("x"))
    assert not is_framework_signal(ours("x"))
    assert not is_framework_signal(RuntimeError("boom"))
    assert not is_framework_signal(ValueError("bad"))
    assert is_framework_signal(typer.Exit(0)) and is_framework_signal(typer.Abort())
    assert is_framework_signal(typer.BadParameter("x"))


def test_a_real_bug_is_still_one_masked_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classification must not let genuine bugs through as tracebacks."""
    import tunewise.cli as cli

    def broken(*_a, **_k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "_store", broken)
    result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 1
    assert "internal error: ZeroDivisionError: division by zero" in result.output
    assert "Traceback" not in result.output
