"""Property tests (hypothesis) for the task parser, the splitter and the metrics.

These pin down invariants no hand-picked example covers: any valid spec survives a
dump/parse round trip, any unknown key is named in the error, any split is a partition of
the requested sizes, and every metric stays in [0, 1] (symmetric where it should be).
"""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tunewise.answers import structure_of
from tunewise.dataset import Example, make_split
from tunewise.errors import TunewiseError
from tunewise.evaluate import (
    compare,
    evaluate,
    exact_match,
    expected_calibration_error,
    field_f1,
    label_match,
    macro_f1,
    token_f1,
)
from tunewise.task import RUNG_ORDER, TaskSpec, parse_task

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---- the task parser ---------------------------------------------------------------------
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                max_size=30).filter(lambda s: s.strip() == s and s)
labels = st.lists(st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True), min_size=2,
                  max_size=6, unique=True)

task_dicts = st.fixed_dictionaries(
    {
        "name": names,
        "kind": st.sampled_from(["classification", "extraction", "generation", "qa"]),
        "data": st.fixed_dictionaries(
            {"path": st.from_regex(r"[a-z]{1,8}\.(jsonl|csv)", fullmatch=True)},
            optional={"input": st.sampled_from(["input", "text", "q"]),
                      "output": st.sampled_from(["output", "label", "a"])},
        ),
        "target": st.floats(0, 1, allow_nan=False),
    },
    optional={
        "description": names,
        "labels": labels,
        "metric": st.sampled_from(["accuracy", "macro_f1", "exact_match", "token_f1",
                                   "field_f1"]),
        "split": st.fixed_dictionaries({"test": st.integers(1, 10_000)},
                                       optional={"dev": st.integers(0, 10_000),
                                                 "seed": st.integers(0, 2**32 - 1)}),
        "volume": st.fixed_dictionaries({"requests_per_day": st.integers(0, 10**9)}),
        "latency_ms": st.floats(1, 1e6, allow_nan=False),
        # each kind takes its own keys: seed is the dummy backend's, threads the local one's
        "backend": st.one_of(*[st.fixed_dictionaries(
            {"kind": st.just(kind)},
            optional={"batch_size": st.integers(1, 256), own: st.integers(1, 100),
                      "max_new_tokens": st.integers(1, 512)})
            for kind, own in [("local", "threads"), ("dummy", "seed")]]),
        # dpo needs data.rejected (tested in test_dpo.py); every other rung parses alone
        "rungs": st.lists(st.sampled_from([r for r in RUNG_ORDER if r != "dpo"]), min_size=1,
                          max_size=9, unique=True),
        "budget": st.fixed_dictionaries({}, optional={"max_calls": st.integers(0, 10**6),
                                                      "max_usd": st.floats(0, 1e4)}),
    },
)


@FAST
@given(raw=task_dicts)
def test_valid_specs_parse_and_round_trip(raw: dict) -> None:
    spec = parse_task(yaml.safe_dump(raw, allow_unicode=True), "task.yaml")
    # What was written is what was parsed ...
    assert spec.name == raw["name"]
    assert spec.target == raw["target"]
    assert str(spec.data.path) == raw["data"]["path"]
    assert spec.labels == raw.get("labels")
    assert spec.rungs == raw.get("rungs")
    for key, value in raw.get("split", {}).items():
        assert getattr(spec.split, key) == value
    # ... and the fully resolved spec survives a dump and a re-parse unchanged.
    again = parse_task(yaml.safe_dump(spec.model_dump(mode="json"), allow_unicode=True))
    assert again.model_dump(mode="json") == spec.model_dump(mode="json")
    assert again.fingerprint() == spec.fingerprint()


def _plain_key(key: str) -> bool:
    """YAML reads the key back as the same string (not a bool, null or number)."""
    return list(yaml.safe_load(f"{key}: 1")) == [key]


# Keys that could never be valid; the secret-looking ones have their own, stricter message.
unknown_keys = st.from_regex(r"[a-z][a-z0-9_]{0,14}", fullmatch=True).filter(_plain_key)
SECTIONS = [None, "data", "split", "backend", "budget", "volume", "few_shot", "cost"]
BASE = {"name": "t", "kind": "classification", "data": {"path": "d.jsonl"}, "target": 0.5}


@FAST
@given(key=unknown_keys, section=st.sampled_from(SECTIONS))
def test_unknown_keys_are_rejected_by_name(key: str, section: str | None) -> None:
    model = TaskSpec if section is None else TaskSpec.model_fields[section].annotation
    model = getattr(model, "__args__", (model,))[0]
    assume(key not in model.model_fields)
    assume(key not in {"api_key", "apikey", "key", "token", "secret", "password",
                       "authorization", "backends"})
    raw = {**BASE, "data": dict(BASE["data"])}
    target = raw if section is None else raw.setdefault(section, {})
    if section == "data":
        target = raw["data"]
    target[key] = 1
    with pytest.raises(TunewiseError) as err:
        parse_task(yaml.safe_dump(raw), "task.yaml")
    where = key if section is None else f"{section}.{key}"
    assert err.value.field == where
    assert f"unknown key '{key}'" in err.value.message
    assert err.value.path == "task.yaml" and err.value.line is not None
    assert "\n" not in str(err.value)


@FAST
@given(field=st.sampled_from(["split", "backend", "budget", "data"]),
       typo=st.sampled_from(["s", "x", "_"]))
