"""tunewise label scoring vs lm-evaluation-harness on the same items, model and prompts.

    pip install -e ".[bench]"
    python benchmarks/scoring_vs_lm_eval.py [--items 200] [--rounds 3] [--threads 1]

Zero-shot on SNIPS items: both score every label as a continuation of the same
chat-rendered prompt with the same model in float32 on CPU. lm-eval's HFLM is used as a
library (``loglikelihood`` requests), batch 8. The two run in interleaved rounds in this
process; printed: items/s of each (median [min, max]), the ratio, and both accuracies (goal:
>= 3x, within 1 point). Second figure: 20-shot scoring with vs without shared-prefix reuse,
interleaved the same way (goal >= 5x), and reuse with the prefix attended as one tensor vs
copied into each batch's cache. ``--skip-lm-eval`` runs only the second.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, Side, compare, interleave, parser, read_jsonl, session  # noqa: E402,I001


def argmax_label(labels: list[str], scores: list[float]) -> str:
    return labels[max(range(len(labels)), key=scores.__getitem__)]


def main() -> None:
    ap = parser(__doc__, items=200)
    ap.add_argument("--shot-items", type=int, default=60, help="items of the 20-shot figure")
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-lm-eval", action="store_true")
    args = ap.parse_args()
    with session(args):
        run(args)


def run(args) -> None:
    from tunewise.backends.local import LocalBackend, resolve_model
    from tunewise.prompts import build_messages
    from tunewise.task import TaskSpec

    rows = read_jsonl(SHARED_DATA / "snips_intents.jsonl")
    labels = sorted({r["output"] for r in rows})
    items = rows[: args.items]
    task = TaskSpec.model_validate({"name": "snips", "kind": "classification",
                                    "data": {"path": "x"}, "target": 0.8})
    prompts = [build_messages(task, labels, r["input"], system=False) for r in items]
    backend = LocalBackend("smollm2-135m", batch_size=args.batch_size)
    n, bs = len(items), args.batch_size
    last: dict[str, list] = {}

    def ours() -> int:
        last["ours"] = backend.score(prompts, [labels] * n)
        return n

    if not args.skip_lm_eval:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=resolve_model("smollm2-135m"), batch_size=bs, device="cpu",
                  dtype="float32")
        requests = [
            Instance(request_type="loglikelihood", doc={}, idx=j,
                     arguments=(backend.render(p), label + backend.end_of_turn))
            for p in prompts for j, label in enumerate(labels)
        ]

        def theirs() -> int:
            last["theirs"] = lm.loglikelihood(requests)
            return n

        a, b = interleave([Side("tunewise", ours), Side("lm-eval", theirs)], args.rounds)
        compare(f"zero-shot label scoring, {n} SNIPS items x {len(labels)} labels, batch {bs}, "
                "CPU fp32", a, b, ">= 3x")
        acc_ours = sum(argmax_label(labels, s.logprobs) == r["output"]
                       for s, r in zip(last["ours"], items, strict=True)) / n
        k = len(labels)
        acc_theirs = sum(
            argmax_label(labels, [last["theirs"][i * k + j][0] for j in range(k)]) == r["output"]
            for i, r in enumerate(items)) / n
        print(f"  accuracy tunewise {acc_ours:.3f}, lm-eval {acc_theirs:.3f}: difference "
              f"{abs(acc_ours - acc_theirs) * 100:.1f} points (goal <= 1)")
        del lm

    shots = [{"input": r["input"], "output": r["output"]}
             for r in rows[len(rows) - args.shots:]]
    few = [build_messages(task, labels, r["input"], shots=shots)
           for r in rows[: args.shot_items]]

    def scorer(reuse: bool, shared: bool = True):
        def go() -> int:
            backend.reuse_prefix = reuse
            backend.share_prefix_attention = shared
            backend.score(few, [labels] * len(few))
            return len(few)
        return go

    a, b, c = interleave([Side("reuse", scorer(True)), Side("no reuse", scorer(False)),
                          Side("reuse, prefix copied per batch", scorer(True, False))],
                         args.rounds)
    compare(f"{args.shots}-shot scoring, {len(few)} items, batch {bs}: shared-prefix reuse",
            a, b, ">= 5x")
    compare("the same, prefix attended as one tensor vs appended to per batch", a, c)


if __name__ == "__main__":
    main()
