"""Remote backend throughput: 200 generate calls to the llama.cpp server, concurrency 1 vs 8.

    python benchmarks/remote_concurrency.py [--calls 200] [--max-tokens 24]

Starts ``scripts/llama_server.sh`` (unless LLAMA_URLS lists running servers), then through
the OpenAI-compatible backend and the store cache:

1. concurrency 1 over every worker URL (one request in flight),
2. concurrency 8 against a single worker (shows what one llama-cpp-python process allows:
   it answers one request at a time),
3. concurrency 8 over every worker URL (round-robin; the "parallel slots"),
4. run 3 again, now answered from the store cache,
5. the same calls to an in-process stub that answers after 100 ms without computing (the
   client's own ceiling, as against a hosted API with many slots).

Each timed run uses a fresh store, so nothing is cached except in step 4. Prints
requests/s, the ratios against step 1 measured in this same run, how many cores the
servers kept busy (CPU seconds / wall seconds: on a shared machine a worker waiting for a
core shows here), and peak RSS of this process and of the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import llama_servers, read_jsonl, session  # noqa: E402

from tunewise.backends.base import CachedBackend
from tunewise.backends.openai_compat import OpenAIBackend
from tunewise.store import Store
from tunewise.task import BackendSpec

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "snips_intents.jsonl"


def prompts(n: int) -> list[list[dict[str, str]]]:
    rows = read_jsonl(DATA)
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


class SlowStub(BaseHTTPRequestHandler):
    """Answers every chat completion after STUB_LATENCY_S without computing anything: what
    the client alone can overlap when the server has enough slots (a hosted API)."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(STUB_LATENCY_S)
        blob = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)


STUB_LATENCY_S = 0.1


def stub_ratio(batch: list, concurrency: int, tmp: str) -> tuple[float, float]:
    """Seconds for the batch at concurrency 1 and N against the slow stub."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowStub)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        one, _ = timed([url], 1, batch, 8, Store(Path(tmp) / "stub1.db"))
        many, _ = timed([url], concurrency, batch, 8, Store(Path(tmp) / "stubn.db"))
    finally:
        httpd.shutdown()
        httpd.server_close()
    return one, many


def cpu_s(pids: list[int]) -> float:
    """CPU seconds the server processes have used (utime + stime), to tell a server that
    was busy from one that waited for a core on a shared machine."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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

    with session(), llama_servers(logits_all=False) as (urls, pids):
        run(args, urls, pids)


def run(args: argparse.Namespace, urls: list[str], pids: list[int]) -> None:
    batch = prompts(args.calls)
    print(f"{args.calls} generate calls, max_tokens {args.max_tokens}, "
          f"{len(urls)} server worker(s): {', '.join(urls)}  ({os.cpu_count()} cores)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        timed(urls, 2, prompts(4), 4, Store(Path(tmp) / "warm.db"))  # load, first eval
        plan = [("concurrency 1, all workers", urls, 1),
                (f"concurrency {args.concurrency}, one worker", urls[:1], args.concurrency),
                (f"concurrency {args.concurrency}, all workers", urls, args.concurrency)]
        store = None
        for i, (name, where, conc) in enumerate(plan):
            store = Store(Path(tmp) / f"s{i}.db")
            used = cpu_s(pids)
            secs, made = timed(where, conc, batch, args.max_tokens, store)
            rows.append((name, secs, made, cpu_s(pids) - used))
        secs, made = timed(urls, args.concurrency, batch, args.max_tokens, store)
        rows.append(("re-run from cache", secs, made, 0.0))
    base = rows[0][1]
    print(f"{'run':<32} {'seconds':>8} {'req/s':>8} {'vs c=1':>8} {'calls made':>10} "
          f"{'server cores busy':>17}")
    for name, secs, made, cpu in rows:
        busy = f"{cpu / secs:17.2f}" if pids else f"{'n/a':>17}"
        print(f"{name:<32} {secs:8.2f} {args.calls / secs:8.1f} {base / secs:7.2f}x "
              f"{made:10d} {busy}")
    print(f"re-run from cache took {100 * rows[3][1] / rows[2][1]:.2f}% of the first run "
          f"at concurrency {args.concurrency} (goal < 5%)")
    with tempfile.TemporaryDirectory() as tmp:
        one, many = stub_ratio(batch, args.concurrency, tmp)
    print(f"client ceiling, stub answering in {STUB_LATENCY_S * 1000:.0f} ms: "
          f"{args.calls / one:.1f} req/s at 1, {args.calls / many:.1f} req/s at "
          f"{args.concurrency} ({one / many:.2f}x)")
    print(f"peak RSS: benchmark {rss_mb():.0f} MB"
          + "".join(f", server {p} {rss_mb(p):.0f} MB" for p in pids))


if __name__ == "__main__":
    main()
