"""Runs started from the web UI: one background thread each, progress kept for polling.

The ladder reports progress through its ``Hooks``; a job records them so the browser can
poll ``/api/jobs/{id}``. Each thread opens its own store connection (SQLite connections are
per thread); the store's WAL mode lets the web pages read while the run writes.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError, redact

MAX_LOG = 200


@dataclass
class Job:
    """One run started from the UI and what it has done so far."""

    id: str
    task_path: str
    climb_all: bool
    status: str = "starting"  # starting | running | done | error
    rung: str | None = None
    done: int = 0
    total: int = 0
    finished: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    run_id: str | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, line: str) -> None:
        """Append a log line (bounded)."""
        with self.lock:
            self.log.append(redact(line))
            del self.log[:-MAX_LOG]

    def to_dict(self) -> dict[str, Any]:
        """The JSON the job page polls."""
        with self.lock:
            return {
                "id": self.id, "task_path": self.task_path, "status": self.status,
                "rung": self.rung, "done": min(self.done, self.total), "total": self.total,
                "finished": list(self.finished), "log": self.log[-20:], "run_id": self.run_id,
                "error": self.error,
                "elapsed_s": round((self.ended or time.time()) - self.started, 1),
            }


class Jobs:
    """The jobs of one server process."""

    def __init__(self, store_path: str | Path | None) -> None:
        self.store_path = store_path
        self.jobs: dict[str, Job] = {}

    def get(self, job_id: str) -> Job | None:
        """A job by id."""
        return self.jobs.get(job_id)

    def start(self, task_path: Path, climb_all: bool = False) -> Job:
        """Validate the task file now (errors go back to the form), then run it in a thread.

        Raises:
            TunewiseError: the task file is missing or invalid.
        """
        from tunewise.task import load_task

        task = load_task(task_path)
        job = Job(uuid.uuid4().hex[:10], str(task_path), climb_all)
        self.jobs[job.id] = job
        threading.Thread(target=self._work, args=(job, task), daemon=True,
                         name=f"tunewise-job-{job.id}").start()
        return job

    def _work(self, job: Job, task: Any) -> None:
        from tunewise.ladder import Hooks, run_ladder
        from tunewise.store import Store

        def start_rung(name: str, total: int) -> None:
            with job.lock:
                job.status, job.rung, job.done, job.total = "running", name, 0, total

        def advance(n: int) -> None:
            with job.lock:
                job.done += n

        def end_rung(result: dict[str, Any]) -> None:
            keep = ("name", "status", "value", "ci_low", "ci_high", "reason")
            with job.lock:
                job.finished.append({k: result.get(k) for k in keep})

        store = None
        try:
            store = Store(self.store_path)
            with job.lock:
                job.status = "running"
            result = run_ladder(task, store, climb_all=job.climb_all, hooks=Hooks(
                log=job.note, start_rung=start_rung, advance=advance, end_rung=end_rung))
            with job.lock:
                job.run_id, job.status, job.rung = result["run_id"], "done", None
        except TunewiseError as exc:
            with job.lock:
                job.status, job.error = "error", redact(str(exc))
        except Exception as exc:  # a bug must reach the page, not vanish with the thread
            job.note(traceback.format_exc(limit=5))
            with job.lock:
                job.status, job.error = "error", redact(f"{type(exc).__name__}: {exc}")
        finally:
            job.ended = time.time()
            if store is not None:
                store.close()
