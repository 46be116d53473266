"""Remote backend throughput: 200 generate calls to the llama.cpp server, concurrency 1 vs 8.

    python benchmarks/remote_concurrency.py [--calls 200] [--max-tokens 24]

Starts ``scripts/llama_server.sh`` (unless LLAMA_URLS lists running servers), then through
the OpenAI-compatible backend and the store cache:

1. concurrency 1 over every worker URL (one request in flight),
2. concurrency 8 against a single worker (shows what one llama-cpp-python process allows:
   it answers one request at a time),
3. concurrency 8 over every worker URL (round-robin; the "parallel slots"),
4. run 3 again, now answered from the store cache.

Each timed run uses a fresh store, so nothing is cached except in step 4. Prints
requests/s, the ratios against step 1 measured in this same run, and peak RSS of this
process and of the servers. Timings on a shared machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from tunewise.backends.base import CachedBackend
from tunewise.backends.openai_compat import OpenAIBackend
from tunewise.store import Store
from tunewise.task import BackendSpec

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "snips_intents.jsonl"


def prompts(n: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return [[{"role": "system", "content": "Rewrite the user's request in other words."},
             {"role": "user", "content": rows[i % len(rows)]["input"] + f" (#{i})"}]
            for i in range(n)]


def timed(urls: list[str], concurrency: int, batch: list, max_tokens: int,
          store: Store) -> tuple[float, int]:
    spec = BackendSpec(kind="openai", model="smollm2-135m", base_url=urls,
                       concurrency=concurrency, timeout_s=120)
    backend = CachedBackend(OpenAIBackend(spec), store)
    start = time.perf_counter()
    out = backend.generate(batch, max_tokens)
    elapsed = time.perf_counter() - start
    assert len(out) == len(batch) and all(c.text for c in out), "empty answers"
    return elapsed, sum(not c.cached for c in out)


def rss_mb(pid: int | None = None) -> float:
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    started_here = False
    pids: list[int] = []
    if os.environ.get("LLAMA_URLS"):
        urls = os.environ["LLAMA_URLS"].split(",")
    else:
        out = subprocess.run(["bash", str(REPO / "scripts" / "llama_server.sh"), "start"],
                             check=True, capture_output=True, text=True).stdout.split()
        urls, pids = out[0::2], [int(p) for p in out[1::2]]
        started_here = True
    batch = prompts(args.calls)
    print(f"{args.calls} generate calls, max_tokens {args.max_tokens}, "
          f"{len(urls)} server worker(s): {', '.join(urls)}  ({os.cpu_count()} cores)")
    try:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            timed(urls, 2, prompts(4), 4, Store(Path(tmp) / "warm.db"))  # load, first eval
            plan = [("concurrency 1, all workers", urls, 1),
                    (f"concurrency {args.concurrency}, one worker", urls[:1], args.concurrency),
                    (f"concurrency {args.concurrency}, all workers", urls, args.concurrency)]
            store = None
            for i, (name, where, conc) in enumerate(plan):
                store = Store(Path(tmp) / f"s{i}.db")
                secs, made = timed(where, conc, batch, args.max_tokens, store)
                rows.append((name, secs, made))
            secs, made = timed(urls, args.concurrency, batch, args.max_tokens, store)
            rows.append(("re-run from cache", secs, made))
        base = rows[0][1]
        print(f"{'run':<32} {'seconds':>8} {'req/s':>8} {'vs c=1':>8} {'calls made':>10}")
        for name, secs, made in rows:
            print(f"{name:<32} {secs:8.2f} {args.calls / secs:8.1f} {base / secs:7.2f}x "
                  f"{made:10d}")
        print(f"re-run from cache took {100 * rows[3][1] / rows[2][1]:.2f}% of the first run "
              f"at concurrency {args.concurrency} (goal < 5%)")
        print(f"peak RSS: benchmark {rss_mb():.0f} MB"
              + "".join(f", server {p} {rss_mb(p):.0f} MB" for p in pids))
    finally:
        if started_here:
            subprocess.run(["bash", str(REPO / "scripts" / "llama_server.sh"), "stop"],
                           check=False)


if __name__ == "__main__":
    main()
