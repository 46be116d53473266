"""The `tunewise` command. Heavy modules are imported inside commands so --help stays fast.

Errors the user can fix are one line on stderr with exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunewise.errors import TunewiseError

app = typer.Typer(
    help="Measure whether your LLM task needs prompting, retrieval or fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cache_app = typer.Typer(help="Inspect or clear the model-call cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

console = Console()
err_console = Console(stderr=True)
STATE: dict[str, Any] = {"store": None, "debug": False}

DEMOS = {"symptoms": "demo/symptoms/task.yaml", "clinic": "demo/clinic/task.yaml"}

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", envvar="TUNEWISE_DB", help="SQLite store (default: per-user dir)."),
]


@app.callback()
def _root(
    store: StoreOpt = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    STATE["store"] = store
    STATE["debug"] = debug


def _store():
    from tunewise.store import Store

    return Store(STATE["store"])


def demo_path(name: str) -> Path:
    """Path of a bundled demo task file."""
    if name not in DEMOS:
        raise TunewiseError(f"unknown demo '{name}' (choose from {', '.join(DEMOS)})")
    return Path(str(resources.files("tunewise").joinpath(DEMOS[name])))


def _load(task: Path):
    from tunewise.task import load_task

    return load_task(task)


def _fmt_score(r: dict[str, Any]) -> str:
    return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def results_table(result: dict[str, Any]) -> Table:
    """The run table: one row per rung, numbers with CIs, significance against zero-shot."""
    task = result["task"]
    table = Table(title=f"{task['name']}: {task['metric']} on {result['split']['test']} "
                        f"test examples (target {task['target']})")
    for col in ("rung", "status", f"{task['metric']} [95% CI]", "vs zero-shot", "ECE",
                "tokens/req (in/out)", "latency p50/p95 ms", "calls / cached"):
        table.add_column(col, justify="left" if col in ("rung", "status") else "right")
    for r in result["rungs"]:
        if r["status"] != "done":
            table.add_row(r["name"], r["status"], r.get("reason", ""), "", "", "", "", "")
            continue
        vs = r.get("vs_zero_shot")
        mark = ""
        if vs:
            mark = f"{vs['diff']:+.3f}" + (" *" if vs["p_value"] < 0.05 else "")
        met = " ✓" if r["value"] >= task["target"] else ""
        table.add_row(
            r["name"], "done",
            _fmt_score(r) + met, mark,
            f"{r['ece']:.3f}" if "ece" in r else "",
            f"{r['tokens']['prompt_mean']:.0f} / {r['tokens']['completion_mean']:.0f}",
            f"{r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f}",
            f"{r['calls_made']} / {r['cache_hits']}",
        )
    table.caption = "* better than zero_shot, paired bootstrap p < 0.05;  ✓ meets the target"
    return table


def print_verdict(result: dict[str, Any]) -> None:
    """The verdict and its reasons, under the table."""
    v = result.get("verdict") or {}
    if not v:
        return
    console.print(f"\n[bold]Verdict:[/bold] {v.get('summary', '')}")
    for reason in v.get("reasons", []):
        console.print(f"  • {reason}")
    for line in v.get("rejected", []):
        console.print(f"  ✗ {line}")
    for line in v.get("next", []):
        console.print(f"  → {line}")


def _progress_hooks(progress):
    from tunewise.ladder import Hooks

    state: dict[str, Any] = {"task": None}

    def start(name: str, total: int) -> None:
        state["task"] = progress.add_task(name, total=total)

    def advance(n: int) -> None:
        if state["task"] is not None:
            progress.advance(state["task"], n)

    return Hooks(log=lambda m: progress.console.print(f"[yellow]{m}[/yellow]"),
                 start_rung=start, advance=advance)


def _run(task_path: Path, out: Path | None, climb_all: bool, as_json: bool,
         rungs: list[str] | None) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tunewise.ladder import run_ladder

    task = _load(task_path)
    store = _store()
    with Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  transient=False, disable=as_json) as progress:
        result = run_ladder(task, store, hooks=_progress_hooks(progress), out_dir=out,
                            climb_all=climb_all, rungs=rungs)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(results_table(result))
        print_verdict(result)
        usage = result.get("usage", {})
        made = sum(u["calls_made"] for u in usage.values())
        hits = sum(u["cache_hits"] for u in usage.values())
        console.print(f"\nmodel calls: {made} made, {hits} served from cache")
        console.print(f"result: {result['result_path']}  (run id {result['run_id']})")
    return result


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
) -> None:
    """Climb the ladder on a task: each rung really run and scored on held-out data."""
    if task is None and not demo:
        raise TunewiseError("give a task file, or --demo")
    _run(task or demo_path("symptoms"), out, climb_all, as_json,
         rungs.split(",") if rungs else None)


@app.command("demo")
def demo_cmd(
    name: Annotated[str, typer.Argument(help="symptoms | clinic")] = "symptoms",
    out: OutOpt = None,
    climb_all: Annotated[bool, typer.Option("--all/--stop", help="Run every rung.")] = True,
    as_json: JsonOpt = False,
    rungs: RungsOpt = None,
) -> None:
    """Run a bundled demo task (symptom -> specialty, or the clinic handbook Q&A)."""
    path = demo_path(name)
    console.print(f"[dim]demo task: {path}[/dim]")
    _run(path, out, climb_all, as_json, rungs.split(",") if rungs else None)


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
        print(json.dumps(prompt, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(plan.ctx.backend.render(prompt))
        sys.stdout.write("\n")
    if plan.ctx.labels:
        err_console.print(f"[dim]scored answers: {', '.join(plan.ctx.labels)}[/dim]")


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
    console.print(f"[bold]{pred.text}[/bold]")
    for label, p in ranked[:top]:
        console.print(f"  {label:<24} {p:.3f}")


@cache_app.command("stats")
def cache_stats() -> None:
    """How many model calls are cached, and their tokens."""
    store = _store()
    stats = store.cache_stats()
    console.print(f"{store.path}: {stats['calls']} cached calls, "
                  f"{stats['prompt_tokens']} prompt + {stats['completion_tokens']} "
                  "completion tokens")


@cache_app.command("clear")
def cache_clear() -> None:
    """Forget every cached model call (runs and results are kept)."""
    console.print(f"removed {_store().clear_cache()} cached calls")


@app.command()
def runs(limit: Annotated[int, typer.Option(help="How many.")] = 20) -> None:
    """List recent runs in the store."""
    table = Table("run id", "task", "status", "file")
    for row in _store().runs(limit):
        table.add_row(row["id"], row["task_name"], row["status"], row["task_path"] or "")
    console.print(table)


@app.command()
def show(run_id: Annotated[str, typer.Argument(help="Run id, or 'latest'.")] = "latest",
         as_json: JsonOpt = False) -> None:
    """Show a stored run's table and verdict without re-running anything."""
    row = _store().run(run_id)
    if not row["result_json"]:
        raise TunewiseError(f"run {row['id']} did not finish; re-run its task to resume")
    result = json.loads(row["result_json"])
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(results_table(result))
    print_verdict(result)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except TunewiseError as exc:
        if STATE["debug"]:
            raise
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished work is saved; run the same command again "
                          "to resume from the cache", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
