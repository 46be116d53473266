"""The planner against published memory tables measured by others (besides the QLoRA paper
and the HF Model Memory Utility checked in test_planner.py). Each figure is quoted with
its setting; the planner is run in that setting.

- PEFT README, "High performance on consumer hardware" (huggingface/peft): fp32 training
  on an A100 80GB, ought/raft/twitter_complaints (batch 8, short texts):
  bigscience/T0_3B (3B) full fine-tune 47.14 GB, LoRA 14.4 GB; bigscience/bloomz-7b1 (7B)
  full fine-tune OOM, LoRA 32 GB; bigscience/mt0-xxl (12.9B) full OOM, LoRA 56 GB.
- LitGPT resource tables (Lightning-AI/litgpt, tutorials/resource-tables.md, 2023-10-20):
  bf16-true on an A100 40GB, Alpaca (longest example 1304 Llama-2 tokens), micro-batch 1,
  no gradient checkpointing: Llama 2 7B LoRA 21.30 GB, with bnb.nf4-dq (QLoRA) 13.84 GB.
- LLaMA-Factory README, hardware requirement (estimates): per billion parameters a full
  pure-bf16 fine-tune takes 8 GB (60 GB for 7B), LoRA on 16-bit weights 2 GB (16 GB for 7B).
"""

from __future__ import annotations

import pytest

from tunewise.planner import GB, KNOWN, Workload, estimate, resolve_shape, shape_from_size

PEFT = Workload(seq_len=64, batch_size=8)  # twitter_complaints: short inputs, batch 8


@pytest.mark.parametrize(("params", "full_gb", "lora_gb"), [
    (2.85e9, 47.14, 14.4),  # T0_3B
    (7.07e9, None, 32.0),  # bloomz-7b1: full fine-tune out of memory on 80 GB
    (12.9e9, None, 56.0),  # mt0-xxl
])
def test_fp32_table_of_the_peft_readme(params: float, full_gb: float | None,
                                       lora_gb: float) -> None:
    shape = shape_from_size(params)
    full = estimate(shape, "full", PEFT, "gpu", fp32=True)
    lora = estimate(shape, "lora", PEFT, "gpu", fp32=True)
    assert full.precision == lora.precision == "fp32"
    if full_gb is None:
        assert not full.fits["80GB"]  # "OOM GPU"
    else:
        assert full.total / GB == pytest.approx(full_gb, rel=0.10)
        assert full.fits["80GB"]
    assert lora.total / GB == pytest.approx(lora_gb, rel=0.10)
    assert lora.fits["80GB"]


def test_bf16_llama2_7b_of_the_litgpt_resource_tables() -> None:
    w = Workload(seq_len=1304, batch_size=1)
    shape = KNOWN["llama-2-7b"]
    lora = estimate(shape, "lora", w, "gpu")
    qlora = estimate(shape, "qlora", w, "gpu")
    assert lora.total / GB == pytest.approx(21.30, rel=0.10)
    assert qlora.total / GB == pytest.approx(13.84, rel=0.10)
    assert lora.fits["24GB"] and not lora.fits["16GB"]  # as on the A100 40GB: fits in 24


@pytest.mark.parametrize("model", ["Qwen2.5-0.5B", "Llama-2-7B", "Llama-3-70B"])
def test_per_parameter_rules_of_the_llama_factory_table(model: str) -> None:
    shape = resolve_shape(model)
    w = Workload(seq_len=512, batch_size=1, checkpointing=True)
    billions = shape.params / 1e9
    full = estimate(shape, "full", w, "gpu")
    lora = estimate(shape, "lora", w, "gpu")
    # the model states alone (activations and the runtime are the rest of the total)
    assert (full.weights + full.gradients + full.optimizer) / 1e9 == pytest.approx(
        8 * billions, rel=0.01)
    assert (lora.weights + lora.gradients + lora.optimizer) / 1e9 == pytest.approx(
        2 * billions, rel=0.03)
