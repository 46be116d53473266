"""Roofline: tunewise label scoring against plain-torch prefill of the same tokens.

    python benchmarks/roofline.py [--items 96] [--rounds 3] [--threads 1] [--shots 0]

The same SmolLM2 model in float32, the same items and batch size. Each item's work is its
rendered prompt followed by every label's tokens but the last (a label's last token is only
predicted, never read): the tokens scoring must put through the model. Both sides are
credited with those tokens, so tokens/s compare directly. The roofline side is the bare
model forward over those sequences in batches (``model(input_ids)``, right-padded, default
causal attention, no mask built, no log-softmax), keeping the last logit only as a prefill
does (the roofline) and, as a second line, every logit: the throughput the hardware gives
this model on these lengths. The tunewise side is ``LocalBackend.score`` end to end
(chat template, tokenizer, tree mask, prefix reuse, log-probs). Printed: tokens/s of each,
median [min, max] over interleaved rounds, and tunewise's share of the roofline (goal >= 85%).
A last line scores without prefix reuse, so both sides push the same tokens through the
model: what remains is tunewise's own overhead. ``--shots`` adds that many fixed shots to
every prompt (prefix reuse then does most of the work, and the share can pass 100%).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, Side, compare, interleave, parser, read_jsonl, session  # noqa: E402,I001


def main() -> None:
    ap = parser(__doc__, items=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--shots", type=int, default=0)
    args = ap.parse_args()
    with session(args):
        run(args)


def run(args) -> None:
    import torch

    from tunewise.backends.local import LocalBackend
    from tunewise.prompts import build_messages
    from tunewise.task import TaskSpec

    rows = read_jsonl(SHARED_DATA / "snips_intents.jsonl")
    labels = sorted({r["output"] for r in rows})
    items = rows[: args.items]
    task = TaskSpec.model_validate({"name": "snips", "kind": "classification",
                                    "data": {"path": "x"}, "target": 0.8})
    shots = [{"input": r["input"], "output": r["output"]}
             for r in rows[len(rows) - args.shots:]] if args.shots else []
    prompts = [build_messages(task, labels, r["input"], shots=shots, system=bool(shots))
               for r in items]
    backend = LocalBackend("smollm2-135m", batch_size=args.batch_size)
    model, bs = backend.model, args.batch_size
    label_ids = [backend._choice_ids(c) for c in labels]
    seqs = [backend._encode(backend.render(p)) + [t for c in label_ids for t in c[:-1]]
            for p in prompts]
    tokens = sum(len(s) for s in seqs)
    pad = backend.tok.pad_token_id
    batches = []
    for b in range(0, len(seqs), bs):
        part = seqs[b : b + bs]
        width = max(len(s) for s in part)
        batches.append(torch.tensor([s + [pad] * (width - len(s)) for s in part]))

    def plain(keep: int) -> Callable[[], int]:
        def go() -> int:
            with torch.inference_mode():
                for x in batches:
                    model(input_ids=x, use_cache=False, logits_to_keep=keep)
            return tokens
        return go

    def ours(reuse: bool) -> Callable[[], int]:
        def go() -> int:
            backend.reuse_prefix = reuse
            backend.score(prompts, [labels] * len(prompts))
            return tokens
        return go

    sides = interleave([Side("tunewise", ours(True), "tokens/s"),
                        Side("prefill", plain(1), "tokens/s"),
                        Side("prefill+logits", plain(0), "tokens/s"),
                        Side("tunewise, no prefix reuse", ours(False), "tokens/s")],
                       args.rounds)
    lengths = sorted(len(s) for s in seqs)
    title = (f"{len(items)} SNIPS items ({args.shots} shots) x {len(labels)} labels, batch {bs}, "
             f"{tokens} tokens, {lengths[0]}-{lengths[-1]} a sequence, fp32 CPU")
    compare(f"{title}: share of plain prefill (last logit only: the roofline)",
            sides[0], sides[1], ">= 0.85x")
    compare("share of plain prefill with every logit (what a naive scorer computes)",
            sides[0], sides[2])
    compare("tunewise without prefix reuse (the same tokens as the prefill: its overhead)",
            sides[3], sides[1])

if __name__ == "__main__":
    main()
