"""`tunewise serve`: the web UI (FastAPI, server-side templates, a little vanilla JS)."""
