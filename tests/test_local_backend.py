"""The real SmolLM2 backend: fast scoring equals the naive computation, and a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


@pytest.fixture
def backend(smollm2):
    return smollm2


SYSTEM = {"role": "system", "content": "Pick the medical specialty. Reply with the label only."}
LABELS = ["cardiology", "dermatology", "neurology", "ophthalmology", "ear nose and throat"]
INPUTS = ["my chest feels tight on the stairs", "itchy rash", "blurred vision in my left eye",
          "I have had a pounding headache every morning for a week and light hurts",
          "ringing in both ears"]


def test_prefix_reuse_equals_naive_per_label_logprobs(backend):
    prompts = [[SYSTEM, {"role": "user", "content": x}] for x in INPUTS]
    shots = [SYSTEM, {"role": "user", "content": "palpitations"},
             {"role": "assistant", "content": "cardiology"}]
    prompts += [shots + [{"role": "user", "content": x}] for x in INPUTS[:2]]
    fast = backend.score(prompts, [LABELS] * len(prompts))
    naive = backend.score_naive(prompts, [LABELS] * len(prompts))
    for f, n in zip(fast, naive, strict=True):
        assert len(f.logprobs) == len(LABELS)
        for a, b in zip(f.logprobs, n, strict=True):
            assert abs(a - b) < 1e-4
    assert backend._prefix_attention()  # SmolLM2 attends over the prefix without copying it
    # The scores are real: different labels get different log-probs.
    assert len({round(x, 3) for x in fast[0].logprobs}) == len(LABELS)


def test_without_prefix_reuse_same_numbers(backend):
    prompts = [[SYSTEM, {"role": "user", "content": x}] for x in INPUTS[:3]]
    backend.reuse_prefix = False
    try:
        plain = backend.score(prompts, [LABELS] * 3)
    finally:
        backend.reuse_prefix = True
    fast = backend.score(prompts, [LABELS] * 3)
    for a, b in zip(plain, fast, strict=True):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4


def test_generate_is_greedy_and_stops(backend):
    prompts = [[{"role": "user", "content": "Say the word hello."}]] * 2
    a = backend.generate(prompts, 8, stop=["\n"])
    assert a[0].text == a[1].text and a[0].text
    assert "\n" not in a[0].text
    assert 0 < a[0].completion_tokens <= 8


def test_demo_runs_end_to_end_on_smollm2(runner, tmp_path):
    """A trimmed copy of the bundled demo on the real model: both rungs, CIs, cache."""
    from tunewise.cli import app, demo_path

    src = demo_path("symptoms")
    text = src.read_text().replace("data.jsonl", str(src.parent / "data.jsonl"))
    text = text.replace("test: 60, dev: 24", "test: 24, dev: 12")
    task = tmp_path / "task.yaml"
    task.write_text(text)
    res = runner.invoke(app, ["run", str(task), "--all", "--json", "--out", str(tmp_path / "o"),
                              "--rungs", "zero_shot,system_prompt"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["backend"].startswith("local:smollm2-135m")
    for r in data["rungs"]:
        assert r["status"] == "done" and r["n"] == 24
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    again = runner.invoke(app, ["run", str(task), "--all", "--json", "--out",
                                str(tmp_path / "p"), "--rungs", "zero_shot,system_prompt"])
    second = json.loads(again.stdout)
    assert second["usage"]["calls_made"] == 0
    assert [r["value"] for r in second["rungs"]] == [r["value"] for r in data["rungs"]]


def test_snips_few_shot_beats_zero_shot_significantly(runner, tmp_path):
    """Issue 4, acceptance 1 (the three cheapest selection strategies; CI keeps it short)."""
    from tunewise.cli import app

    example = Path(__file__).resolve().parents[1] / "examples" / "snips" / "task.yaml"
    spec = yaml.safe_load(example.read_text(encoding="utf-8"))
    spec["data"]["path"] = str((example.parent / spec["data"]["path"]).resolve())
    spec["decision"] = {**spec.get("decision", {}), "latency_sample": 2}  # not under test
    example = tmp_path / "task.yaml"
    example.write_text(yaml.safe_dump(spec), encoding="utf-8")
    res = runner.invoke(app, ["run", str(example), "--all", "--json", "--out", str(tmp_path),
                              "--rungs", "zero_shot,few_shot_random,few_shot_knn"])
    assert res.exit_code == 0, res.output
    rungs = {r["name"]: r for r in json.loads(res.stdout)["rungs"]}
    assert all(r["n"] == 120 and r["ci_low"] <= r["value"] <= r["ci_high"]
               for r in rungs.values())
    best = min(rungs["few_shot_random"]["vs_zero_shot"]["p_value"],
               rungs["few_shot_knn"]["vs_zero_shot"]["p_value"])
    assert best < 0.05, {k: (r["value"], r.get("vs_zero_shot")) for k, r in rungs.items()}
