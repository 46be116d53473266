"""The memory and time planner: config arithmetic, published figures, calibration, refusal.

Published figures the table must agree with:
- Hugging Face's Model Memory Utility (accelerate ``estimate-memory``): training with Adam
  takes ~4x the model's size in its dtype (1x weights, 1x gradients, 2x optimizer), e.g.
  Llama-2-70B in bf16 128.15 GB, 512.59 GB to train.
- QLoRA paper (Dettmers et al. 2023): a 65B model fine-tunes in under 48 GB with 4-bit
  NF4 weights, double quantization (0.127 bits a parameter), LoRA r=64 on every linear
  layer, gradient checkpointing, batch 1 x 512 tokens.
- Parameter counts of the published configs (Qwen2.5-0.5B 0.49B, Llama-3-8B 8.03B,
  Llama-3-70B 70.6B, Llama-2-7B 6.74B).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, REPO

from tunewise.errors import TunewiseError
from tunewise.planner import (
    GB,
    KNOWN,
    ModelShape,
    Workload,
    check_fits,
    estimate,
    parse_size,
    resolve_shape,
    shape_from_config,
    shape_from_size,
)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SMOLLM2_CONFIG = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                  "tie_word_embeddings": True, "head_dim": 64}


@pytest.mark.parametrize(("name", "published"), [
    ("Qwen2.5-0.5B", 0.494e9), ("Llama-3-8B", 8.03e9), ("Llama-3-70B", 70.55e9),
    ("Llama-2-7B", 6.74e9), ("LLaMA-65B", 65.2e9),
])
def test_parameter_counts_match_the_published_models(name: str, published: float) -> None:
    assert resolve_shape(name).params == pytest.approx(published, rel=0.01)


def test_config_arithmetic_by_hand() -> None:
    shape = shape_from_config(SMOLLM2_CONFIG, "smollm2", "config.json")
    # per layer: q 576*576, k and v 576*192 each, o 576*576, MLP 3*576*1536, 2 norms
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    assert shape.layer_params == layer
    assert shape.params == 30 * layer + 49152 * 576 + 576 == 134_515_008
    # LoRA r=8 on q,k,v,o: 8 * ((576+576) + 2*(576+192) + (576+576)) per layer
    assert shape.lora_params(8, ("q_proj", "k_proj", "v_proj", "o_proj")) == 30 * 8 * 3840


def test_full_fine_tune_is_four_times_the_bf16_model_like_the_hf_estimator() -> None:
    w = Workload(seq_len=16, batch_size=1)
    shape = resolve_shape("Llama-3-70B")
    e = estimate(shape, "full", w, "gpu")
    assert e.weights == shape.params * 2
    assert e.gradients == shape.params * 2 and e.optimizer == shape.params * 4
    # HF Model Memory Utility, Llama-2-70B (69.0B): 512.59 GB to train with Adam in bf16
    llama2_70b = 69.0e9 / shape.params * (e.weights + e.gradients + e.optimizer) / GB
    assert llama2_70b == pytest.approx(512.59, rel=0.02)
    assert not any(e.fits.values())


def test_qlora_fits_65b_in_48gb_as_the_paper_reports() -> None:
    w = Workload(seq_len=512, batch_size=1, r=64, targets=ALL_LINEAR, checkpointing=True)
    shape = resolve_shape("65b")
    qlora = estimate(shape, "qlora", w, "gpu")
    assert 30 * GB < qlora.total < 48 * GB
    assert qlora.fits == {"16GB": False, "24GB": False, "40GB": False, "80GB": True}
    # the same model in 16 bits does not fit any single GPU, even with LoRA
    assert estimate(shape, "lora", w, "gpu").total > 80 * GB


def test_7b_table_lora_and_qlora_fit_where_practitioners_say() -> None:
    w = Workload(seq_len=512, batch_size=1, checkpointing=True)
    shape = resolve_shape("7b")
    full, lora, qlora = (estimate(shape, m, w, "gpu") for m in ("full", "lora", "qlora"))
    assert full.fits == {"16GB": False, "24GB": False, "40GB": False, "80GB": True}
    assert lora.fits["24GB"] and lora.total > 12.5 * GB  # bf16 weights alone: 12.55 GB
    assert qlora.fits["16GB"]  # "QLoRA on a 7-8B model needs about a 16 GB GPU"
    assert qlora.total < lora.total < full.total


def test_a_05b_model_fits_everywhere_and_trains_faster_with_lora() -> None:
    w = Workload(seq_len=512, batch_size=8)
    shape = resolve_shape("Qwen2.5-0.5B")
    full, lora = estimate(shape, "full", w, "gpu"), estimate(shape, "lora", w, "gpu")
    assert all(full.fits.values()) and all(lora.fits.values())
    assert lora.epoch_seconds["16GB"] < full.epoch_seconds["16GB"]
    assert full.flops_per_token / lora.flops_per_token == pytest.approx(1.5)


def test_activations_grow_with_tokens_and_shrink_with_checkpointing() -> None:
    shape = resolve_shape("Llama-3-8B")
    small = estimate(shape, "lora", Workload(seq_len=256, batch_size=1), "gpu").activations
    big = estimate(shape, "lora", Workload(seq_len=512, batch_size=2), "gpu").activations
    ckpt = estimate(shape, "lora", Workload(seq_len=512, batch_size=2, checkpointing=True),
                    "gpu").activations
    assert big == pytest.approx(4 * small)
    assert ckpt < big / 5


def test_sizes_parse_and_size_only_shapes_match_the_count() -> None:
    assert parse_size("7e9") == 7e9 and parse_size("135M") == 135e6
    assert parse_size("0.5b") == 0.5e9 and parse_size("llama") is None
    assert shape_from_size(13e9).params == pytest.approx(13e9, rel=0.03)
    assert resolve_shape("7e9").params == pytest.approx(7e9, rel=0.03)


def test_unknown_model_is_one_line_error() -> None:
    with pytest.raises(TunewiseError, match="unknown model 'no-such/model'"):
        resolve_shape("no-such/model")
    with pytest.raises(TunewiseError, match="QLoRA needs CUDA"):
        estimate(KNOWN["llama-3-8b"], "qlora", Workload(), "cpu")


def test_too_large_is_refused_before_loading_with_the_numbers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    w = Workload(seq_len=100, batch_size=8)
    with pytest.raises(TunewiseError) as err:
        check_fits(str(tmp_path), "full", w, "cpu", available=1 * GB)
    msg = str(err.value)
    assert "\n" not in msg and "135M parameters" in msg and "only 1.0 GB" in msg
    assert "weights 0.5" in msg and "optimizer 1.0" in msg
    assert check_fits(str(tmp_path), "lora", w, "cpu", available=8 * GB).total < 8 * GB


def test_plan_command_prints_tables_and_json(runner) -> None:
    from tunewise.cli import app

    out = runner.invoke(app, ["plan", "--model", "Llama-3-8B", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    full = next(e for e in data["estimates"] if e["method"] == "full" and e["device"] == "gpu")
    assert full["total"] > 60 and data["params"] == KNOWN["llama-3-8b"].params
    out = runner.invoke(app, ["plan", "--params", "7e9", "--seq-len", "256"])
    assert out.exit_code == 0 and "QLoRA" in out.output and "assumptions" in out.output
    out = runner.invoke(app, ["plan", "--model", "bogus-model"])
    assert out.exit_code == 2 and "unknown model" in out.output


def test_advisor_line_names_the_cpu_time() -> None:
    from tunewise.planner import cpu_training_line

    shape = ModelShape("tiny", 64, 2, 4, 2, 128, 1000, True)
    assert shape.params > 0
    line = cpu_training_line("Llama-3-8B", examples=500)
    assert line is not None and line.startswith("no GPU: fine-tuning a 7B model is out")
    assert "trains on CPU in about" in line


def _e2e() -> Path:
    return DATA / "e2e_records.jsonl"  # the vendored slice (the probe reads 64 rows)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_peak_rss_of_a_child_is_its_own_not_its_parents() -> None:
    """Linux carries ``ru_maxrss`` across fork + exec, so a child of a big process (pytest
    late in the suite) used to report the parent's peak: 5.3 GiB measured for a 2.5 GiB
    trainer. The trainer's figure must be the child's own."""
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page
    code = "from tunewise.training.lora import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = float(done.stdout.strip().splitlines()[-1])
    assert len(ballast) == 600 * 2**20
    assert 5 < child < 300, child  # a bare interpreter plus pydantic, not the parent's 600 MB


@pytest.mark.integration
def test_planner_predicts_the_trainers_peak_rss_within_25_percent(tmp_path: Path) -> None:
    """A fresh process trains SmolLM2 4 steps (LoRA, then full); the planner must predict
    each peak RSS within +-25%. The process's own high-water mark (``VmHWM``) is read, so
    the figure does not depend on how big the pytest process is when it starts the probe."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shape = resolve_shape("smollm2-135m")
    for method in ("lora", "full"):
        done = subprocess.run(
            [sys.executable, str(REPO / "tests" / "planner_probe.py"), method, "4",
             str(tmp_path / method), str(_e2e())],
            env=env, capture_output=True, text=True, timeout=900, check=True)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        w = Workload(seq_len=measured["seq_len"], batch_size=measured["batch_size"])
        predicted = estimate(shape, method, w, "cpu").total / 2**20
        assert predicted == pytest.approx(measured["peak_rss_mb"], rel=0.25), (method, measured)


def test_advisor_without_gpu_cites_the_planner(monkeypatch) -> None:
    from tunewise import planner
    from tunewise.advisor import Answers, advise

    monkeypatch.setattr(planner, "has_gpu", lambda: False)
    advice = advise(Answers(True, "behaviour", 800, None, None, None, None, None, None, 200))
    line = next(r for r in advice.reasons if r.startswith("no GPU"))
    assert "800 examples" in line and "min an epoch" in line
    monkeypatch.setattr(planner, "has_gpu", lambda: True)
    advice = advise(Answers(True, "behaviour", 800, None, None, None, None, None, None, 200))
    assert not any(r.startswith("no GPU") for r in advice.reasons)
