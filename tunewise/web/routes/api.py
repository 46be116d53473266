"""The JSON twins of the run pages, for scripts: runs, one run's report data, a job's state,
two runs compared."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tunewise.errors import TunewiseError
from tunewise.report.data import load_run, report_data
from tunewise.web.routes.common import compare_data, jobs_of, opened, run_list

router = APIRouter(prefix="/api")


@router.get("/runs")
def api_runs(request: Request) -> list[dict[str, Any]]:
    with opened(request) as store:
        return run_list(store)


@router.get("/runs/{run_id}")
def api_run(request: Request, run_id: str) -> dict[str, Any]:
    with opened(request) as store:
        return report_data(*load_run(store, run_id))


@router.get("/jobs/{job_id}")
def api_job(request: Request, job_id: str) -> dict[str, Any]:
    job = jobs_of(request).get(job_id)
    if job is None:
        raise TunewiseError(f"no job '{job_id}' in this server")
    return job.to_dict()


@router.get("/compare")
def api_compare(request: Request, a: str, b: str) -> dict[str, Any]:
    with opened(request) as store:
        return compare_data(store, a, b)
