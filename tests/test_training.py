"""The LoRA trainer on a tiny randomly initialised model: masking, batching, loss, resume.

The model is a 2-layer Llama (hidden 64) with SmolLM2's tokenizer, built in the test, so
these tests exercise the real training code in seconds without the real model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import e2e_rows, write_jsonl
from training_helpers import features, spec

from tunewise.training.features import IGNORE, Feature, collate, encode_all, length_batches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _adapters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEWISE_ADAPTERS", str(tmp_path / "adapters"))


# ---- features ---------------------------------------------------------------------------
def test_prompt_is_masked_and_answer_ends_with_end_of_turn(tiny_backend) -> None:
    row = e2e_rows(1)[0]
    msgs = [{"role": "user", "content": row["input"]}]
    (f,), _ = encode_all(tiny_backend, [msgs], [row["output"]], 512)
    tok = tiny_backend.tok
    prompt_ids = tok(tiny_backend.render(msgs), add_special_tokens=False).input_ids
    n = len(prompt_ids)
    # the prompt is exactly what the backend sends at prediction time, and carries no loss
    assert f.input_ids[:n] == prompt_ids
    assert f.labels[:n] == [IGNORE] * n
    # the answer carries the loss, and ends with the token that ends generation
    answer = f.labels[n:]
    assert answer == f.input_ids[n:]
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer) == row["output"] + "<|im_end|>"
    assert f.answer_tokens == len(answer)


def test_too_long_examples_are_skipped_not_cut(tiny_backend) -> None:
    rows = e2e_rows(5)
    prompts = [[{"role": "user", "content": r["input"]}] for r in rows]
    prompts[2] = [{"role": "user", "content": "word " * 300}]
    feats, skipped = encode_all(tiny_backend, prompts, [r["output"] for r in rows], 128)
    assert skipped == 1 and len(feats) == 4
    assert all(len(f.input_ids) <= 128 for f in feats)


def test_length_batches_cover_everything_once_with_less_padding() -> None:
    import random

    lengths = [random.Random(i).randint(10, 200) for i in range(203)]
    batches = length_batches(lengths, 8, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(203))
    assert length_batches(lengths, 8, seed=3) == batches
    assert length_batches(lengths, 8, seed=4) != batches

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    order = list(range(203))
    random.Random(0).shuffle(order)
    naive = [order[i : i + 8] for i in range(0, 203, 8)]
    assert padding(batches) < padding(naive) / 3


def test_collate_pads_right_and_masks_padding() -> None:
    a = Feature([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])
    b = Feature([5, 9], [IGNORE, 9])
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, 9, IGNORE, IGNORE]]


# ---- the loop ---------------------------------------------------------------------------
def test_answer_only_loss_equals_the_full_forward_loss(tiny_model: Path, tiny_backend) -> None:
    """The fast path (logits at answer positions only) computes the standard loss."""
    import torch

    from tunewise.training.lora import LoraTrainer

    feats = features(tiny_backend, 6)
    t = LoraTrainer(str(tiny_model), spec(), feats, [], Path("x"), tiny_backend.tok.pad_token_id)
    t._load()
    assert t.accelerator.unwrap_model(t.module).fast
    batch = collate(feats, tiny_backend.tok.pad_token_id)
    with torch.no_grad():
        loss_sum, n = t.module(**batch)
        reference = t.peft_model(**batch).loss
    assert int(n) == sum(f.answer_tokens for f in feats)
    assert float(loss_sum) / int(n) == pytest.approx(float(reference), rel=1e-4)


def test_training_lowers_the_loss_and_saves_adapter_and_log(tiny_model: Path,
                                                            tiny_backend, tmp_path) -> None:
    from tunewise.training.lora import LOG_FILE, LoraTrainer

    feats = features(tiny_backend, 24)
    out = tmp_path / "run"
    log = LoraTrainer(str(tiny_model), spec(epochs=6, lr=5e-2), feats, feats[:8], out,
                      tiny_backend.tok.pad_token_id, progress=False).train()
    losses = [s["loss"] for s in log["steps"]]
    assert len(losses) == 6 * 6  # 24 examples / batch 4 = 6 steps per epoch
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.1  # a random model learns slowly
    assert log["epochs"][-1]["dev_loss"] < log["epochs"][0]["dev_loss"]
    assert log["examples_seen"] == 6 * 24
    assert log["train_tokens"] == 6 * sum(len(f.input_ids) for f in feats)
    assert log["train_seconds"] > 0 and log["done"] and log["precision"] == "fp32"
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / LOG_FILE).read_text())["steps_done"] == 36
    assert not (out / "checkpoint.pt").exists()


def test_grad_accum_and_max_steps_set_the_step_count(tiny_model: Path, tiny_backend,
                                                     tmp_path) -> None:
    from tunewise.training.lora import LoraTrainer

    feats = features(tiny_backend, 20)  # 5 micro-batches of 4
    log = LoraTrainer(str(tiny_model), spec(epochs=3, grad_accum=2, max_steps=7), feats, [],
                      tmp_path / "a", tiny_backend.tok.pad_token_id, progress=False).train()
    assert log["total_steps"] == 7  # min(3 epochs x ceil(5/2), 7)
    assert log["steps_done"] == 7
    assert log["dev_loss"] is None


def test_early_stopping_restores_the_best_epoch(tiny_model: Path, tiny_backend, tmp_path,
                                                monkeypatch) -> None:
    from tunewise.training.lora import LoraTrainer

    feats = features(tiny_backend, 8)
    dev_losses = iter([2.0, 1.0, 1.5, 1.7, 1.9])
    monkeypatch.setattr(LoraTrainer, "dev_loss", lambda self: next(dev_losses))
    log = LoraTrainer(str(tiny_model), spec(epochs=5, patience=2), feats, feats[:2],
                      tmp_path / "a", tiny_backend.tok.pad_token_id, progress=False).train()
    assert [e["dev_loss"] for e in log["epochs"]] == [2.0, 1.0, 1.5, 1.7]
    assert log["stopped_early"] and log["restored_best_epoch"]
    assert log["dev_loss"] == 1.0 and log["epochs_done"] == 4


def test_interrupted_training_resumes_exactly(tiny_model: Path, tiny_backend, tmp_path) -> None:
    """Stopping at step 5 and resuming gives the same losses as never stopping."""
    from tunewise.training.lora import LoraTrainer

    feats = features(tiny_backend, 24)
    pad = tiny_backend.tok.pad_token_id
    cfg = spec(epochs=2, dropout=0.1)
    full = LoraTrainer(str(tiny_model), cfg, feats, feats[:4], tmp_path / "full", pad,
                       progress=False).train()

    def stop_at_5(trainer: LoraTrainer) -> None:
        if trainer.step == 5:
            trainer.request_stop()

    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        LoraTrainer(str(tiny_model), cfg, feats, feats[:4], out, pad, progress=False,
                    on_step=stop_at_5).train()
    assert (out / "checkpoint.pt").is_file()
    resumed = LoraTrainer(str(tiny_model), cfg, feats, feats[:4], out, pad,
                          progress=False).train()
    assert resumed["resumed_from_step"] == [5]
    assert [s["loss"] for s in resumed["steps"]] == pytest.approx(
        [s["loss"] for s in full["steps"]], rel=1e-5)
    assert resumed["dev_loss"] == pytest.approx(full["dev_loss"], rel=1e-5)


def test_adapter_cache_is_content_addressed(tiny_model: Path, tiny_backend) -> None:
    from tunewise.training.adapters import adapter_key, train_or_load

    feats = features(tiny_backend, 12)
    pad = tiny_backend.tok.pad_token_id
    cfg = spec(epochs=1)
    first = train_or_load("tiny", str(tiny_model), cfg, feats, [], pad, progress=False)
    again = train_or_load("tiny", str(tiny_model), cfg, feats, [], pad, progress=False)
    assert first.trained_now and not again.trained_now
    assert again.path == first.path and again.log["steps_done"] == first.log["steps_done"]
    key = adapter_key("tiny", cfg, feats, [])
    assert adapter_key("tiny", cfg.model_copy(update={"r": 4}), feats, []) != key
    assert adapter_key("tiny", cfg, feats[:-1], []) != key
    assert adapter_key("other-model", cfg, feats, []) != key
    # settings that do not change the weights do not change the key
    assert adapter_key("tiny", cfg.model_copy(update={"checkpoint_every": 3, "curve": []}),
                       feats, []) == key


# ---- Ctrl-C on the real command (acceptance 4) -------------------------------------------
def test_sigint_saves_a_checkpoint_and_rerun_resumes(tiny_model: Path, tmp_path) -> None:
    write_jsonl(tmp_path / "data.jsonl", e2e_rows(150))
    task = {"name": "e2e-tiny", "kind": "extraction", "data": {"path": "data.jsonl"},
            "target": 0.5, "split": {"test": 10, "dev": 10, "seed": 0},
            "backend": {"kind": "local", "model": str(tiny_model)},
            "lora": {"epochs": 40, "batch_size": 4, "checkpoint_every": 3, "max_steps": 60,
                     "patience": 0}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    env = {**os.environ, "TUNEWISE_ADAPTERS": str(tmp_path / "adapters"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tunewise.cli", "train", "task.yaml", "--json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / "adapters").glob("*/checkpoint.pt")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    (ckpt,) = (tmp_path / "adapters").glob("*/checkpoint.pt")
    assert not (ckpt.parent / "training_log.json").exists()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["trained_now"] and summary["steps"] == 60
    assert len(summary["resumed_from_step"]) == 1 and summary["resumed_from_step"][0] >= 3
    assert "resuming from checkpoint" in done.stderr
    assert not ckpt.exists()
    log = json.loads((ckpt.parent / "training_log.json").read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, 61))  # no step lost or repeated
