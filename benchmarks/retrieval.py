"""Retrieval benchmark on the 700 CoQA stories: build speed, query latency, recall@5.

    python benchmarks/retrieval.py [--chunk-tokens 32] [--overlap 8] [--k 5] [--whole-docs]

Prints, for BM25 alone, dense alone and hybrid (reciprocal rank fusion) side by side:
index build docs/s, query latency p50/p95 (one question at a time, as a rung asks them;
dense and hybrid include embedding the question), and document-level recall@k and MRR@k
against each question's ``source_id``. Ratios are against BM25 measured in the same run
(the machine is shared, so absolute seconds are noise). Ends with peak RSS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import read_jsonl, session  # noqa: E402

from tunewise.dataset import Document  # noqa: E402
from tunewise.evaluate import retrieval_scores  # noqa: E402
from tunewise.retrieval.embeddings import Embedder  # noqa: E402
from tunewise.retrieval.index import RetrievalIndex  # noqa: E402
from tunewise.task import RetrievalSpec  # noqa: E402

METHODS = ("bm25", "dense", "hybrid")


def load() -> tuple[list[Document], list[dict]]:
    """The CoQA stories (corpus) and questions (with source_id)."""
    stories, questions = (read_jsonl(DATA / f"coqa_{name}.jsonl")
                          for name in ("stories", "questions"))
    return [Document(s["id"], s["text"]) for s in stories], questions


def bench(docs: list[Document], questions: list[dict], chunk_tokens: int, overlap: int,
          k: int, latency_sample: int) -> dict[str, dict[str, float]]:
    """Build each part in a fresh folder, then time queries and score recall."""
    embedder = Embedder(cache_dir=None)  # no disk memo: every vector is really computed
    out: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        index, report = RetrievalIndex.open(docs, Path(root), chunk_tokens=chunk_tokens,
                                            overlap=overlap, method="bm25",
                                            embedder=lambda: embedder, show_progress=False)
        bm25_s = time.perf_counter() - t
        t = time.perf_counter()
        index, _ = RetrievalIndex.open(docs, Path(root), chunk_tokens=chunk_tokens,
                                       overlap=overlap, method="hybrid",
                                       embedder=lambda: embedder, show_progress=True)
        dense_s = time.perf_counter() - t
        t = time.perf_counter()
        _, hit = RetrievalIndex.open(docs, Path(root), chunk_tokens=chunk_tokens,
                                     overlap=overlap, method="hybrid",
                                     embedder=lambda: embedder)
        reopen_s = time.perf_counter() - t
        print(f"{len(docs)} stories -> {report.chunks} chunks of {chunk_tokens} tokens "
              f"(overlap {overlap}); re-open with the same corpus: {hit.status}, "
              f"{reopen_s:.2f} s")
        out["bm25"]["build_docs_s"] = len(docs) / bm25_s
        out["dense"]["build_docs_s"] = len(docs) / dense_s
        out["hybrid"]["build_docs_s"] = len(docs) / (bm25_s + dense_s)
        texts = [q["input"] for q in questions]
        gold = [q["source_id"] for q in questions]
        sample = texts[:latency_sample]
        for method in METHODS:
            lat = []
            for q in sample:
                t = time.perf_counter()
                index.search([q], k, method)
                lat.append(time.perf_counter() - t)
            out[method]["p50_ms"] = float(np.percentile(lat, 50) * 1000)
            out[method]["p95_ms"] = float(np.percentile(lat, 95) * 1000)
            scores = retrieval_scores(index.search_docs(texts, k, method), gold, k)
            out[method]["recall"] = scores[f"recall@{k}"]["value"]
            out[method]["recall_ci"] = (scores[f"recall@{k}"]["ci_low"],
                                        scores[f"recall@{k}"]["ci_high"])
            out[method]["mrr"] = scores[f"mrr@{k}"]["value"]
    return out


def show(results: dict[str, dict[str, float]], k: int) -> None:
    """One row per method; ratios against BM25 from the same run."""
    base = results["bm25"]
    print(f"{'method':<8} {'build docs/s':>13} {'x bm25':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'x bm25':>7} {f'recall@{k}':>10} {'95% CI':>15} {f'MRR@{k}':>7}")
    for method, r in results.items():
        lo, hi = r["recall_ci"]
        print(f"{method:<8} {r['build_docs_s']:>13.1f} "
              f"{r['build_docs_s'] / base['build_docs_s']:>7.3f} {r['p50_ms']:>8.2f} "
              f"{r['p95_ms']:>8.2f} {r['p50_ms'] / base['p50_ms']:>7.1f} {r['recall']:>10.3f} "
              f"{f'[{lo:.3f}, {hi:.3f}]':>15} {r['mrr']:>7.3f}")
    best_single = max(results["bm25"]["recall"], results["dense"]["recall"])
    verdict = "meets" if results["hybrid"]["recall"] >= best_single else "is BELOW"
    print(f"hybrid recall@{k} {results['hybrid']['recall']:.3f} {verdict} the better single "
          f"retriever ({best_single:.3f})")


def main() -> None:
    """Parse options, run, print."""
    defaults = RetrievalSpec()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk-tokens", type=int, default=defaults.chunk_tokens)
    ap.add_argument("--overlap", type=int, default=defaults.overlap)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--latency-sample", type=int, default=200,
                    help="questions timed one at a time per method")
    ap.add_argument("--whole-docs", action="store_true",
                    help="also index whole stories (one chunk per story)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with session():
        docs, questions = load()
        show(bench(docs, questions, args.chunk_tokens, args.overlap, args.k,
                   args.latency_sample), args.k)
        if args.whole_docs:
            print()
            show(bench(docs, questions, 100_000, 0, args.k, args.latency_sample), args.k)


if __name__ == "__main__":
    main()
