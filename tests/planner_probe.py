"""Train the bundled model a few steps in a fresh process and print what it measured.

Run by tests/test_planner.py (integration) as
``python tests/planner_probe.py METHOD STEPS OUT_DIR E2E_JSONL``:
a fresh process, so its peak RSS is the trainer's alone. Features are built with the
tokenizer only (no second copy of the model), the way the lora rung builds them.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from transformers import AutoTokenizer

from tunewise.backends.local import resolve_model
from tunewise.task import LoraSpec
from tunewise.training.features import encode
from tunewise.training.lora import LoraTrainer


def main(method: str, steps: int, out: str, data: str) -> None:
    import torch

    torch.set_num_threads(1)
    path = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(x) for x in Path(data).read_text().splitlines() if x]
    random.Random(0).shuffle(rows)

    def render(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def tokenize(text):
        return tok(text, add_special_tokens=False).input_ids

    feats = [encode(render, tokenize, tok.eos_token, [{"role": "user", "content": r["input"]}],
                    r["output"]) for r in rows[:64]]
    spec = LoraSpec(max_steps=steps, epochs=1, batch_size=8, patience=0,
                    lr=1e-5 if method == "full" else 1e-3)
    trainer = LoraTrainer(path, spec, feats, [], Path(out), tok.pad_token_id, progress=False,
                          full=method == "full", check_memory=False)
    log = trainer.train()
    lengths = [len(f.input_ids) for f in feats]
    print(json.dumps({"peak_rss_mb": log["peak_rss_mb"], "seq_len": max(lengths),
                      "mean_len": sum(lengths) / len(lengths), "batch_size": 8,
                      "train_tokens": log["train_tokens"],
                      "train_seconds": log["train_seconds"],
                      "artefact_bytes": log["artefact_bytes"]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
