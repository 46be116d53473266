"""The web UI's routes, one ``APIRouter`` per job: runs and reports, starting and watching a
run, the advisor, the task builder with the try box, and the JSON API. ``create_app``
assembles them; what they share (the store, templates, jobs) lives on ``app.state`` and is
reached through :mod:`tunewise.web.routes.common`."""
