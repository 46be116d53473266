"""The dpo rung: the DPO loss against hand-computed values, the loop on a tiny model, the
rung in the ladder, the example's pair rule, and bad input (issue 19)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, e2e_rows, write_jsonl
from training_helpers import features, spec

from tunewise.errors import TunewiseError

pytestmark = pytest.mark.usefixtures("one_thread", "module_adapter_cache")

sys.path.insert(0, str(REPO / "examples" / "dpo"))
from make_pairs import make_pairs, parse  # noqa: E402


def test_dpo_loss_matches_the_paper_by_hand() -> None:
    import torch

    from tunewise.training.dpo import dpo_loss

    # pair 1: policy log-probs (-1, -2), reference (-1.5, -1.5), beta 0.1:
    #   rewards 0.1*0.5 = 0.05 and 0.1*-0.5 = -0.05; loss = -log sigmoid(0.1) = log(1+e^-0.1)
    # pair 2: policy (-3, -1), reference (-2, -2), beta 0.1: rewards -0.1, 0.1;
    #   loss = log(1 + e^0.2)
    losses, chosen, rejected = dpo_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0]),
                                        torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0]),
                                        0.1)
    assert losses.tolist() == pytest.approx([math.log(1 + math.exp(-0.1)),
                                             math.log(1 + math.exp(0.2))], abs=1e-6)
    assert losses.tolist() == pytest.approx([0.644397, 0.798139], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.05, -0.1]) and rejected.tolist() == pytest.approx(
        [-0.05, 0.1])
    # policy equal to the reference: log 2, whatever beta
    same, _, _ = dpo_loss(torch.tensor([-4.0]), torch.tensor([-7.0]), torch.tensor([-4.0]),
                          torch.tensor([-7.0]), 0.5)
    assert same.item() == pytest.approx(math.log(2))


def _pairs(backend, n: int):
    from tunewise.training.dpo import Pair
    from tunewise.training.features import encode_all

    rows = make_pairs(e2e_rows(n))
    prompts = [[{"role": "user", "content": r["input"]}] for r in rows]
    chosen, _ = encode_all(backend, prompts, [r["output"] for r in rows], 512)
    rejected, _ = encode_all(backend, prompts, [r["rejected"] for r in rows], 512)
    return [Pair(c, r) for c, r in zip(chosen, rejected, strict=True)]


def test_sequence_log_probs_equal_the_full_forward(tiny_model: Path, tiny_backend) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunewise.training.dpo import _logp_module
    from tunewise.training.features import IGNORE, collate

    feats = features(tiny_backend, 5)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    model.eval()
    batch = collate(feats, tiny_backend.tok.pad_token_id)
    with torch.no_grad():
        got = _logp_module(model)(**batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                       ).logits.float().log_softmax(-1)
    for i, f in enumerate(feats):
        want = sum(logits[i, t - 1, f.labels[t]].item() for t in range(1, len(f.labels))
                   if f.labels[t] != IGNORE)
        assert got[i].item() == pytest.approx(want, rel=1e-4)


def test_dpo_trainer_starts_at_log2_and_widens_the_margin(tiny_model: Path, tiny_backend,
                                                          tmp_path: Path) -> None:
    import torch

    from tunewise.training.dpo import DpoTrainer

    pairs = _pairs(tiny_backend, 24)
    trainer = DpoTrainer(str(tiny_model), spec(epochs=3, lr=5e-3, dropout=0.0), pairs,
                         pairs[:4], tmp_path / "dpo", tiny_backend.tok.pad_token_id, beta=0.5,
                         progress=False)
    log = trainer.train()
    # step 1: the adapter starts at zero, so policy == reference and every pair costs log 2
    assert log["steps"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert log["steps"][-1]["loss"] < log["steps"][0]["loss"] - 0.05
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
    trainer.module.eval()
    with torch.no_grad():
        pc, pr = trainer._logps(pairs)
    assert sorted(trainer.ref_known) == list(range(len(pairs)))  # every pair was trained on
    ref = trainer._train_reference(list(range(len(pairs))))
    margin_after = (pc - pr).cpu()
    margin_before = ref[:, 0] - ref[:, 1]
    assert float((margin_after - margin_before).mean()) > 0


def test_a_capped_dpo_run_computes_reference_log_probs_only_for_pairs_it_trains_on(
        tiny_model: Path, tiny_backend, tmp_path: Path) -> None:
    from tunewise.training.dpo import DpoTrainer

    pairs = _pairs(tiny_backend, 24)
    trainer = DpoTrainer(str(tiny_model), spec(epochs=1, max_steps=1, batch_size=8), pairs, [],
                         tmp_path / "dpo", tiny_backend.tok.pad_token_id, beta=0.1,
                         progress=False)
    log = trainer.train()
    assert len(log["steps"]) == 1
    assert len(trainer.ref_known) == 8


def dpo_task(folder: Path, model: Path, rows: list[dict], **fields) -> Path:
    write_jsonl(folder / "data.jsonl", rows)
    task = {"name": "e2e-dpo", "kind": "extraction",
            "data": {"path": "data.jsonl", "rejected": "rejected"},
            "target": 0.5, "split": {"test": 10, "dev": 10, "seed": 0},
            "backend": {"kind": "local", "model": str(model), "max_new_tokens": 6},
            "lora": {"epochs": 1, "batch_size": 8, "curve": [], "patience": 0},
            "dpo": {"lr": 1e-3, "beta": 0.1}, **fields}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_ladder_runs_dpo_from_the_sft_adapter(tmp_path: Path, tiny_model: Path) -> None:
    from tunewise.ladder import run_ladder
    from tunewise.store import Store
    from tunewise.task import load_task

    path = dpo_task(tmp_path, tiny_model, make_pairs(e2e_rows(150)))
    result = run_ladder(load_task(path), Store(tmp_path / "store.db"), out_dir=tmp_path / "out",
                        climb_all=True, rungs=["lora", "dpo"])
    by = {r["name"]: r for r in result["rungs"]}
    dpo, lora = by["dpo"], by["lora"]
    assert dpo["status"] == "done" and dpo["family"] == "fine_tuning"
    info = dpo["info"]
    assert info["method"] == "dpo" and info["start_from"] == "sft"
    assert info["adapter_key"].startswith("dpo-") and info["steps"] == 17
    assert dpo["upfront_s"] == pytest.approx(info["train_seconds"] + lora["info"]["train_seconds"])
    pref = info["preference"]
    assert pref["n"] == 10 and set(pref) == {"n", "base", "sft", "dpo"}
    for side in ("base", "sft", "dpo"):
        assert pref[side]["ci_low"] <= pref[side]["accuracy"] <= pref[side]["ci_high"]
        assert pref[side]["accuracy"] in {i / 10 for i in range(11)}
    assert info["forgetting"]["n"] == 120
    note = next(r for r in result["verdict"]["reasons"] if "preference accuracy" in r)
    assert f"dpo {pref['dpo']['accuracy']:.3f}" in note


def test_rejected_missing_on_a_row_names_the_line(tmp_path: Path, tiny_model: Path) -> None:
    from tunewise.dataset import load_examples
    from tunewise.task import load_task

    rows = make_pairs(e2e_rows(20))
    del rows[6]["rejected"]
    path = dpo_task(tmp_path, tiny_model, rows)
    with pytest.raises(TunewiseError) as err:
        load_examples(load_task(path))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'data.jsonl'}:7: rejected:") and "dpo rung" in msg


def test_dpo_without_preference_data_is_a_one_line_error(make_task, runner) -> None:
    from tunewise.cli import app

    path = make_task(rungs=["zero_shot", "dpo"])
    out = runner.invoke(app, ["run", str(path)])
    assert out.exit_code == 2
    assert "needs preference data: set data.rejected" in out.output
    assert "Traceback" not in out.output


def test_dpo_rung_explains_why_it_cannot_run(make_task) -> None:
    from tunewise.ladder import plan_run
    from tunewise.store import Store
    from tunewise.task import load_task

    plan = plan_run(load_task(make_task()), Store(Path("s.db")), rungs=["dpo"])
    assert "set data.rejected" in plan.skipped["dpo"]


def test_the_example_pairs_differ_in_exactly_one_field() -> None:
    rows = e2e_rows(300)
    pairs = make_pairs(rows)
    assert make_pairs(rows) == pairs  # the rule is deterministic
    for p in pairs:
        chosen, rejected = parse(p["output"]), parse(p["rejected"])
        assert [k for k, _ in chosen] == [k for k, _ in rejected]  # same keys, same order
        diff = [k for (k, a), (_, b) in zip(chosen, rejected, strict=True) if a != b]
        assert diff == [p["altered"]]
    assert len({p["altered"] for p in pairs}) >= 5
    task = yaml.safe_load((REPO / "examples" / "dpo" / "task.yaml").read_text())
    assert task["data"]["rejected"] == "rejected" and "dpo" in task["rungs"]
    assert json.dumps(pairs[0])


def test_call_estimate_counts_each_tuned_models_checks(make_task) -> None:
    from dataclasses import replace

    from tunewise.ladder import estimate_breakdown, plan_run
    from tunewise.store import Store
    from tunewise.task import load_task

    rows = make_pairs(e2e_rows(200))
    task = load_task(make_task(rows, kind="extraction", data={"path": "data.jsonl",
                                                                "rejected": "rejected"}))
    plan = plan_run(task, Store(Path("s.db")))
    n_test = len(plan.ctx.split.test)
    every = estimate_breakdown(replace(plan, rungs=["lora", "full_ft", "dpo"]))
    assert every["forgetting"] == 4 * 120  # base, lora, full_ft, dpo on the general set
    assert every["preference_check"] == 3 * n_test  # base, sft, dpo on the test pairs
    alone = estimate_breakdown(replace(plan, rungs=["full_ft"]))
    assert alone["forgetting"] == 2 * 120 and "preference_check" not in alone
