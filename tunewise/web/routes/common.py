"""What the routers share: the page renderer, the store, the run list, form parsing, and
the same-origin check. Everything per-app (store path, templates, jobs, try box) is on
``request.app.state``, set by :func:`tunewise.web.app.create_app`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse

from tunewise.errors import TunewiseError
from tunewise.report.data import load_run, report_data
from tunewise.results import Verdict, load_result
from tunewise.store import Store
from tunewise.web.jobs import Jobs

RUN_LIST_LIMIT = 100


def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """The template ``name`` rendered with ``ctx`` (autoescaped: user text stays text)."""
    env = request.app.state.templates
    return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)


@contextmanager
def opened(request: Request) -> Iterator[Store]:
    """The app's store, open for one request (closed before the page is sent)."""
    store = Store(request.app.state.store_path)
    try:
        yield store
    finally:
        store.close()


def jobs_of(request: Request) -> Jobs:
    """The runs this server started (they live as long as the server)."""
    return request.app.state.jobs


def same_origin(request: Request) -> bool:
    """False when another site's page sends this request through the user's browser."""
    origin = request.headers.get("origin")
    return not origin or urlsplit(origin).netloc == request.headers.get("host")


async def form_of(request: Request, keep_blank: bool = True) -> dict[str, str]:
    """An urlencoded form's first value per field (parsed here: no python-multipart)."""
    raw = parse_qs((await request.body()).decode("utf-8", "replace"),
                   keep_blank_values=keep_blank)
    return {k: v[0] for k, v in raw.items()}


def run_list(store: Store) -> list[dict[str, Any]]:
    """The newest runs with their verdict's summary (an unreadable old run is listed, with
    why, rather than breaking the page)."""
    out = []
    for row in store.runs(RUN_LIST_LIMIT):
        item = dict(row)
        full = store.run(row["id"])
        try:
            result = load_result(json.loads(full["result_json"]), f"run {row['id']}") \
                if full["result_json"] else None
        except TunewiseError as exc:  # an unreadable old run is listed, not fatal
            item.update(summary=str(exc), rung=None, meets_target=None, metric=None)
            out.append(item)
            continue
        verdict = (result.verdict if result else None) or Verdict()
        item.update(summary=verdict.summary, rung=verdict.rung,
                    meets_target=verdict.meets_target if verdict.rung else None,
                    metric=result.task.metric if result else None)
        out.append(item)
    return out


def compare_data(store: Any, a: str, b: str) -> dict[str, Any]:
    """Two runs' report data and their rungs aligned by name (score difference b - a)."""
    left = report_data(*load_run(store, a))
    right = report_data(*load_run(store, b))
    by_a = {r["name"]: r for r in left["rungs"]}
    by_b = {r["name"]: r for r in right["rungs"]}
    names = list(by_a) + [n for n in by_b if n not in by_a]
    rows = []
    for name in names:
        ra, rb = by_a.get(name, {}), by_b.get(name, {})
        va, vb = ra.get("value"), rb.get("value")
        rows.append({"name": name, "a": ra, "b": rb,
                     "diff": vb - va if va is not None and vb is not None else None})
    return {"a": left, "b": right, "rows": rows}
