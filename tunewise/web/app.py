"""The FastAPI app behind `tunewise serve`: server-side pages plus JSON for scripts.

Pages: the advisor wizard, the list of runs, each run's report (the same template as
``tunewise report``), a form that starts a run of a task file and a page that watches it,
and two runs side by side. Every page has a JSON twin under ``/api``. Templates autoescape,
so task text and model output are always shown as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import PackageLoader
from starlette.concurrency import run_in_threadpool

from tunewise.advisor import QUESTIONS
from tunewise.errors import TunewiseError
from tunewise.report.charts import all_charts
from tunewise.report.data import load_run, report_data
from tunewise.report.render import environment, render_html
from tunewise.results import Verdict, load_result
from tunewise.web.jobs import Jobs
from tunewise.web.wizard import step

RUN_LIST_LIMIT = 100


def create_app(store_path: str | Path | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app over one store (``None``: the default store).

    Args:
        store_path: the SQLite store to show and to run into.
        allowed_hosts: Host headers to accept (a loopback server passes its own names, so a
            web page cannot reach it through DNS rebinding); ``None`` accepts any.
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from tunewise.store import Store

    app = FastAPI(title="tunewise", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    env = environment(PackageLoader("tunewise.web", "templates"))
    jobs = Jobs(store_path)
    app.state.jobs = jobs

    @contextmanager
    def opened() -> Iterator[Store]:
        store = Store(store_path)
        try:
            yield store
        finally:
            store.close()

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(TunewiseError)
    def user_error(request: Request, exc: TunewiseError) -> Response:
        status = 404 if "no run" in exc.message else 400
        if wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=status)
        return page("error.html", status, message=str(exc))

    def run_list(store: Store) -> list[dict[str, Any]]:
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

    # ---- pages --------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        with opened() as store:
            runs = run_list(store)[:5]
        return page("home.html", runs=runs)

    @app.get("/advisor", response_class=HTMLResponse)
    def advisor(request: Request) -> HTMLResponse:
        from tunewise.advisor import advise

        params = dict(request.query_params)
        s = step(params)
        with opened() as store:
            runs = run_list(store)
            run_id = params.get("run") or ""
            result = None
            if run_id:
                full = store.run(run_id)
                result = load_result(json.loads(full["result_json"]), f"run {run_id}"
                                     ).to_json() if full["result_json"] else None
        if s.question is not None:
            keep = {**s.given, **({"run": run_id} if run_id else {})}
            skip_url = "/advisor?" + urlencode({**keep, s.question.key: ""})
            return page("advisor.html", s=s, run_id=run_id, runs=runs, skip_url=skip_url)
        advice = advise(s.answers, result)
        return page("advice.html", advice=advice.to_dict(), s=s, run_id=run_id,
                    questions=QUESTIONS)

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page() -> HTMLResponse:
        with opened() as store:
            return page("runs.html", runs=run_list(store))

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(run_id: str) -> HTMLResponse:
        with opened() as store:
            data = report_data(*load_run(store, run_id))
        return page("run.html", r=data, charts=all_charts(data))

    @app.get("/runs/{run_id}/report.html", response_class=HTMLResponse)
    def run_report_file(run_id: str) -> HTMLResponse:
        with opened() as store:
            data = report_data(*load_run(store, run_id))
        name = f"tunewise-report-{data['run_id']}.html"
        return HTMLResponse(render_html(data), headers={
            "Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/start", response_class=HTMLResponse)
    def start_form() -> HTMLResponse:
        return page("start.html", error=None, task_path="", climb_all=False)

    @app.post("/start")
    async def start(request: Request) -> Response:
        # Another site's page must not start runs here through the user's browser.
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            return page("error.html", 403, message="runs can only be started from this UI")
        # The form is urlencoded; parsing it here spares a python-multipart dependency.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        task_path = form.get("task_path", [""])[0]
        climb_all = form.get("climb_all", [""])[0] == "true"
        path = Path(task_path.strip()).expanduser()
        try:
            if not task_path.strip():
                raise TunewiseError("enter the path of a task.yaml file")
            # Loading validates the task file; a huge or hostile one must not stall the
            # event loop, which serves every other request.
            job = await run_in_threadpool(jobs.start, path, climb_all)
        except TunewiseError as exc:
            return page("start.html", 400, error=str(exc), task_path=task_path,
                        climb_all=climb_all)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str) -> HTMLResponse:
        job = jobs.get(job_id)
        if job is None:
            raise TunewiseError(f"no job '{job_id}' in this server (jobs live until it stops)")
        return page("job.html", job=job.to_dict())

    @app.get("/compare", response_class=HTMLResponse)
    def compare(a: str = "", b: str = "") -> HTMLResponse:
        with opened() as store:
            runs = run_list(store)
            pair = compare_data(store, a, b) if a and b else None
        return page("compare.html", runs=runs, a=a, b=b, pair=pair)

    from tunewise.web.builder import add_routes

    add_routes(app, page, store_path)  # task builder and try box (issue 18)

    # ---- JSON -----------------------------------------------------------------------------
    @app.get("/api/runs")
    def api_runs() -> list[dict[str, Any]]:
        with opened() as store:
            return run_list(store)

    @app.get("/api/runs/{run_id}")
    def api_run(run_id: str) -> dict[str, Any]:
        with opened() as store:
            return report_data(*load_run(store, run_id))

    @app.get("/api/jobs/{job_id}")
    def api_job(job_id: str) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None:
            raise TunewiseError(f"no job '{job_id}' in this server")
        return job.to_dict()

    @app.get("/api/compare")
    def api_compare(a: str, b: str) -> dict[str, Any]:
        with opened() as store:
            return compare_data(store, a, b)

    @app.get("/api/advisor")
    def api_advisor(request: Request) -> dict[str, Any]:
        from tunewise.advisor import advise

        s = step(dict(request.query_params))
        if s.error:
            raise TunewiseError(s.error)
        return advise(s.answers).to_dict()

    return app


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
