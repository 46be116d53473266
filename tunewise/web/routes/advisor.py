"""The advisor wizard: one question a page, then the advice (with a run's measurements when
one is chosen); and its JSON twin."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tunewise.advisor import QUESTIONS
from tunewise.errors import TunewiseError
from tunewise.results import load_result
from tunewise.web.routes.common import opened, page, run_list
from tunewise.web.wizard import step

router = APIRouter()


@router.get("/advisor", response_class=HTMLResponse)
def advisor(request: Request) -> HTMLResponse:
    from tunewise.advisor import advise

    params = dict(request.query_params)
    s = step(params)
    with opened(request) as store:
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
        return page(request, "advisor.html", s=s, run_id=run_id, runs=runs, skip_url=skip_url)
    advice = advise(s.answers, result)
    return page(request, "advice.html", advice=advice.to_dict(), s=s, run_id=run_id,
                questions=QUESTIONS)


@router.get("/api/advisor")
def api_advisor(request: Request) -> dict[str, Any]:
    from tunewise.advisor import advise

    s = step(dict(request.query_params))
    if s.error:
        raise TunewiseError(s.error)
    return advise(s.answers).to_dict()
