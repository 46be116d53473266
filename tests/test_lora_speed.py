"""The trainer's speed options change how the loss is computed, never its value.

Each option (the fused chunked output layer + loss, sequence packing, torch.compile) is
checked against the plain computation on the tiny random Llama: same loss, same gradients
of the trained weights, within float noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import features, spec

from tunewise.training.features import IGNORE, Feature, collate, collate_packed
from tunewise.training.lora import LoraTrainer, Speed, head_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("train_weight", [False, True])
def test_fused_head_loss_equals_linear_then_cross_entropy(train_weight: bool) -> None:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(301, 16, generator=gen, requires_grad=train_weight)
    target = torch.randint(0, 301, (37,), generator=gen)
    ref = F.cross_entropy(hidden @ weight.t(), target, reduction="sum")
    ref_grads = torch.autograd.grad(2.5 * ref, [hidden, weight][: 1 + train_weight])
    got = head_cross_entropy(hidden, weight, target, chunk=10)  # 4 chunks, the last short
    got_grads = torch.autograd.grad(2.5 * got, [hidden, weight][: 1 + train_weight])
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    for a, b in zip(got_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # evaluation: the loss alone
        assert float(head_cross_entropy(hidden, weight, target, 8)) == pytest.approx(
            float(ref), rel=1e-5)


def test_packed_collate_restarts_positions_and_masks_boundaries() -> None:
    a = Feature([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])
    b = Feature([5, 9], [IGNORE, 9])
    batch = collate_packed([a, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 5, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, IGNORE, 9]]
    assert batch["attention_mask"] is None


def loss_and_grads(tiny_model: Path, tiny_backend, speed: Speed, full: bool = False):
    """One step's loss (mean per answer token) and the trained weights' gradients."""
    import torch

    feats = features(tiny_backend, 6)
    cfg = spec(dropout=0.0, batch_size=6)
    t = LoraTrainer(str(tiny_model), cfg, feats, [], Path("x"), tiny_backend.tok.pad_token_id,
                    progress=False, speed=speed, full=full, check_memory=False)
    t._load()
    if not full:  # LoRA's B starts at zero (so A gets no gradient): give it a value
        with torch.no_grad():
            for name, p in t.peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    tensors = collate_packed(feats) if speed.pack else collate(feats, t.pad_id)
    loss, n = t.module(**tensors)
    (loss / n).backward()
    assert int(n) == sum(f.answer_tokens for f in feats)
    names = [name for name, p in t.peft_model.named_parameters() if p.requires_grad]
    grads = {name: p.grad.clone() for name, p in t.peft_model.named_parameters()
             if p.requires_grad}
    assert names and all(g.abs().sum() > 0 for g in grads.values())
    return float(loss) / int(n), grads


@pytest.mark.parametrize("speed", [Speed(ce_chunk=7), Speed(pack=True),
                                   Speed(ce_chunk=64, pack=True)], ids=["chunked", "packed",
                                                                        "both"])
def test_speed_options_leave_loss_and_gradients_unchanged(tiny_model: Path, tiny_backend,
                                                          speed: Speed) -> None:
    import torch

    ref_loss, ref_grads = loss_and_grads(tiny_model, tiny_backend, Speed())
    loss, grads = loss_and_grads(tiny_model, tiny_backend, speed)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6, rtol=1e-3), name


def test_fused_head_trains_the_tied_output_layer_in_a_full_fine_tune(tiny_model: Path,
                                                                       tiny_backend) -> None:
    import torch

    ref_loss, ref_grads = loss_and_grads(tiny_model, tiny_backend, Speed(), full=True)
    loss, grads = loss_and_grads(tiny_model, tiny_backend, Speed(ce_chunk=5), full=True)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    embed = next(n for n in grads if "embed_tokens" in n)
    assert torch.allclose(grads[embed], ref_grads[embed], atol=1e-6, rtol=1e-3)
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], atol=1e-6, rtol=1e-3), name


def step_grads(tiny_model: Path, tiny_backend, speed: Speed):
    """The loss and gradients of one optimizer step over 6 features (one micro-batch)."""
    import torch

    feats = features(tiny_backend, 6)
    t = LoraTrainer(str(tiny_model), spec(dropout=0.0, batch_size=6), feats, [], Path("x"),
                    tiny_backend.tok.pad_token_id, progress=False, speed=speed,
                    check_memory=False)
    t._load()
    t.scheduler = torch.optim.lr_scheduler.LambdaLR(t.optimizer, lambda _: 1.0)
    with torch.no_grad():
        for name, p in t.peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    seen: dict[str, object] = {}
    t.optimizer.step = lambda: seen.update(  # type: ignore[method-assign]
        {n: p.grad.clone() for n, p in t.peft_model.named_parameters() if p.requires_grad})
    parts: list[int] = []
    forward = t.module.forward
    t.module.forward = lambda **kw: (parts.append(kw["input_ids"].shape[0]), forward(**kw))[1]
    loss, tokens, answer = t._train_step([list(range(6))])
    return loss, seen, parts


def test_token_budget_splits_a_micro_batch_without_changing_the_step(tiny_model: Path,
                                                                      tiny_backend) -> None:
    import torch

    loss, grads, parts = step_grads(tiny_model, tiny_backend, Speed(max_tokens=None))
    longest = max(len(f.input_ids) for f in features(tiny_backend, 6))
    split_loss, split_grads, split_parts = step_grads(
        tiny_model, tiny_backend, Speed(max_tokens=3 * longest))
    assert parts == [6] and split_parts == [3, 3]
    assert split_loss == pytest.approx(loss, rel=1e-5)
    for name, g in grads.items():
        assert torch.allclose(split_grads[name], g, atol=1e-6, rtol=1e-3), name
