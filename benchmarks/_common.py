"""Helpers shared by the benchmarks: peak memory and a timer. Ratios, never absolutes."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_server.sh"


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


@contextmanager
def llama_servers(logits_all: bool) -> Iterator[tuple[list[str], list[int]]]:
    """(URLs, pids) of llama.cpp server workers: ``$LLAMA_URLS`` (comma-separated, pids
    unknown) if set, else started by ``scripts/llama_server.sh`` and stopped afterwards.
    ``logits_all``: keep per-token logits (log-prob scoring needs them; generation does not,
    and they cost time and ~0.8 GB per worker)."""
    if os.environ.get("LLAMA_URLS"):
        yield os.environ["LLAMA_URLS"].split(","), []
        return
    env = {**os.environ, "LLAMA_LOGITS_ALL": "1" if logits_all else "0"}
    out = subprocess.run(["bash", str(SERVER_SCRIPT), "start"], check=True,
                         capture_output=True, text=True, env=env).stdout.split()
    try:
        yield out[0::2], [int(p) for p in out[1::2]]
    finally:
        subprocess.run(["bash", str(SERVER_SCRIPT), "stop"], check=False)
