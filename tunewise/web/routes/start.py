"""Starting a run of a task file from the browser, and the page that follows it live."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from tunewise.errors import TunewiseError
from tunewise.web.routes.common import form_of, jobs_of, page, same_origin

router = APIRouter()


@router.get("/start", response_class=HTMLResponse)
def start_form(request: Request) -> HTMLResponse:
    return page(request, "start.html", error=None, task_path="", climb_all=False)


@router.post("/start")
async def start(request: Request) -> Response:
    # Another site's page must not start runs here through the user's browser.
    if not same_origin(request):
        return page(request, "error.html", 403, message="runs can only be started from this UI")
    form = await form_of(request, keep_blank=False)
    task_path = form.get("task_path", "")
    climb_all = form.get("climb_all", "") == "true"
    path = Path(task_path.strip()).expanduser()
    try:
        if not task_path.strip():
            raise TunewiseError("enter the path of a task.yaml file")
        # Loading validates the task file; a huge or hostile one must not stall the
        # event loop, which serves every other request.
        job = await run_in_threadpool(jobs_of(request).start, path, climb_all)
    except TunewiseError as exc:
        return page(request, "start.html", 400, error=str(exc), task_path=task_path,
                    climb_all=climb_all)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    job = jobs_of(request).get(job_id)
    if job is None:
        raise TunewiseError(f"no job '{job_id}' in this server (jobs live until it stops)")
    return page(request, "job.html", job=job.to_dict())
