"""Helpers shared by the benchmarks: peak memory and a timer. Ratios, never absolutes."""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer(out: dict, key: str):
    """Store the wall time of the block in ``out[key]`` (seconds)."""
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """Rows of a JSONL file."""
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
    return rows[:limit] if limit else rows