def test_typos_of_known_keys_get_a_suggestion(field: str, typo: str) -> None:
    """One character off a real key always suggests that key."""
    model = TaskSpec.model_fields[field].annotation
    model = getattr(model, "__args__", (model,))[0]
    real = sorted(model.model_fields)[0]
    wrong = real + typo
    assume(wrong not in model.model_fields)
    raw = {**BASE, "data": dict(BASE["data"])}
    raw.setdefault(field, {})[wrong] = 1
    with pytest.raises(TunewiseError, match=re.escape(f"(did you mean '{real}'?)")):
        parse_task(yaml.safe_dump(raw), "task.yaml")


# ---- the splitter --------------------------------------------------------------------------
def _task(test: int, dev: int, seed: int) -> TaskSpec:
    return TaskSpec(name="t", kind="classification", data={"path": "d.jsonl"}, target=0.5,
                    split={"test": test, "dev": dev, "seed": seed})


@st.composite
def split_args(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n = draw(st.integers(2, 300))
    test = draw(st.integers(1, n - 1))
    dev = draw(st.integers(0, n - 1 - test))
    return n, test, dev, draw(st.integers(0, 2**32 - 1))


@FAST
@given(args=split_args())
def test_split_is_a_partition_of_the_requested_sizes(args: tuple[int, int, int, int]) -> None:
    n, test, dev, seed = args
    examples = [Example(f"e{i}", f"input {i}", "a" if i % 2 else "b") for i in range(n)]
    split = make_split(examples, _task(test, dev, seed))
    ids = split.ids()
    assert (len(ids["test"]), len(ids["dev"]), len(ids["train"])) == (test, dev, n - test - dev)
    assert len(ids["train"]) >= 1
    everything = ids["test"] + ids["dev"] + ids["train"]
    assert sorted(everything) == sorted(e.id for e in examples)  # no overlap, nothing lost
    again = make_split(list(examples), _task(test, dev, seed))
    assert again.ids() == ids and again.fingerprint() == split.fingerprint()


@FAST
@given(n=st.integers(1, 50), extra=st.integers(0, 50), dev=st.integers(0, 50))
def test_absurd_splits_are_refused(n: int, extra: int, dev: int) -> None:
    examples = [Example(f"e{i}", f"input {i}", "a") for i in range(n)]
    test = max(1, n - dev + extra)  # test + dev >= n always
    with pytest.raises(TunewiseError, match="at least one must remain for training"):
        make_split(examples, _task(test, dev, 0))


# ---- the metrics ---------------------------------------------------------------------------
answers = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
words = st.lists(st.sampled_from(["the", "a", "cat", "Cat", "dog,", "sat", "on", "mat."]),
                 max_size=8).map(" ".join)
texts = answers | words
records = st.dictionaries(st.sampled_from(["name", "area", "food", "price"]),
                          st.sampled_from(["x", "y", "cheap", "Thai food"]), max_size=4).map(
    lambda d: ", ".join(f"{k}: {v}" for k, v in d.items()))


@settings(max_examples=200, deadline=None)
@given(a=texts | records, b=texts | records)
def test_per_example_metrics_are_bounded_and_symmetric(a: str, b: str) -> None:
    # An answer is read at the shape of its gold (first line, fences, structure), so the
    # metrics are symmetric only between plain one-line answers.
    plain = all(len(x.strip().splitlines()) <= 1 and "```" not in x and not structure_of(x)
                for x in (a, b))
    for fn in (exact_match, token_f1, field_f1, label_match):
        assert 0.0 <= fn(a, b) <= 1.0
        assert fn(a, b) == pytest.approx(fn(b, a)) or not plain
        assert fn(a, a) == 1.0 or not a.strip() or fn is field_f1
    assert exact_match(a, b) <= token_f1(a, b) or not a.strip()


@FAST
@given(pairs=st.lists(st.tuples(st.sampled_from(["x", "y", "z", "X "]),
                                st.sampled_from(["x", "y", "z"])), min_size=1, max_size=30),
       metric=st.sampled_from(["accuracy", "macro_f1", "exact_match", "token_f1", "field_f1"]))
def test_evaluate_is_bounded(pairs: list[tuple[str, str]], metric: str) -> None:
    preds, gold = [p for p, _ in pairs], [g for _, g in pairs]
    score = evaluate(preds, gold, metric)
    assert 0.0 <= score.ci_low <= score.ci_high <= 1.0
    assert 0.0 <= score.value <= 1.0
    assert score.n == len(pairs) and all(0.0 <= s <= 1.0 for s in score.per_example)
    assert 0.0 <= macro_f1(preds, gold) <= 1.0


@FAST
@given(pairs=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=60))
def test_compare_gives_a_p_value_and_antisymmetric_difference(
        pairs: list[tuple[float, float]]) -> None:
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    ab, ba = compare(a, b), compare(b, a)
    assert 0.0 <= ab["p_value"] <= 1.0 and 0.0 <= ba["p_value"] <= 1.0
    assert ab["diff"] == pytest.approx(-ba["diff"], abs=1e-12)
    assert ab["ci_low"] <= ab["ci_high"]
    assert compare(a, a) == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


@FAST
@given(rows=st.lists(st.tuples(st.floats(0, 1), st.sampled_from([0.0, 1.0])), max_size=80))
def test_calibration_error_is_bounded(rows: list[tuple[float, float]]) -> None:
    ece = expected_calibration_error([c for c, _ in rows], [h for _, h in rows])
    assert 0.0 <= ece <= 1.0 + 1e-12
