"""Label scoring through a llama.cpp server: the three methods against the local backend.

    python benchmarks/remote_scoring.py [--items 40] [--echo-items 3]

Starts ``scripts/llama_server.sh`` with logits kept (unless LLAMA_URLS lists running
servers), builds zero-shot and 4-shot prompts for SNIPS test items (7 labels), and scores
them with the local transformers backend and through the OpenAI-compatible backend with
``score_method`` forced, constrained and logprob (echoed prompt log-probs: only
``--echo-items`` items, it is slow in llama-cpp-python). Each method is compared with the
local backend under the same rule (forced: label tokens only; logprob: label + end of
turn): how often both pick the same label, the largest log-prob gap, accuracy, and
seconds per item relative to forced, measured in this same run. No cache is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, llama_servers, peak_rss_mib, session  # noqa: E402

from tunewise.backends.local import LocalBackend
from tunewise.backends.openai_compat import OpenAIBackend
from tunewise.ladder import plan_run
from tunewise.rungs.base import get_rung
from tunewise.store import Store
from tunewise.task import BackendSpec, load_task


def prompts_and_items(tmp: Path, rung: str, n: int) -> tuple[list, list, list[str]]:
    """Prompts of ``rung`` for the first ``n`` SNIPS test items, their items and labels."""
    spec = {"name": "bench", "kind": "classification",
            "data": {"path": str(SHARED_DATA / "snips_intents.jsonl")}, "target": 0.9,
            "split": {"test": n, "dev": 20, "seed": 0}, "few_shot": {"k": 4},
            "backend": {"kind": "dummy"}}
    path = tmp / "task.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    plan = plan_run(load_task(path), Store(tmp / "plan.db"))
    prepared = get_rung(rung).prepare(plan.ctx)
    items = plan.ctx.split.test
    return [prepared.prompt_for(e) for e in items], items, list(plan.ctx.labels)


def timed_score(backend, prompts, labels) -> tuple[list, float]:
    start = time.perf_counter()
    out = backend.score(prompts, [labels] * len(prompts))
    return out, time.perf_counter() - start


def compare(name, rung, remote, ref, items, labels, secs, base_per_item) -> None:
    pick = [r.logprobs.index(max(r.logprobs)) for r in remote]
    ref_pick = [r.logprobs.index(max(r.logprobs)) for r in ref]
    agree = sum(a == b for a, b in zip(pick, ref_pick, strict=True))
    gap = max(abs(a - b) for r, f in zip(remote, ref, strict=True)
              for a, b in zip(r.logprobs, f.logprobs, strict=True))
    acc = sum(labels[p] == e.output for p, e in zip(pick, items, strict=True)) / len(items)
    ref_acc = sum(labels[p] == e.output for p, e in zip(ref_pick, items, strict=True))
    per_item = secs / len(items)
    print(f"{rung:<16} {name:<12} {len(items):>5} {agree:>4}/{len(items):<4} "
          f"{gap:>9.2f} {acc:>8.3f} {ref_acc / len(items):>9.3f} {per_item:>8.2f} "
          f"{per_item / base_per_item:>8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--echo-items", type=int, default=3)
    args = parser.parse_args()
    with session(), llama_servers(logits_all=True) as (urls, _):
        local = LocalBackend("smollm2-135m")
        bare = LocalBackend("smollm2-135m", score_end_of_turn=False)

        def remote(method: str) -> OpenAIBackend:
            return OpenAIBackend(BackendSpec(
                kind="openai", model="smollm2-135m", base_url=urls, tokenizer="smollm2-135m",
                score_method=method, score_end_of_turn=method == "logprob", timeout_s=600))

        print(f"{len(urls)} server worker(s), {os.cpu_count()} cores; agreement = same label "
              "as the local backend under the same rule")
        print(f"{'rung':<16} {'method':<12} {'items':>5} {'agree':>9} {'max gap':>9} "
              f"{'accuracy':>8} {'local acc':>9} {'s/item':>8} {'vs forced':>9}")
        with tempfile.TemporaryDirectory() as tmp:
            for rung in ("zero_shot", "few_shot_random"):
                prompts, items, labels = prompts_and_items(Path(tmp), rung, args.items)
                ref_bare, _ = timed_score(bare, prompts, labels)
                ref_full, local_s = timed_score(local, prompts, labels)
                forced, forced_s = timed_score(remote("forced"), prompts, labels)
                base = forced_s / len(items)
                compare("forced", rung, forced, ref_bare, items, labels, forced_s, base)
                constrained, secs = timed_score(remote("constrained"), prompts, labels)
                compare("constrained", rung, constrained, ref_full, items, labels, secs, base)
                k = args.echo_items
                if k:
                    echo, secs = timed_score(remote("logprob"), prompts[:k], labels)
                    compare("logprob", rung, echo, ref_full[:k], items[:k], labels, secs, base)
                print(f"{rung:<16} {'local fp32':<12} {len(items):>5} {'':>9} {'':>9} "
                      f"{'':>8} {'':>9} {local_s / len(items):>8.2f} "
                      f"{local_s / len(items) / base:>8.1f}x")
        print("max gap: largest |log-prob difference| of one label (nats; Q4 server vs fp32); "
              "constrained gives 0 / -100 by design")
        print(f"peak RSS of this process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
