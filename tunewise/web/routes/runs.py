"""Pages of stored runs: home, the run list, one run's report (and its file), two runs
side by side."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tunewise.report.charts import all_charts
from tunewise.report.data import load_run, report_data
from tunewise.report.render import render_html
from tunewise.web.routes.common import compare_data, opened, page, run_list

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    with opened(request) as store:
        runs = run_list(store)[:5]
    return page(request, "home.html", runs=runs)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    with opened(request) as store:
        return page(request, "runs.html", runs=run_list(store))


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> HTMLResponse:
    with opened(request) as store:
        data = report_data(*load_run(store, run_id))
    return page(request, "run.html", r=data, charts=all_charts(data))


@router.get("/runs/{run_id}/report.html", response_class=HTMLResponse)
def run_report_file(request: Request, run_id: str) -> HTMLResponse:
    with opened(request) as store:
        data = report_data(*load_run(store, run_id))
    name = f"tunewise-report-{data['run_id']}.html"
    return HTMLResponse(render_html(data), headers={
        "Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, a: str = "", b: str = "") -> HTMLResponse:
    with opened(request) as store:
        runs = run_list(store)
        pair = compare_data(store, a, b) if a and b else None
    return page(request, "compare.html", runs=runs, a=a, b=b, pair=pair)
