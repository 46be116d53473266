"""What the `tunewise` command prints: result tables, verdicts, costs, advice, checks.

:mod:`tunewise.cli` does the wiring (arguments, loading, running, exit codes) and hands
what it got to the functions here, which render it with Rich. User text (names, labels,
inputs, paths) goes through :func:`~tunewise.terminal.safe` or
:func:`~tunewise.terminal.printable`, never as markup. Heavy modules are imported inside
functions, so importing this module keeps ``tunewise --help`` fast.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunewise.errors import redact
from tunewise.terminal import printable, safe

# Outside a terminal (CI logs, pipes) Rich would assume 80 columns and wrap the table.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)


def bullets(out: Any, *groups: tuple[str, list[str]]) -> None:
    """Print each group's lines indented under its marker (markup in the marker only: the
    lines are user-facing text and printed literally)."""
    for marker, lines in groups:
        for line in lines:
            out.print(f"  {marker} {safe(line)}")


def print_error(line: str) -> None:
    """One line on stderr, secrets masked, never wrapped or marked up by Rich; control
    characters from user text shown as escapes."""
    err_console.print(printable(redact(line)), markup=False, highlight=False, soft_wrap=True)


def say(text: str) -> None:
    """One line of plain text on stdout (user text in it printed literally)."""
    console.print(safe(text))


def warn(text: str) -> None:
    """One warning line on stderr, in yellow (user text in it printed literally)."""
    err_console.print(f"[yellow]{safe(text)}[/yellow]")


def print_cache_stats(path: Any, stats: dict[str, Any]) -> None:
    """``cache stats``: the store and how many calls and tokens it caches."""
    console.print(f"{safe(path)}: {stats['calls']} cached calls, "
                  f"{stats['prompt_tokens']} prompt + {stats['completion_tokens']} "
                  "completion tokens")


def print_log(message: str) -> None:
    """A progress line of a long command on stderr (user data, so no markup; masked)."""
    err_console.print(printable(redact(message)), markup=False, highlight=False)


# ---- a run ---------------------------------------------------------------------------------


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
    bullets(console, ("•", v.reasons), ("✗", v.rejected), ("→", v.next))
    if res.decision:
        console.print("  [dim]thresholds: " + safe(", ".join(
            f"{k} {val:g}" if isinstance(val, int | float) else f"{k} {val}"
            for k, val in res.decision.items())) + "[/dim]")


def progress_hooks(progress: Any) -> Any:
    """Ladder hooks drawing a progress bar per rung and log lines above the bars."""
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

def print_result(result: Any) -> None:
    """A run's table, then its cost and verdict."""
    console.print(results_table(result))
    print_verdict(result)


def print_run(result: dict[str, Any]) -> None:
    """A finished run: its table, verdict, cost, calls made and where the result is."""
    print_result(result)
    usage = result.get("usage", {})
    made, hits = usage.get("calls_made", 0), usage.get("cache_hits", 0)
    console.print(f"\nmodel calls: {made} made, {hits} served from cache")
    console.print(f"result: {safe(result['result_path'])}  (run id "
                  f"{safe(result['run_id'])})")


def print_demo_header(i: int, total: int, name: str, question: str, source: Any) -> None:
    """The rule and the question above one demo of ``tunewise demo``."""
    head = f"demo {i}/{total}: " if total > 1 else "demo: "
    console.rule(f"[bold]{head}{safe(name)}[/bold]")
    console.print(f"[dim]{safe(question)}\ntask file: {safe(source)}[/dim]")


def print_runs(rows: list[Any]) -> None:
    """``runs``: the table of recent runs."""
    console.print(runs_table(rows))


