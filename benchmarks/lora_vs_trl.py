"""tunewise's LoRA trainer vs TRL's SFTTrainer: same model, LoRA config and batches.

    pip install -e ".[bench]"          # trl
    python benchmarks/lora_vs_trl.py [--steps 30] [--rounds 3] [--threads 1]

Both train SmolLM2-135M-Instruct with LoRA r=8, alpha=16, dropout 0.05 on q/k/v/o, AdamW
(lr 1e-3 constant, no weight decay, grad-norm clip 1.0), float32 on CPU, on the same
``--steps`` batches of 8 e2e training examples in the same order (tunewise's length-bucketed
batches; TRL is given them through a sequential sampler), with loss on the answer tokens only.
TRL runs with gradient checkpointing off (its default is on, which trades time for memory).

Each training runs in its own process, so peak RSS is its own; the two trainers alternate in
rounds (TRL, tunewise, then tunewise, TRL, ...) so load drift on a shared machine lands on
both. Printed per side: non-padding train tokens per second and peak RSS as median [min, max]
over the rounds, the final train loss (mean of the last 5 steps), and the ratios tunewise /
TRL paired round by round. Model loading is outside the timed part.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, read_jsonl, session, spread  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
E2E = REPO.parent / "shared" / "data" / "e2e_records.jsonl"
BATCH, LR = 8, 1e-3
STEPS = 30  # set from --steps in each process


def batches() -> tuple[object, list[list[object]]]:
    """The local backend and 30 full batches of features, in tunewise's bucketed order."""
    from tunewise.backends.local import LocalBackend
    from tunewise.training.features import encode_all, length_batches

    backend = LocalBackend("smollm2-135m", batch_size=BATCH)
    rows = read_jsonl(E2E)
    random.Random(0).shuffle(rows)
    rows = rows[: STEPS * BATCH + 64]
    prompts = [[{"role": "user", "content": r["input"]}] for r in rows]
    feats, _ = encode_all(backend, prompts, [r["output"] for r in rows], 1024)
    order = length_batches([len(f.input_ids) for f in feats], BATCH, seed=0)
    full = [b for b in order if len(b) == BATCH][:STEPS]
    return backend, [[feats[i] for i in b] for b in full]


def spec():
    from tunewise.task import LoraSpec

    return LoraSpec(r=8, alpha=16, dropout=0.05, lr=LR, batch_size=BATCH, patience=0)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tunewise(out: Path) -> dict:
    import torch

    from tunewise.backends.local import resolve_model
    from tunewise.training.lora import LoraTrainer

    backend, groups = batches()
    flat = [f for g in groups for f in g]
    trainer = LoraTrainer(resolve_model("smollm2-135m"), spec(), flat, [], out,
                          backend.tok.pad_token_id, progress=False)
    del backend
    trainer._load()
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
    trainer.train_feats = flat
    trainer.module.train()
    losses, tokens = [], 0
    start = time.perf_counter()
    for i in range(STEPS):
        idx = list(range(i * BATCH, (i + 1) * BATCH))
        loss, n_tokens, _ = trainer._train_step([idx])
        losses.append(loss)
        tokens += n_tokens
    wall = time.perf_counter() - start
    return {"tokens": tokens, "seconds": wall, "losses": losses, "rss_mb": peak_rss_mb()}


def run_trl(out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tunewise.backends.local import resolve_model
    from tunewise.training.features import IGNORE

    backend, groups = batches()
    tok = backend.tok
    del backend
    rows = [{"input_ids": f.input_ids,
             "completion_mask": [int(x != IGNORE) for x in f.labels]}
            for g in groups for f in g]
    tokens = sum(len(r["input_ids"]) for r in rows)
    data = Dataset.from_list(rows)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"),
                                                 dtype=torch.float32)
    s = spec()
    peft_config = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                             target_modules=list(s.target_modules), bias="none",
                             task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH,
                     gradient_accumulation_steps=1, max_steps=STEPS, learning_rate=LR,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     max_grad_norm=1.0, optim="adamw_torch", logging_steps=1,
                     save_strategy="no", report_to="none", seed=0, use_cpu=True,
                     bf16=False, gradient_checkpointing=False, completion_only_loss=True,
                     max_length=1024, dataloader_num_workers=0, disable_tqdm=True)
    times: dict[str, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            times["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            times["end"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(SFTTrainer):
        """The same batches in the same order as tunewise (no shuffling)."""

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    trainer = InOrder(model=model, args=args, train_dataset=data, processing_class=tok,
                      peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    return {"tokens": tokens, "seconds": times["end"] - times["start"], "losses": losses,
            "rss_mb": peak_rss_mb()}


def child(impl: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--impl", impl, "--steps", str(args.steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    global STEPS
    ap = parser(__doc__, steps=30)
    ap.add_argument("--impl", choices=["tunewise", "trl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    STEPS = args.steps
    if args.impl:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            run = run_tunewise if args.impl == "tunewise" else run_trl
            print(json.dumps(run(Path(tmp))))
        return
    with session(args):
        compare_trainers(args)


def compare_trainers(args: argparse.Namespace) -> None:
    runs: dict[str, list[dict]] = {"trl": [], "tunewise": []}
    for r in range(args.rounds):
        for impl in ("trl", "tunewise") if r % 2 == 0 else ("tunewise", "trl"):
            runs[impl].append(child(impl, args))
    print(f"{STEPS} steps x {BATCH} e2e examples, SmolLM2-135M, LoRA r=8 q/k/v/o, fp32 CPU, "
          f"{runs['trl'][0]['tokens']} non-padding tokens, {args.rounds} rounds")
    rates = {k: [x["tokens"] / x["seconds"] for x in v] for k, v in runs.items()}
    rss = {k: [x["rss_mb"] for x in v] for k, v in runs.items()}
    for impl in ("trl", "tunewise"):
        last = [sum(x["losses"][-5:]) / len(x["losses"][-5:]) for x in runs[impl]]
        print(f"  {impl:<8} tokens/s {spread(rates[impl])}, peak RSS MiB {spread(rss[impl])}, "
              f"loss (last 5) {spread(last)}, loss (step 1) {runs[impl][0]['losses'][0]:.4f}")
    speed = [a / b for a, b in zip(rates["tunewise"], rates["trl"], strict=True)]
    mem = [a / b for a, b in zip(rss["tunewise"], rss["trl"], strict=True)]
    print(f"  ratio tunewise / TRL: tokens/s {spread(speed)}x (goal >= 2x), "
          f"peak RSS {spread(mem)}x (goal <= 0.8x)")


if __name__ == "__main__":
    main()
