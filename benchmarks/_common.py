"""Helpers shared by the benchmarks: options, interleaved rounds, the report, peak memory.

A benchmark on a shared machine measures the machine's load as much as the code. What holds
is a ratio between two sides measured close together in time, so every benchmark here runs
its sides in interleaved rounds within one process (A B, then B A, so a load that rises or
falls through the run lands on both sides alike), reports each side's median with its
min-max over the rounds, and prints the load average before and after with the versions of
the libraries measured against. Absolute numbers are printed but are not the result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llama_server.sh"
VERSIONED = ("torch", "transformers", "lm-eval", "trl", "peft")


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


# ---- options ----------------------------------------------------------------------------


def parser(doc: str | None, *, items: int | None = None, steps: int | None = None,
           rounds: int | None = 3, threads: bool = True) -> argparse.ArgumentParser:
    """The benchmark's argument parser with the shared options it uses.

    Args:
        doc: the module docstring; its first line is the description, the rest the epilog.
        items, steps, rounds: defaults of ``--items`` / ``--steps`` / ``--rounds`` (None
            leaves the option out where it means nothing for this benchmark).
        threads: offer ``--threads`` (torch intra-op threads; default: torch's own).
    """
    head, _, rest = (doc or "").strip().partition("\n")
    ap = argparse.ArgumentParser(description=head, epilog=rest.strip() or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if items is not None:
        ap.add_argument("--items", type=int, default=items, help=f"items (default {items})")
    if steps is not None:
        ap.add_argument("--steps", type=int, default=steps,
                        help=f"training steps per side and round (default {steps})")
    if rounds is not None:
        ap.add_argument("--rounds", type=int, default=rounds,
                        help=f"interleaved rounds per side (default {rounds})")
    if threads:
        ap.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice, the physical cores)")
    return ap


def set_threads(n: int | None) -> int:
    """Apply ``--threads`` to torch; the number in use."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# ---- rounds -----------------------------------------------------------------------------


@dataclass
class Side:
    """One side of a comparison: a callable timed once per round.

    ``run`` returns the amount of work it did (items, tokens) so the rate is work/second;
    or a dict with ``work`` and any other numbers to keep (``loss``, ``rss_mib``).
    """

    name: str
    run: Callable[[], float | dict]
    unit: str = "items/s"
    rates: list[float] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)


def interleave(sides: list[Side], rounds: int, warmup: bool = True) -> list[Side]:
    """Run the sides in interleaved rounds: A B, B A, A B ... (one untimed warm-up each)."""
    if warmup:
        for side in sides:
            side.run()
    for r in range(rounds):
        for side in sides if r % 2 == 0 else reversed(sides):
            start = time.perf_counter()
            out = side.run()
            secs = time.perf_counter() - start
            info = out if isinstance(out, dict) else {"work": out}
            side.rates.append(info["work"] / secs)
            side.extra.append({**info, "seconds": secs})
    return sides


def spread(values: list[float]) -> str:
    """``median [min, max]`` of one side's rounds."""
    def fmt(v: float) -> str:
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"

    return f"{fmt(statistics.median(values))} [{fmt(min(values))}, {fmt(max(values))}]"


def ratio(a: Side, b: Side) -> tuple[float, float, float]:
    """Median, min and max of a's rate over b's, paired round by round."""
    per = [x / y for x, y in zip(a.rates, b.rates, strict=True)]
    return statistics.median(per), min(per), max(per)


def compare(title: str, a: Side, b: Side, goal: str = "") -> float:
    """Print both sides' rates and the ratio a / b; return the median ratio."""
    print(f"{title}")
    width = max(len(a.name), len(b.name))
    for s in (a, b):
        print(f"  {s.name:<{width}} : {spread(s.rates)} {s.unit} over {len(s.rates)} rounds")
    med, lo, hi = ratio(a, b)
    print(f"  ratio {a.name} / {b.name}: {med:.2f}x [{lo:.2f}, {hi:.2f}]"
          + (f" (goal {goal})" if goal else ""))
    return med


# ---- context ----------------------------------------------------------------------------


def versions() -> str:
    """Installed versions of the libraries measured, read without importing them."""
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def load() -> str:
    """The 1-minute load average against the cores (a load above the cores means the sides
    shared the machine with other work: trust the ratios, not the absolutes)."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


@contextmanager
def session(args: argparse.Namespace | None = None) -> Iterator[None]:
    """Print versions, threads and load before the benchmark, the load and peak RSS after."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and TRL's progress bars
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations
    threads = getattr(args, "threads", None)
    used = set_threads(threads) if args is not None and hasattr(args, "threads") else None
    print(f"# {Path(sys.argv[0]).name}: {versions()}; python {sys.version.split()[0]}")
    print(f"# before: {load()}" + (f"; torch threads {used}" if used else ""))
    yield
    print(f"# after: {load()}; peak RSS {peak_rss_mib():.0f} MiB")


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