def runs_table(rows: list[Any]) -> Table:
    """Recent runs in the store, with why a failed run failed (shortened)."""
    table = Table("run id", "task", "status", "file")
    for row in rows:
        status = safe(row["status"])
        if row["error"]:  # why a run failed, shortened to keep the table readable
            error = row["error"] if len(row["error"]) <= 60 else row["error"][:59] + "…"
            status += f" [dim]({safe(error)})[/dim]"
        table.add_row(safe(row["id"]), safe(row["task_name"]), status,
                      safe(row["task_path"] or ""))
    return table


# ---- one prompt, one answer ----------------------------------------------------------------


def print_prompt_notes(labels: list[str] | None, system_column: str | None,
                       from_input: bool) -> None:
    """What ``show-prompt`` adds on stderr: the scored labels and the row's system prompt."""
    if labels:
        err_console.print(f"[dim]scored answers: {safe(', '.join(labels))}[/dim]")
    if system_column:
        column = printable(system_column)
        err_console.print(Text(
            f"system prompt: column '{column}' of the row, sent as written"
            if not from_input else f"--input has no row, so no '{column}' system prompt; use "
            "--example N to see a row's", style="dim"))


def print_prediction(text: str, ranked: list[tuple[str, float]], top: int) -> None:
    """``predict``: the answer, and the top labels with their probabilities."""
    console.print(f"[bold]{safe(text)}[/bold]")
    for label, p in ranked[:top]:
        console.print(f"  {safe(f'{printable(label):<24}')} {p:.3f}")


# ---- cost ----------------------------------------------------------------------------------


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

def print_cost_command(result: dict[str, Any], cost: dict[str, Any],
                       cells: list[dict[str, Any]]) -> None:
    """``tunewise cost``: the run and price used, the tables and the break-even sentences."""
    console.print(f"[dim]run {safe(result['run_id'])}; "
                  f"{safe(cost['price'].get('description', ''))}[/dim]")
    for table in cost_tables(cost):
        console.print(table)
    for pair in cost["break_even"]["pairs"]:
        console.print(f"  • {safe(pair['text'])}")
    if len({c["model"] for c in cells}) > 1:
        for table in matrix_tables(cells, cost["matrix"]):
            console.print(table)


# ---- advice, init, doctor, train, freshness -------------------------------------------------


def print_advice(advice: Any) -> None:
    """The advisor's recommendation, reasons, what to avoid and next steps."""
    console.print(f"\n[bold]Recommendation:[/bold] {safe(advice.headline)}  "
                  f"[dim]({safe(advice.recommendation)})[/dim]")
    bullets(console, ("[cyan]measured[/cyan]", advice.measured), ("•", advice.reasons),
            ("✗ avoid", advice.avoid), ("→", advice.next_steps))


def print_init(path: Any, found: Any, report: Any) -> None:
    """``init``: the task file written, what was detected, and the data checks."""
    console.print(f"wrote {safe(path)}: {safe(found.kind)}, input '{safe(found.input)}', "
                  f"output '{safe(found.output)}', {found.n_rows} rows")
    if found.labels:
        console.print(f"  labels ({len(found.labels)}): {safe(', '.join(found.labels))}")
    if found.corpus:
        console.print(f"  corpus: {safe(found.corpus)}")
    for note in report.notes:
        console.print(f"  [yellow]data check:[/yellow] {safe(note)}")
    console.print(f"next: tunewise run {safe(path)}")


def print_doctor(checks: list[Any]) -> None:
    """``doctor``: every check with its status, and how to fix each failure (one line)."""
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


def print_trained(adapter: Any, summary: dict[str, Any]) -> None:
    """``train``: where the adapter is, and how its training went."""
    verb = "trained" if adapter.trained_now else "found (cached)"
    console.print(f"adapter {verb}: {safe(adapter.path)}")
    console.print(f"  {summary['steps']} steps in {summary['train_seconds']:.1f} s, final loss "
                  f"{summary['final_loss']:.3f}, dev loss {summary['dev_loss']}")


def print_freshness(summary: dict[str, Any]) -> None:
    """``freshness``: each edited question before and after, and the share that followed."""
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
