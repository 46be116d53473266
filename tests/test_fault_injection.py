"""Fault injection: a stub server that rate-limits, fails and hangs before answering.

Every request must end up answered exactly once in the store (rows of the ``calls``
table), none lost or duplicated, finished work must survive a request that fails for
good, and the API key must never reach the store, result.json, the output or a report.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from openai_stub import StubServer

from tunewise.backends.base import CachedBackend
from tunewise.backends.openai_compat import OpenAIBackend
from tunewise.errors import TunewiseError
from tunewise.store import Store
from tunewise.task import BackendSpec

SECRET = "sk-test-SECRET-1234"
FAULTS = [[], ["429"], ["500"], ["hang"], ["429", "500", "hang"], ["503", "503"]]


def scripted(key: str, attempt: int) -> str:
    """Faults by prompt: the n-th prompt gets FAULTS[n % 6] before it succeeds."""
    n = int(key.split()[-1])
    faults = FAULTS[n % len(FAULTS)]
    return faults[attempt] if attempt < len(faults) else "ok"


def backend_for(url: str | list[str], **kw) -> OpenAIBackend:
    spec = BackendSpec(kind="openai", model="stub", base_url=url, timeout_s=1.5,
                       concurrency=8, max_retries=4, **kw)
    return OpenAIBackend(spec, backoff_s=0.01)


def calls(store: Store) -> list[tuple[str, str]]:
    return [(json.loads(r["request_json"])["request"][-1]["content"],
             json.loads(r["response_json"]))
            for r in store.db.execute("SELECT request_json, response_json FROM calls")]


def test_every_request_is_answered_exactly_once_despite_faults() -> None:
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(24)]
    store = Store()
    with StubServer(scripted, hang_s=2.5, retry_after="1") as stub:
        cached = CachedBackend(backend_for(stub.url), store, run_id="r1", rung="x")
        out = cached.generate(prompts, 8, ["\n"])
        assert [c.text for c in out] == [f"answer to: question {i}" for i in range(24)]
        assert not any(c.cached for c in out)
        # each prompt was tried once per scripted fault, then answered once
        for i in range(24):
            key = f"question {i}"
            assert stub.attempts[key] == len(FAULTS[i % 6]) + 1, key
            assert stub.served[key] == 1, key
        modes = {s["mode"] for s in stub.seen}
        assert {"429", "500", "503", "hang", "ok"} <= modes
        # the store holds one row per request, each with its own answer
        rows = calls(store)
        assert len(rows) == 24
        assert sorted(rows) == sorted((f"question {i}", f"answer to: question {i}")
                                      for i in range(24))
        # a second pass is served from the store: no request reaches the server
        before = len(stub.seen)
        again = cached.generate(prompts, 8, ["\n"])
        assert all(c.cached for c in again) and len(stub.seen) == before
    assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 24


def test_finished_requests_survive_one_that_fails_for_good() -> None:
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(20)]
    store = Store()
    broken = {"question 13"}

    def plan(key: str, attempt: int) -> str:
        return "500" if key in broken else "ok"

    with StubServer(plan) as stub:
        cached = CachedBackend(backend_for(stub.url), store, run_id="r1", rung="x")
        with pytest.raises(TunewiseError) as err:
            cached.generate(prompts, 8, ["\n"])
        message = str(err.value)
        assert stub.url in message and "HTTP 500" in message and "gave up after 5" in message
        assert stub.attempts["question 13"] == 5  # 1 + max_retries
        stored = {k for k, _ in calls(store)}
        assert "question 13" not in stored
        # the answers that arrived were kept one by one; the call stopped at the failure
        # (a request the server answered as the client gave up is simply asked again)
        assert stored <= {k for k, n in stub.served.items() if n}
        assert len(stored) >= 8
        broken.clear()  # the server recovers: only what is missing is asked again
        before = dict(stub.served)
        out = cached.generate(prompts, 8, ["\n"])
    assert [c.text for c in out] == [f"answer to: question {i}" for i in range(20)]
    asked_again = {k for k, n in stub.served.items() if n > before.get(k, 0)}
    assert asked_again == {f"question {i}" for i in range(20)} - stored
    assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 20


def test_a_dead_replica_is_skipped_by_round_robin() -> None:
    with StubServer(lambda k, n: "503") as dead, StubServer() as alive:
        backend = backend_for([dead.url, alive.url])
        out = backend.generate([[{"role": "user", "content": f"q {i}"}] for i in range(10)],
                               8, ["\n"])
    assert [c.text for c in out] == [f"answer to: q {i}" for i in range(10)]
    assert sum(alive.served.values()) == 10 and dead.seen


def _grep(blob: bytes, where: str) -> None:
    assert SECRET.encode() not in blob, f"the API key leaked into {where}"
    assert zlib.compress(SECRET.encode())[2:-4] not in blob  # not even compressed


def test_api_key_never_reaches_store_results_output_or_report(
        make_task, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunewise.cli import app

    monkeypatch.setenv("TW_TEST_API_KEY", SECRET)

    def plan(key: str, attempt: int) -> str:  # some 429s and 500s on the way
        return ["429", "500", "ok"][min(attempt, 2)] if zlib.crc32(key.encode()) % 3 else "ok"

    with StubServer(plan, retry_after="0") as stub:
        path = make_task(limit=120, rungs=["zero_shot", "system_prompt"], backend={
            "kind": "openai", "model": "stub", "base_url": stub.url,
            "api_key_env": "TW_TEST_API_KEY", "timeout_s": 5})
        res = runner.invoke(app, ["run", str(path), "--all", "--out", str(tmp_path / "out")],
                            catch_exceptions=False)
        assert res.exit_code == 0, res.output
        # the key was really used: every request carried it
        assert stub.seen and all(s["authorization"] == f"Bearer {SECRET}" for s in stub.seen)
        assert any(s["mode"] in ("429", "500") for s in stub.seen)
        outputs = [res.output, res.stderr]
        report = runner.invoke(app, ["report", "latest", "-o", str(tmp_path / "report.html")])
        outputs.append(report.output)
        # a failing run (key refused) must not print it either
        stub.plan = lambda key, attempt: "401"
        assert runner.invoke(app, ["cache", "clear"]).exit_code == 0
        failed = runner.invoke(app, ["run", str(path), "--all", "--rungs", "zero_shot"])
    assert failed.exit_code == 2 and "HTTP 401" in failed.output
    outputs.append(failed.output)
    for i, text in enumerate(outputs):
        _grep(text.encode(), f"output {i}")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "data.jsonl" not in p.name]
    assert any(p.name == "result.json" for p in files)
    assert any(p.name.startswith("store.db") for p in files)
    for p in files:  # store.db, its -wal/-shm, result.json, report.html, task.yaml
        _grep(p.read_bytes(), str(p))
