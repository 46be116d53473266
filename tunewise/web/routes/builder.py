"""The task builder's pages and JSON, and the try box's JSON (issue 18). What they do is in
:mod:`tunewise.web.builder`; these are only its routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tunewise.errors import TunewiseError
from tunewise.web.builder import draft, save, save_upload
from tunewise.web.routes.common import form_of, page, same_origin

router = APIRouter()


@router.get("/build", response_class=HTMLResponse)
async def build_page(request: Request) -> HTMLResponse:
    form = dict(request.query_params)
    if not form.get("data"):
        return page(request, "build.html", form=form, d=None, error=None, saved=None)
    try:
        d = await run_in_threadpool(draft, form)
    except TunewiseError as exc:
        return page(request, "build.html", 400, form=form, d=None, error=str(exc), saved=None)
    return page(request, "build.html", form=form, d=d, error=None, saved=None)


@router.post("/build")
async def build_save(request: Request) -> Response:
    if not same_origin(request):
        return page(request, "error.html", 403,
                    message="task files can only be saved from this UI")
    form = await form_of(request)
    try:
        d = await run_in_threadpool(save, form)
    except TunewiseError as exc:
        try:
            d = await run_in_threadpool(draft, form)
        except TunewiseError:
            d = None
        return page(request, "build.html", 400, form=form, d=d, error=str(exc), saved=None)
    return page(request, "build.html", form=form, d=d, error=None, saved=d["task_path"])


@router.post("/api/build/upload")
async def upload(request: Request) -> Response:
    if not same_origin(request):
        return JSONResponse({"error": "uploads only from this UI"}, status_code=403)
    name = request.headers.get("x-filename", "")
    body = await request.body()
    path = await run_in_threadpool(save_upload, name, body)
    return JSONResponse({"path": str(path)})


@router.get("/api/build")
async def api_build(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(draft, dict(request.query_params))


@router.post("/api/runs/{run_id}/try")
async def try_input(request: Request, run_id: str) -> Response:
    if not same_origin(request):
        return JSONResponse({"error": "only from this UI"}, status_code=403)
    text = (await form_of(request)).get("text", "")
    return JSONResponse(await run_in_threadpool(request.app.state.trybox.answer, run_id, text))
