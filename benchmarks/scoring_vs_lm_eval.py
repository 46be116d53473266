"""tunewise label scoring vs lm-evaluation-harness on the same items, model and prompts.

    pip install -e ".[bench]" && python benchmarks/scoring_vs_lm_eval.py

Zero-shot on 200 snips items: both score every label as a continuation of the same
chat-rendered prompt with the same model in float32 on CPU. lm-eval's HFLM is used as a
library (``loglikelihood`` requests), batch 8. Prints items/s for both, the ratio, and both
accuracies (goal: >= 3x, within 1 point). Second figure: 20-shot scoring with vs without
shared-prefix reuse (goal >= 2x).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, peak_rss_mib, read_jsonl, timer  # noqa: E402

N_ITEMS = int(os.environ.get("BENCH_ITEMS", "200"))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunewise.backends.local import LocalBackend, resolve_model
    from tunewise.prompts import build_messages
    from tunewise.task import TaskSpec

    rows = read_jsonl(SHARED_DATA / "snips_intents.jsonl")
    labels = sorted({r["output"] for r in rows})
    items = rows[:N_ITEMS]
    task = TaskSpec.model_validate({"name": "snips", "kind": "classification",
                                    "data": {"path": "x"}, "target": 0.8})
    prompts = [build_messages(task, labels, r["input"], system=False) for r in items]
    backend = LocalBackend("smollm2-135m", batch_size=8)
    t: dict[str, float] = {}

    backend.score(prompts[:4], [labels] * 4)
    with timer(t, "tunewise"):
        ours = backend.score(prompts, [labels] * len(prompts))
    acc_ours = sum(labels[max(range(len(labels)), key=s.logprobs.__getitem__)] == r["output"]
                   for s, r in zip(ours, items, strict=True)) / len(items)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=resolve_model("smollm2-135m"), batch_size=8, device="cpu",
              dtype="float32")
    contexts = [backend.render(p) for p in prompts]
    requests = [
        Instance(request_type="loglikelihood", doc={}, idx=j,
                 arguments=(ctx, label + backend.end_of_turn))
        for ctx in contexts for j, label in enumerate(labels)
    ]
    lm.loglikelihood(requests[: 4 * len(labels)])
    with timer(t, "lm_eval"):
        theirs = lm.loglikelihood(requests)
    acc_theirs = 0
    for i, r in enumerate(items):
        row = [theirs[i * len(labels) + j][0] for j in range(len(labels))]
        acc_theirs += labels[max(range(len(labels)), key=row.__getitem__)] == r["output"]
    acc_theirs /= len(items)
    n = len(items)
    print(f"zero-shot label scoring, {n} snips items x {len(labels)} labels, batch 8, CPU fp32")
    print(f"  lm-eval  : {n / t['lm_eval']:.2f} items/s, accuracy {acc_theirs:.3f}")
    print(f"  tunewise : {n / t['tunewise']:.2f} items/s, accuracy {acc_ours:.3f}")
    print(f"  speed ratio tunewise / lm-eval: {t['lm_eval'] / t['tunewise']:.2f}x (goal >= 3x)")
    print(f"  accuracy difference: {abs(acc_ours - acc_theirs) * 100:.1f} points (goal <= 1)")

    shots = []
    for r in rows[N_ITEMS:]:
        if len(shots) < 20:
            shots.append({"input": r["input"], "output": r["output"]})
    few = [build_messages(task, labels, r["input"], shots=shots) for r in items[:60]]
    backend.reuse_prefix = False
    with timer(t, "no_reuse"):
        backend.score(few, [labels] * len(few))
    backend.reuse_prefix = True
    with timer(t, "reuse"):
        backend.score(few, [labels] * len(few))
    print(f"20-shot scoring, {len(few)} items: prefix reuse {t['no_reuse'] / t['reuse']:.2f}x "
          f"faster than recomputing the prefix (goal >= 2x)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
