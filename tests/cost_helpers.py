"""Helpers of the cost tests: a task spec with cost settings and a finished rung's result
row (plain functions, shared by test_cost and test_break_even)."""

from __future__ import annotations

from tunewise.task import TaskSpec


def spec(**cost) -> TaskSpec:
    return TaskSpec.model_validate({"name": "t", "kind": "classification",
                                    "data": {"path": "d.jsonl"}, "target": 0.8,
                                    "cost": cost})


def rung(name: str, family: str, value: float, prompt: float = 100, upfront_s: float = 0.0,
         **extra) -> dict:
    return {"name": name, "family": family, "status": "done", "value": value,
            "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 100,
            "tokens": {"prompt_mean": prompt, "completion_mean": 10, "shared_prefix": 0},
            "latency_ms": {"p50": 10, "p95": 20}, "upfront_s": upfront_s,
            "calls_made": 100, "cache_hits": 0, **extra}
