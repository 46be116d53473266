"""A re-run answered from the store loads nothing it does not need: no model, no torch.

Each run is a fresh process (the CLI, as a user runs it) that reports at exit whether torch
was imported. The first run must import it (it computes), so the check can fail; the second,
fully cached, must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, write_jsonl

PROBE = """
import atexit, os, sys
atexit.register(lambda: os.write(2, ("\\nTORCH=%s\\n" % ("torch" in sys.modules)).encode()))
from tunewise.cli import main
sys.argv = ["tunewise", *sys.argv[1:]]
main()
"""


def rows(n: int) -> list[dict]:
    labels = ["billing", "shipping", "returns", "account"]
    return [{"input": f"question {i} about my {labels[i % 4]} please", "output": labels[i % 4],
             "rejected": labels[(i + 1) % 4]} for i in range(n)]


def run_cli(tmp: Path, task: Path) -> tuple[bool, dict]:
    """Run ``tunewise run TASK --all --json`` in a new process: (torch imported?, result)."""
    probe = tmp / "probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}  # tiny models: two threads only wait on each other
    done = subprocess.run([sys.executable, str(probe), "run", str(task), "--all", "--json",
                           "--out", str(tmp / "out")], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    torch = done.stderr.strip().splitlines()[-1]
    assert torch in ("TORCH=True", "TORCH=False"), done.stderr[-2000:]
    return torch == "TORCH=True", json.loads(done.stdout)


def made_and_hits(result: dict) -> tuple[int, int]:
    done = [r for r in result["rungs"] if r["status"] == "done"]
    assert done
    return sum(r["calls_made"] for r in done), sum(r["cache_hits"] for r in done)


def write_task(tmp: Path, backend: dict, rungs: list[str]) -> Path:
    write_jsonl(tmp / "data.jsonl", rows(40))
    spec = {"name": "lazy", "kind": "classification", "data": {"path": "data.jsonl"},
            "target": 0.99, "split": {"test": 6, "dev": 4, "seed": 0}, "few_shot": {"k": 2},
            "backend": backend, "rungs": rungs}
    path = tmp / "task.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_cached_rerun_with_embeddings_does_not_import_torch(tmp_path: Path) -> None:
    """few_shot_knn embeds with sentence-transformers (torch) the first time only."""
    task = write_task(tmp_path, {"kind": "dummy"}, ["zero_shot", "few_shot_knn"])
    torch_first, first = run_cli(tmp_path, task)
    torch_again, again = run_cli(tmp_path, task)
    assert torch_first
    assert made_and_hits(first) == (12, 0)
    assert made_and_hits(again) == (0, 12)
    assert not torch_again
    assert [r["value"] for r in again["rungs"]] == [r["value"] for r in first["rungs"]]


def test_cached_rerun_of_the_local_backend_loads_no_model(tmp_path: Path,
                                                         tiny_model: Path) -> None:
    """The local backend (a tiny random Llama) is built but never loaded on a cached run:
    token counts and rendered prompts the ladder needs come from the store."""
    task = write_task(tmp_path, {"kind": "local", "model": str(tiny_model), "batch_size": 4},
                      ["zero_shot", "system_prompt", "few_shot_random"])
    torch_first, first = run_cli(tmp_path, task)
    torch_again, again = run_cli(tmp_path, task)
    assert torch_first
    assert made_and_hits(first) == (18, 0)
    assert made_and_hits(again) == (0, 18)
    assert not torch_again
    for a, b in zip(first["rungs"], again["rungs"], strict=True):
        assert a["value"] == b["value"]
        assert a["tokens"] == b["tokens"]


def test_cached_rerun_of_a_generation_task_counts_answer_tokens_from_the_store(
        tmp_path: Path, tiny_model: Path) -> None:
    """A task with free-text answers sizes max_new_tokens from the training answers' token
    counts: the re-run reads them from the store's memo instead of loading the tokenizer
    (which imports torch; the cached demo re-run did so through this path)."""
    task = write_task(tmp_path, {"kind": "local", "model": str(tiny_model), "batch_size": 4},
                      ["zero_shot"])
    spec = yaml.safe_load(task.read_text(encoding="utf-8"))
    spec.update(kind="extraction", metric="exact_match")
    task.write_text(yaml.safe_dump(spec), encoding="utf-8")
    torch_first, first = run_cli(tmp_path, task)
    torch_again, again = run_cli(tmp_path, task)
    assert torch_first and not torch_again
    assert made_and_hits(again) == (0, made_and_hits(first)[0])
    assert again["data"]["answer_tokens"] == first["data"]["answer_tokens"]
    assert again["data"]["answer_tokens"]["n"] > 0


def test_cached_rerun_with_the_server_down_uses_its_remembered_identity(caplog) -> None:
    """The openai backend's id names the server's weights, probed on first use. With the
    server down, the last identity it gave (kept in the store) keys the cache lookups."""
    import logging

    from openai_stub import StubServer

    from tunewise.backends.base import CachedBackend
    from tunewise.backends.openai_compat import OpenAIBackend
    from tunewise.store import Store
    from tunewise.task import BackendSpec

    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    models = {"data": [{"id": "m", "owned_by": "me", "root": "/weights/a"}]}

    def backend(url: str, store: Store) -> CachedBackend:
        spec = BackendSpec(kind="openai", model="m", base_url=url, timeout_s=2, max_retries=0)
        return CachedBackend(OpenAIBackend(spec), store)

    store = Store()
    with StubServer(models=models) as stub:
        url = stub.url
        first = backend(url, store)
        answers = first.generate(prompts, 8)
    assert not any(a.cached for a in answers)
    with caplog.at_level(logging.WARNING):
        again = backend(url, store)
        replay = again.generate(prompts, 8)  # the server is gone: answered from the store
    assert again.id == first.id and ":server=unverified" not in again.id
    assert all(a.cached for a in replay) and [a.text for a in replay] == [a.text for a in answers]
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(said) == 1 and url in said[0]
    # Another store never saw the server: the id falls back to URL and name, and differs.
    assert backend(url, Store(store.path.with_name("other.db"))).id != first.id


def test_cached_rerun_of_fine_tuning_rungs_loads_no_model(tmp_path: Path, tiny_model: Path,
                                                          monkeypatch) -> None:
    """lora (with its learning curve and forgetting check), full_ft and dpo (on top of the
    lora adapter) on the tiny Llama: the re-run finds each adapter from the training text
    alone (no tokenizer), and the tuned models, merged lazily, are never loaded because
    every answer is in the store."""
    monkeypatch.setenv("TUNEWISE_ADAPTERS", str(tmp_path / "adapters"))
    task = write_task(tmp_path, {"kind": "local", "model": str(tiny_model), "batch_size": 4,
                                 "max_new_tokens": 4, "threads": 1},
                      ["zero_shot", "lora", "full_ft", "dpo"])
    spec = yaml.safe_load(task.read_text(encoding="utf-8"))
    spec["data"]["rejected"] = "rejected"
    spec["dpo"] = {"epochs": 1, "max_steps": 2}
    spec["lora"] = {"epochs": 1, "max_steps": 2, "batch_size": 4, "curve": [12],
                    "min_examples": 20, "warn_examples": 20}
    task.write_text(yaml.safe_dump(spec), encoding="utf-8")
    torch_first, first = run_cli(tmp_path, task)
    torch_again, again = run_cli(tmp_path, task)
    assert torch_first
    assert [r["status"] for r in first["rungs"]] == ["done"] * 4, first["rungs"]
    made, hits = made_and_hits(first)
    assert made >= 18 and hits == 0
    assert made_and_hits(again) == (0, made)
    assert not torch_again
    tuned = {r["name"]: r for r in again["rungs"]}
    assert tuned["lora"]["info"]["trained_now"] is False
    assert tuned["full_ft"]["info"]["trained_now"] is False
    assert tuned["dpo"]["info"]["trained_now"] is False
    assert tuned["dpo"]["info"]["preference"] == first["rungs"][3]["info"]["preference"]
    for a, b in zip(first["rungs"], again["rungs"], strict=True):
        assert a["value"] == b["value"]
        assert a["tokens"] == b["tokens"]
    curve = [p["value"] for p in again["rungs"][1]["info"]["learning_curve"]["points"]]
    assert curve == [p["value"] for p in first["rungs"][1]["info"]["learning_curve"]["points"]]
    assert again["forgetting"] == first["forgetting"]
