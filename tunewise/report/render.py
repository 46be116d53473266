"""Turning report data into one self-contained HTML page (no CDN, no external file).

The same templates serve ``tunewise report`` and the run pages of ``tunewise serve``: the
web app builds its environment with :func:`environment` and includes ``_report_body.html``.
Autoescaping is on for every template, so task inputs, gold answers and model outputs are
shown as text, never run as markup.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, Environment, PackageLoader, StrictUndefined

from tunewise.cost import format_days, format_usd
from tunewise.report.charts import FAMILY_LABEL, all_charts
from tunewise.report.data import load_run, report_data


def fmt_num(v: Any, digits: int = 3) -> str:
    """A number with fixed decimals, or an en dash when missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def fmt_usd(v: Any) -> str:
    """Dollars via the cost module's formatter, or an en dash."""
    return "–" if v is None else format_usd(float(v))


def fmt_seconds(v: Any) -> str:
    """Preparation time: ms under a second, s under a minute, else minutes."""
    if v is None:
        return "–"
    v = float(v)
    if v < 1:
        return f"{v * 1000:.0f} ms"
    return f"{v:.1f} s" if v < 60 else f"{v / 60:.1f} min"


def fmt_days(v: Any) -> str:
    """Break-even days for people."""
    return format_days(v)


def environment(*extra: BaseLoader) -> Environment:
    """A jinja2 environment with the report templates (plus ``extra`` loaders first)."""
    env = Environment(
        loader=ChoiceLoader([*extra, PackageLoader("tunewise.report", "templates")]),
        autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, usd=fmt_usd, secs=fmt_seconds, days=fmt_days)
    env.globals.update(family_label=FAMILY_LABEL, is_mapping=lambda v: isinstance(v, dict),
                       is_list=lambda v: isinstance(v, list))
    return env


def context(data: dict[str, Any]) -> dict[str, Any]:
    """What ``_report_body.html`` needs: the data and its rendered charts."""
    return {"r": data, "charts": all_charts(data)}


def render_html(data: dict[str, Any], env: Environment | None = None) -> str:
    """The standalone report page."""
    env = env or environment()
    return env.get_template("report.html").render(**context(data))


def build_report(store: Any, run_id: str, out: Path | None = None
                 ) -> tuple[dict[str, Any], str]:
    """Report data and HTML for a stored run; writes the HTML to ``out`` when given."""
    result, rows = load_run(store, run_id)
    data = report_data(result, rows)
    html = render_html(data)
    if out is not None:
        from tunewise.files import write_text_atomic

        write_text_atomic(Path(out), html)
    return data, html
