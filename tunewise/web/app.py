"""The FastAPI app behind `tunewise serve`: server-side pages plus JSON for scripts.

Pages: the advisor wizard, the list of runs, each run's report (the same template as
``tunewise report``), a form that starts a run of a task file and a page that watches it,
two runs side by side, and the task builder with its try box. Every page has a JSON twin
under ``/api``. Templates autoescape, so task text and model output are always shown as
text.

:func:`create_app` only assembles: the routes are ``APIRouter`` modules under
:mod:`tunewise.web.routes`, one per job, and what they share is put on ``app.state``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from jinja2 import PackageLoader

from tunewise.errors import TunewiseError
from tunewise.report.render import environment
from tunewise.web.builder import TryBox
from tunewise.web.jobs import Jobs
from tunewise.web.routes import advisor, api, builder, runs, start
from tunewise.web.routes.common import page

ROUTERS = (runs.router, advisor.router, start.router, builder.router, api.router)


def create_app(store_path: str | Path | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app over one store (``None``: the default store).

    Args:
        store_path: the SQLite store to show and to run into.
        allowed_hosts: Host headers to accept (a loopback server passes its own names, so a
            web page cannot reach it through DNS rebinding); ``None`` accepts any.
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = FastAPI(title="tunewise", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.store_path = store_path
    app.state.templates = environment(PackageLoader("tunewise.web", "templates"))
    app.state.jobs = Jobs(store_path)
    app.state.trybox = TryBox(store_path)  # the try box's models, kept between requests
    app.add_exception_handler(TunewiseError, user_error)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    return app


def user_error(request: Request, exc: TunewiseError) -> Response:
    """A user's mistake (unknown run, bad task path): the error page, or JSON under /api."""
    status = 404 if "no run" in exc.message else 400
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": str(exc)}, status_code=status)
    return page(request, "error.html", status, message=str(exc))
