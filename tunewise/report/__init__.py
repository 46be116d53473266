"""The HTML report of a run (charts as static SVG, one offline file) and its JSON view."""

from tunewise.report.data import load_run, report_data
from tunewise.report.render import build_report, environment, render_html

__all__ = ["build_report", "environment", "load_run", "render_html", "report_data"]
