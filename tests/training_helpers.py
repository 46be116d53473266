"""Helpers of the training tests (not fixtures; those are in conftest.py): features of e2e
rows for a backend, and a small LoRA spec."""

from __future__ import annotations

from conftest import e2e_rows

from tunewise.task import LoraSpec
from tunewise.training.features import Feature, encode_all


def features(backend, n: int = 24, seed: int = 0) -> list[Feature]:
    rows = e2e_rows(n, seed)
    prompts = [[{"role": "user", "content": r["input"]}] for r in rows]
    feats, skipped = encode_all(backend, prompts, [r["output"] for r in rows], 512)
    assert skipped == 0
    return feats


def spec(**kw) -> LoraSpec:
    base = {"epochs": 2, "batch_size": 4, "lr": 5e-3, "patience": 0, "checkpoint_every": 1000}
    return LoraSpec(**{**base, **kw})
