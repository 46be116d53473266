"""The full_ft rung and the full fine-tune through the LoRA trainer's loop (issue 19).

Fast tests use the tiny random Llama (conftest's tiny_model) (real code paths, seconds); the
integration test trains SmolLM2 a few steps on e2e records, LoRA and full, side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, e2e_rows, write_jsonl
from training_helpers import features, spec

from tunewise.errors import TunewiseError

pytestmark = pytest.mark.usefixtures("one_thread", "module_adapter_cache")


def test_full_fine_tune_trains_every_weight_and_saves_a_loadable_model(
        tiny_model: Path, tiny_backend, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from tunewise.backends.local import LocalBackend
    from tunewise.training.lora import LoraTrainer

    feats = features(tiny_backend, 16)
    pad = tiny_backend.tok.pad_token_id
    before = load_file(str(tiny_model / "model.safetensors"))
    log = LoraTrainer(str(tiny_model), spec(epochs=1, lr=1e-3), feats, feats[:4],
                      tmp_path / "full", pad, progress=False, full=True).train()
    n_params = sum(t.numel() for t in before.values())
    assert log["method"] == "full" and log["trainable_params"] == n_params
    assert log["steps_done"] == 4 and log["peak_rss_mb"] > 100
    after = load_file(str(tmp_path / "full" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every weight moved, embeddings and norms too
    assert log["artefact_bytes"] == (tmp_path / "full" / "model.safetensors").stat().st_size
    # the folder is a model of its own: tokenizer included, loads without the base
    backend = LocalBackend(str(tmp_path / "full"), batch_size=2)
    assert backend.tok.eos_token == tiny_backend.tok.eos_token
    assert torch.equal(backend.model.model.norm.weight, after["model.norm.weight"])
    lora = LoraTrainer(str(tiny_model), spec(epochs=1), feats, feats[:4], tmp_path / "lora",
                       pad, progress=False).train()
    assert lora["method"] == "lora" and lora["trainable_params"] < n_params / 10
    assert lora["artefact_bytes"] < log["artefact_bytes"] / 10


def test_interrupted_full_fine_tune_resumes_exactly(tiny_model: Path, tiny_backend,
                                                     tmp_path: Path) -> None:
    from tunewise.training.lora import LoraTrainer

    feats = features(tiny_backend, 16)
    pad = tiny_backend.tok.pad_token_id
    cfg = spec(epochs=2, lr=1e-3)
    whole = LoraTrainer(str(tiny_model), cfg, feats, feats[:4], tmp_path / "a", pad,
                        progress=False, full=True).train()

    def stop_at_3(trainer: LoraTrainer) -> None:
        if trainer.step == 3:
            trainer.request_stop()

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        LoraTrainer(str(tiny_model), cfg, feats, feats[:4], out, pad, progress=False,
                    on_step=stop_at_3, full=True).train()
    resumed = LoraTrainer(str(tiny_model), cfg, feats, feats[:4], out, pad, progress=False,
                          full=True).train()
    assert resumed["resumed_from_step"] == [3]
    assert [s["loss"] for s in resumed["steps"]] == pytest.approx(
        [s["loss"] for s in whole["steps"]], rel=1e-5)


def test_full_and_lora_have_separate_cache_keys(tiny_backend) -> None:
    from tunewise.training.adapters import adapter_key

    feats = features(tiny_backend, 8)
    lora = adapter_key("tiny", spec(), feats, [])
    full = adapter_key("tiny", spec(), feats, [], full=True)
    assert lora.startswith("lora-") and full.startswith("full-") and lora[5:] != full[5:]


def test_a_model_too_large_is_refused_before_loading(tiny_model: Path, tiny_backend,
                                                      tmp_path: Path, monkeypatch) -> None:
    import transformers

    from tunewise import planner
    from tunewise.training.lora import LoraTrainer

    monkeypatch.setattr(planner, "available_bytes", lambda device: 1e6)

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    feats = features(tiny_backend, 8)
    with pytest.raises(TunewiseError) as err:
        LoraTrainer(str(tiny_model), spec(), feats, [], tmp_path / "x",
                    tiny_backend.tok.pad_token_id, progress=False, full=True).train()
    msg = str(err.value)
    assert "\n" not in msg and "only 0.0 GB is available" in msg and "full fine-tune" in msg


def test_opt_in_rungs_run_only_when_named(make_task) -> None:
    from tunewise.ladder import default_rungs
    from tunewise.task import load_task

    task = load_task(make_task())
    assert "full_ft" not in default_rungs(task) and "dpo" not in default_rungs(task)
    named = load_task(make_task(rungs=["zero_shot", "lora", "full_ft"]))
    assert default_rungs(named) == ["zero_shot", "lora", "full_ft"]


def tiny_task(folder: Path, model: Path, n: int = 150) -> Path:
    write_jsonl(folder / "data.jsonl", e2e_rows(n))
    task = {"name": "e2e-tiny", "kind": "extraction", "data": {"path": "data.jsonl"},
            "target": 0.5, "split": {"test": 10, "dev": 10, "seed": 0},
            "backend": {"kind": "local", "model": str(model), "max_new_tokens": 6},
            "lora": {"epochs": 1, "batch_size": 8, "curve": [], "patience": 0,
                     "full_lr": 1e-3}}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_ladder_reports_full_ft_beside_lora(tmp_path: Path, tiny_model: Path) -> None:
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    path = tiny_task(tmp_path, tiny_model)
    result = run_ladder(load_task(path), Store(tmp_path / "store.db"), out_dir=tmp_path / "out",
                        climb_all=True, rungs=["lora", "full_ft"])
    by = {r["name"]: r for r in result["rungs"]}
    lora, full = by["lora"], by["full_ft"]
    assert full["status"] == "done" and full["family"] == "fine_tuning"
    fi, li = full["info"], lora["info"]
    assert fi["method"] == "full" and li["method"] == "lora"
    assert fi["steps"] == li["steps"] == 17 and fi["train_examples"] == li["train_examples"]
    assert fi["artefact_bytes"] > 10 * li["artefact_bytes"]
    assert fi["learning_rate"] == 1e-3 and fi["adapter_key"].startswith("full-")
    assert full["ci_low"] <= full["value"] <= full["ci_high"]
    vs = fi["vs_lora"]
    assert vs["n"] == 10 and vs["diff"] == pytest.approx(full["value"] - lora["value"])
    assert vs["ci_low"] <= vs["diff"] <= vs["ci_high"]
    forgetting = fi["forgetting"]
    assert forgetting["n"] == 120 and "tuned" in forgetting
    assert forgetting["base"] == result["forgetting"]["base"]  # same base, same general set
    saved = tmp_path / "out" / "adapters" / "full_ft"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    # cost: the full fine-tune is hosted as a model of its own, the adapter is not
    costs = result["cost"]["rungs"]
    assert costs["full_ft"]["hosting_per_day"] > 0 == costs["lora"]["hosting_per_day"]
    note = next(r for r in result["verdict"]["reasons"] if "full fine-tune" in r)
    if full["ci_low"] <= lora["value"]:
        assert "not worth its cost" in note
    else:
        assert "beats lora" in note
    assert f"full_ft {full['value']:.3f}" in note
    stored = json.loads((tmp_path / "out" / "result.json").read_text())
    assert stored["rungs"][1]["info"]["vs_lora"]["n"] == 10


@pytest.mark.integration
def test_smollm2_lora_full_ft_and_dpo_side_by_side(tmp_path: Path) -> None:
    """The real model on a bounded slice: 150 e2e rows, 3 optimizer steps each, 8 test items,
    a 12-item general set. Checks the plumbing and the measured sizes, not quality."""
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task
    from tunewise.training.forgetting import bundled_path

    sys.path.insert(0, str(REPO / "examples" / "dpo"))
    from make_pairs import make_pairs

    general = tmp_path / "general.jsonl"
    general.write_text("".join(bundled_path().read_text().splitlines(keepends=True)[:12]))
    write_jsonl(tmp_path / "data.jsonl", make_pairs(e2e_rows(150)))
    task = {"name": "e2e-slice", "kind": "extraction",
            "data": {"path": "data.jsonl", "rejected": "rejected"},
            "target": 0.5, "split": {"test": 8, "dev": 8, "seed": 0},
            "backend": {"kind": "local", "model": "smollm2-135m", "max_new_tokens": 24},
            "lora": {"max_steps": 3, "batch_size": 8, "curve": [], "general": "general.jsonl"},
            "dpo": {"max_steps": 2}, "decision": {"latency_sample": 2}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    result = run_ladder(load_task(tmp_path / "task.yaml"), Store(tmp_path / "store.db"),
                        out_dir=tmp_path / "out", climb_all=True,
                        rungs=["lora", "full_ft", "dpo"])
    by = {r["name"]: r for r in result["rungs"]}
    assert [by[n]["status"] for n in ("lora", "full_ft", "dpo")] == ["done"] * 3
    lora, full, dpo = (by[n]["info"] for n in ("lora", "full_ft", "dpo"))
    assert full["trainable_params"] == 134_515_008 and lora["trainable_params"] < 2_000_000
    assert full["artefact_bytes"] > 100 * lora["artefact_bytes"]
    assert full["peak_rss_mb"] > lora["peak_rss_mb"]
    assert full["steps"] == lora["steps"] == 3 and dpo["steps"] == 2
    assert full["vs_lora"]["n"] == 8 and full["forgetting"]["n"] == 12
    assert dpo["preference"]["n"] == 8 and set(dpo["preference"]) == {"n", "base", "sft", "dpo"}
    assert any("full fine-tune" in r for r in result["verdict"]["reasons"])
