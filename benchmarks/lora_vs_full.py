"""LoRA vs a full fine-tune on the E2E records: quality with CI, train tokens/s, peak RSS,
artefact size. Same model (SmolLM2-135M), data, prompt, batches and schedule.

    python benchmarks/lora_vs_full.py [--steps N]   # full run: ~1 h on 2 busy CPU cores

Runs ``examples/e2e/task.yaml`` (grouped split: test records never seen in training) with
the rungs ``lora`` and ``full_ft`` in one ladder, which trains LoRA first (so its peak RSS
is its own; the full fine-tune needs more, so its peak is its own too) and adds the paired
bootstrap of full_ft against lora. ``--steps`` bounds both trainings for a quick look.
Absolute times depend on the machine's load; the ratios in one run are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="max optimizer steps each")
    args = parser.parse_args()
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    task = load_task(REPO / "examples" / "e2e" / "task.yaml")
    task.lora.curve = []
    if args.steps:
        task.lora.max_steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TUNEWISE_ADAPTERS", str(Path(tmp) / "adapters"))
        result = run_ladder(task, Store(Path(tmp) / "store.db"), out_dir=Path(tmp) / "out",
                            climb_all=True, rungs=["lora", "full_ft"])
    by = {r["name"]: r for r in result["rungs"]}
    rows = {}
    for name in ("lora", "full_ft"):
        r, info = by[name], by[name]["info"]
        rows[name] = {
            "exact_match": round(r["value"], 3), "ci": [round(r["ci_low"], 3),
                                                        round(r["ci_high"], 3)],
            "field_f1": round(r["secondary"]["field_f1"]["value"], 3),
            "train_tokens_per_s": round(info["train_tokens"] / info["train_seconds"], 1),
            "train_seconds": info["train_seconds"], "peak_rss_mb": info["peak_rss_mb"],
            "artefact_mb": round(info["artefact_bytes"] / 2**20, 1),
            "trainable_params": info["trainable_params"],
            # lora's check is the run's; full_ft's is its own (None when it did not run,
            # never lora's number under full_ft's name)
            "forgetting_diff": ((result.get("forgetting") if name == "lora"
                                 else info.get("forgetting")) or {}).get("diff"),
        }
    out = {"rungs": rows, "full_ft_vs_lora": by["full_ft"]["info"].get("vs_lora"),
           "verdict": [x for x in result["verdict"]["reasons"] if "full fine-tune" in x]}
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
