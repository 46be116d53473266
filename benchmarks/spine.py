"""Spine benchmark: label-scoring items/s at batch 1 vs batch 8, the whole demo, peak RSS.

    python benchmarks/spine.py

Targets (issue 3): the whole demo run under 5 minutes and under 3 GiB RSS on 2 cores.
Timings swing with machine load; the batch ratio is measured within one run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mib, timer  # noqa: E402


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    os.environ["TUNEWISE_DB"] = str(tmp / "bench.db")
    from tunewise.backends.local import LocalBackend
    from tunewise.cli import demo_path
    from tunewise.ladder import run_ladder
    from tunewise.prompts import build_messages
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(demo_path("symptoms"))
    from tunewise.dataset import load_examples, make_split, task_labels

    examples = load_examples(task)
    labels = task_labels(task, examples)
    test = make_split(examples, task).test
    prompts = [build_messages(task, labels, e.input) for e in test]
    t: dict[str, float] = {}
    with timer(t, "load"):
        backend = LocalBackend(task.backend.model, batch_size=1)
    backend.score(prompts[:4], [labels] * 4)  # warm-up
    for bs in (1, 8):
        backend.batch_size = bs
        with timer(t, f"batch{bs}"):
            backend.score(prompts, [labels] * len(prompts))
    n = len(prompts)
    print(f"label scoring, {n} demo items x {len(labels)} labels (system_prompt rung)")
    for bs in (1, 8):
        print(f"  batch {bs}: {n / t[f'batch{bs}']:.1f} items/s")
    print(f"  batch 8 / batch 1 speed: {t['batch1'] / t['batch8']:.2f}x")
    with timer(t, "demo"):
        result = run_ladder(task, Store(), backend=backend, out_dir=tmp / "out", climb_all=True)
    print(f"whole demo ({len(result['rungs'])} rungs, cold cache): {t['demo']:.0f} s "
          f"(target < 300 s); model load {t['load']:.1f} s")
    for r in result["rungs"]:
        if r["status"] == "done":
            print(f"  {r['name']:<16} {r['metric']} {r['value']:.3f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (target < 3072 MiB)")


if __name__ == "__main__":
    main()
