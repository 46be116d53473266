"""The OpenAI-compatible backend: against a stub server (fast) and a real llama.cpp server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai_stub import StubServer

from tunewise.backends import make_backend
from tunewise.backends.openai_compat import (
    CONSTRAINED_MISS,
    OpenAIBackend,
    parse_label,
    parse_retry_after,
    span_logprob,
    token_grammar,
)
from tunewise.errors import TunewiseError
from tunewise.ladder import estimate_calls, plan_run
from tunewise.store import Store
from tunewise.task import BackendSpec, load_task, parse_task

REPO = Path(__file__).resolve().parents[1]
LABELS = ["add_to_playlist", "book_restaurant", "get_weather", "play_music", "rate_book",
          "search_creative_work", "search_screening_event"]


def spec(url: str | list[str], **kw) -> BackendSpec:
    return BackendSpec(kind="openai", model="stub-model", base_url=url, **kw)


def chat(text: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]


# ---- pure helpers ----------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("add_to_playlist", 0), ("Add to playlist.", 0), ("  GET_WEATHER\n", 2),
    ("The intent is search_screening_event.", 6), ("search screening", 6),
    ("play_musc", 3), ("", None), ("banana", None),
])
def test_parse_label_maps_free_text_to_a_label(text: str, expected: int | None) -> None:
    assert parse_label(text, LABELS) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.from_regex(r"[a-z]{2,8}(_[a-z]{2,8}){0,2}", fullmatch=True),
                min_size=2, max_size=8, unique=True), st.data())
def test_parse_label_finds_any_label_however_it_is_cased(labels: list[str], data) -> None:
    i = data.draw(st.integers(0, len(labels) - 1))
    spelled = data.draw(st.sampled_from([labels[i], labels[i].upper(),
                                         labels[i].replace("_", " ").title() + "."]))
    assert parse_label(spelled, labels) == i


def test_span_logprob_counts_the_choice_tokens_from_the_end() -> None:
    # prompt (3 tokens, the first has no log-prob), choice (2 tokens), 1 generated token
    assert span_logprob([None, -1.0, -0.5, -0.25, -0.125, -9.0], 2, 1) == -0.375
    assert span_logprob([None, -1.0, -0.5, -0.25, -0.125], 2, 0) == -0.375
    with pytest.raises(ValueError):
        span_logprob([None, -1.0], 2, 0)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(when) <= 31


# ---- task file ---------------------------------------------------------------------------

BASE = "name: t\nkind: classification\ndata: {path: d.jsonl}\ntarget: 0.5\n"


@pytest.mark.parametrize("backend,message", [
    ("{kind: openai, api_key: sk-test-SECRET-1234}", "never put an API key"),
    ("{kind: openai, api_key_env: sk-test-SECRET-1234}", "NAME of an environment variable"),
    ("{kind: openai, api_key_env: 'Zq3vY8kR2mN7pL4xW9tB6cH1jF5gD0sA'}", "NAME of an environment"),
    ("{kind: openai, base_url: 'http://me:sk-abcdefgh1@host/v1'}", "must not carry credentials"),
    ("{kind: openai, base_url: 'http://host/v1?api_key=abc'}", "must not carry credentials"),
    ("{kind: openai, base_url: 'host:8000/v1'}", "must start with http"),
])
def test_task_rejects_literal_keys_without_echoing_them(backend: str, message: str) -> None:
    with pytest.raises(TunewiseError) as err:
        parse_task(BASE + f"backend: {backend}\n")
    assert message in str(err.value)
    assert "SECRET" not in str(err.value) and "abcdefgh1" not in str(err.value)


def test_backends_list_sets_the_main_backend_and_excludes_backend() -> None:
    task = parse_task(BASE + "backends: [{kind: dummy}, {kind: openai, base_url: "
                             "'http://127.0.0.1:1/v1'}]\n")
    assert task.backend.kind == "dummy" and len(task.backends) == 2
    with pytest.raises(TunewiseError, match="either backend or backends"):
        parse_task(BASE + "backend: {kind: dummy}\nbackends: [{kind: dummy}]\n")


def test_shipped_remote_example_parses_with_two_distinct_models() -> None:
    from tunewise.ladder import model_labels

    path = REPO / "examples" / "snips" / "task-remote.yaml"
    assert path.read_text().startswith("# bash scripts/llama_server.sh start && tunewise run")
    task = load_task(path)
    assert [b.kind for b in task.backends] == ["local", "openai"]
    assert model_labels(task) == ["local:smollm2-135m", "openai:smollm2-135m"]
    assert task.backends[1].score_method == "forced" and task.backends[1].api_key_env is None
    assert not task.backends[0].score_end_of_turn  # like for like with the forced scores


def test_missing_key_variable_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TW_NO_SUCH_KEY", raising=False)
    with pytest.raises(TunewiseError, match="TW_NO_SUCH_KEY is not set"):
        make_backend(spec("http://127.0.0.1:9/v1", api_key_env="TW_NO_SUCH_KEY"))


def test_backend_id_names_model_settings_and_server_never_the_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server part of the id is covered in test_openai_identity.py."""
    monkeypatch.setenv("TW_KEY", "sk-test-SECRET-1234")
    a = OpenAIBackend(spec("http://127.0.0.1:1/v1", api_key_env="TW_KEY"))
    b = OpenAIBackend(spec("http://127.0.0.1:1/v1"))
    c = OpenAIBackend(spec("http://127.0.0.1:1/v1", score_method="constrained"))
    assert a.id == b.id  # the key is not part of it
    assert a.id.startswith("openai:stub-model:score=auto:v1:server=unverified-")
    assert c.id.startswith("openai:stub-model:score=constrained:v1:server=unverified-")
    assert "SECRET" not in a.id


# ---- against the stub --------------------------------------------------------------------


def test_generate_uses_chat_completions_usage_and_stop() -> None:
    with StubServer() as stub:
        backend = OpenAIBackend(spec(stub.url))
        out = backend.generate([chat("hello there"), chat("bye")], 16, ["\n"])
    assert [c.text for c in out] == ["answer to: hello there", "answer to: bye"]
    assert [c.prompt_tokens for c in out] == [12, 11]
    assert out[0].completion_tokens == 6 and out[0].latency_s > 0
    body = stub.seen[0]["body"]
    assert body["temperature"] == 0 and body["max_tokens"] == 16 and body["stop"] == ["\n"]
    assert body["model"] == "stub-model" and stub.seen[0]["authorization"] is None


def test_score_by_constrained_generation_sends_a_grammar() -> None:
    with StubServer() as stub:
        backend = OpenAIBackend(spec(stub.url))
        scored = backend.score([chat("play some jazz"), chat("get the weather in Oslo")],
                               [LABELS, LABELS])
    assert [s.method for s in scored] == ["constrained", "constrained"]
    assert scored[0].logprobs[3] == 0.0 and scored[0].logprobs[0] == CONSTRAINED_MISS
    assert scored[1].logprobs.index(0.0) == 2
    chat_calls = [s for s in stub.seen if s["path"] == "/v1/chat/completions"]
    assert '"add_to_playlist" | "book_restaurant"' in chat_calls[0]["body"]["grammar"]


def test_a_server_rejecting_the_grammar_gets_free_text_and_the_parser() -> None:
    with StubServer(reject_grammar=True) as stub:
        backend = OpenAIBackend(spec(stub.url))
        scored = backend.score([chat("play some jazz")] * 3, [LABELS] * 3)
    assert all(s.method == "constrained" for s in scored)
    # free text "answer to: play some jazz" names play_music only loosely: parsed by words
    assert backend.constrained.grammar is False
    assert any(s["mode"] == "400" for s in stub.seen)
    assert all("grammar" not in s["body"] for s in stub.seen if s["mode"] == "ok")


def test_score_by_echoed_logprobs_when_the_template_is_known() -> None:
    with StubServer(apply_template=True) as stub:
        backend = OpenAIBackend(spec(stub.url))
        prompt = chat("rate this book", system="Classify.")
        scored = backend.score([prompt], [["rate_book", "play_music"]])[0]
        shown = backend.render(prompt)
    assert scored.method == "logprob"
    rendered = StubServer.render(prompt)
    assert shown == rendered
    for choice, lp in zip(["rate_book", "play_music"], scored.logprobs, strict=True):
        assert lp == pytest.approx(sum(StubServer.char_logprob(c) for c in choice))
    assert scored.prompt_tokens == len(rendered)  # the stub's tokens are characters
    echoed = [s["body"] for s in stub.seen if s["path"] == "/v1/completions"]
    assert echoed[-1]["prompt"] == rendered + "play_music" and echoed[-1]["echo"] is True


def test_logprob_method_without_a_template_is_refused() -> None:
    with StubServer() as stub:
        backend = OpenAIBackend(spec(stub.url, score_method="logprob"))
        with pytest.raises(TunewiseError, match="needs backend.tokenizer"):
            backend.score([chat("x")], [["a", "b"]])


@pytest.mark.model  # SmolLM2's tokenizer
def test_score_by_forced_tokens_sums_their_logprobs_on_one_server_per_item() -> None:
    """forced: per label one completion whose grammar admits exactly the label's token
    ids; the reported log-probs are summed; an item's requests all go to one server, so
    its prompt is evaluated once there (llama.cpp keeps the last prompt's cache)."""
    with StubServer() as a, StubServer() as b:
        backend = OpenAIBackend(spec([a.url, b.url], score_method="forced",
                                     tokenizer="smollm2-135m", concurrency=4))
        prompts = [chat(f"request number {i}") for i in range(6)]
        scored = backend.score(prompts, [LABELS] * 6)
    tok = backend._tokenizer()
    ids = [tok(label, add_special_tokens=False).input_ids for label in LABELS]
    expected = [sum(StubServer.token_logprob(i) for i in x) for x in ids]
    for s in scored:
        assert s.method == "forced" and s.logprobs == pytest.approx(expected)
        assert s.prompt_tokens > 5
    bodies = [x["body"] for x in a.seen + b.seen if x["key"] != "Hello"]  # not the probe
    assert len(bodies) == 6 * len(LABELS) and len(a.seen) + len(b.seen) == len(bodies) + 1
    assert {x["grammar"] for x in bodies} == {token_grammar(x) for x in ids}
    assert all(x["max_tokens"] == x["grammar"].count("<[") for x in bodies)
    keys_a, keys_b = ({x["key"] for x in stub.seen if x["key"] != "Hello"} for stub in (a, b))
    assert keys_a and keys_b and not keys_a & keys_b  # each item stayed on one server
    assert backend.score_end_of_turn is False and "score=forced" in backend.id


@pytest.mark.model  # SmolLM2's tokenizer
def test_forced_scoring_needs_a_tokenizer_and_a_server_that_obeys_the_grammar() -> None:
    with StubServer(ignore_grammar=True) as stub:
        with pytest.raises(TunewiseError, match="needs backend.tokenizer"):
            OpenAIBackend(spec(stub.url, score_method="forced")).score([chat("x")], [["a", "b"]])
        backend = OpenAIBackend(spec(stub.url, score_method="forced", tokenizer="smollm2-135m"))
        with pytest.raises(TunewiseError, match="forced does not work here") as err:
            backend.score([chat("x")], [["play_music", "rate_book"]])
    assert "\n" not in str(err.value) and stub.url in str(err.value)
    assert len(stub.seen) == 1  # the probe only: no item was sent, nothing retried
    with StubServer() as stub:  # a grammar forcing <|im_end|> would abort llama.cpp
        backend = OpenAIBackend(spec(stub.url, score_method="forced", tokenizer="smollm2-135m"))
        with pytest.raises(TunewiseError, match="'done<.im_end.>' contains a special token"):
            backend.score([chat("x")], [["play_music", "done<|im_end|>"]])
    assert all("<[2]>" not in str(s["body"].get("grammar")) for s in stub.seen)
    with StubServer(lambda key, n: "500") as stub:  # e.g. llama-cpp-python without logits_all
        backend = OpenAIBackend(spec(stub.url, score_method="forced", tokenizer="smollm2-135m"))
        with pytest.raises(TunewiseError, match="HTTP 500: scripted 500. llama-cpp-python"):
            backend.score([chat("x")], [["play_music", "rate_book"]])
    assert len(stub.seen) == 1


def test_forced_scoring_turns_the_end_of_turn_term_off_on_every_backend() -> None:
    """Side-by-side columns compare like with like: a forced backend cannot score the
    end-of-turn token, so no backend of that run does (unless asked, which is an error)."""
    forced = ("{kind: openai, base_url: 'http://127.0.0.1:1/v1', score_method: forced, "
              "tokenizer: smollm2-135m}")
    task = parse_task(BASE + f"backends: [{{kind: local}}, {forced}]\n")
    assert [b.score_end_of_turn for b in task.backends] == [False, False]
    alone = parse_task(BASE + "backends: [{kind: local}, {kind: dummy}]\n")
    assert [b.score_end_of_turn for b in alone.backends] == [True, True]
    with pytest.raises(TunewiseError, match="backends.0. sets score_end_of_turn: true"):
        parse_task(BASE + f"backends: [{{kind: local, score_end_of_turn: true}}, {forced}]\n")
    with pytest.raises(TunewiseError, match="cannot go with score_method: forced"):
        parse_task(BASE + "backend: {kind: openai, score_method: forced, "
                          "score_end_of_turn: true}\n")


def test_local_backend_can_score_labels_without_the_end_of_turn_token(
        tiny_model: Path) -> None:
    from tunewise.backends.local import LocalBackend

    full = LocalBackend(str(tiny_model))
    bare = LocalBackend(str(tiny_model), score_end_of_turn=False)
    eot = full.tok.convert_tokens_to_ids(full.end_of_turn)
    assert full._choice_ids("rate_book")[-1] == eot
    assert bare._choice_ids("rate_book") == full._choice_ids("rate_book")[:-1]
    assert bare.id.endswith(":label-only") and bare.id != full.id
    prompt = [chat("rate this book")]
    with_eot = full.score(prompt, [["rate_book", "play_music"]])[0].logprobs
    without = bare.score(prompt, [["rate_book", "play_music"]])[0].logprobs
    assert without == pytest.approx(bare.score_naive(prompt, [["rate_book", "play_music"]])[0],
                                     abs=1e-4)
    assert all(w > f for w, f in zip(without, with_eot, strict=True))  # one term fewer


def test_render_and_count_tokens_fall_back_to_server_then_heuristic() -> None:
    with StubServer() as stub:
        backend = OpenAIBackend(spec(stub.url))
        assert backend.render(chat("hi")) == "[user]\nhi\n\n[assistant]\n"
        assert backend.count_tokens("one two") == 7  # /extras/tokenize/count
        assert backend.context_length == 4096
    offline = OpenAIBackend(spec("http://127.0.0.1:9/v1", timeout_s=0.5))
    assert offline.count_tokens("x" * 40) == 10  # ~4 characters per token


def test_round_robin_spreads_requests_over_every_url() -> None:
    with StubServer() as a, StubServer() as b:
        backend = OpenAIBackend(spec([a.url, b.url], concurrency=4))
        out = backend.generate([chat(f"q{i}") for i in range(20)], 8, ["\n"])
    assert [c.text for c in out] == [f"answer to: q{i}" for i in range(20)]
    assert len(a.seen) == len(b.seen) == 10


def test_client_errors_are_not_retried_and_name_the_url(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TW_KEY", "sk-test-SECRET-1234")
    with StubServer(lambda key, n: "401") as stub:
        backend = OpenAIBackend(spec(stub.url, api_key_env="TW_KEY"))
        with pytest.raises(TunewiseError) as err:
            backend.generate([chat("x")], 8)
    message = str(err.value)
    assert stub.url in message and "HTTP 401 (check the key)" in message
    assert "\n" not in message and "SECRET" not in message
    assert len(stub.seen) == 1 and stub.seen[0]["authorization"] == "Bearer sk-test-SECRET-1234"


# ---- ladder: several backends side by side -------------------------------------------------


def test_prompting_rungs_run_on_every_backend_side_by_side(make_task, runner) -> None:
    from tunewise.cli import app

    with StubServer() as stub:
        path = make_task(limit=120, rungs=["zero_shot", "system_prompt"], backend=None,
                         backends=[{"kind": "dummy"},
                                   {"kind": "openai", "model": "stub", "base_url": stub.url}])
        text = path.read_text().replace("backend: null\n", "")
        path.write_text(text)
        task = load_task(path)
        store = Store()
        plan = plan_run(task, store)
        # two prompting rungs on two backends: 40 items + 20 timed single requests + warm-up
        assert estimate_calls(plan) == 2 * 2 * (40 + 21)
        res = runner.invoke(app, ["run", str(path), "--all"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads(Path(res.output.split("result: ")[1].split()[0]).read_text())
    models = result["models"]
    assert [m["model"] for m in models] == ["dummy:smollm2-135m", "openai:stub"]
    assert [r["name"] for r in models[1]["rungs"]] == ["zero_shot", "system_prompt"]
    assert models[1]["rungs"][0]["n"] == 40 and "vs_zero_shot" in models[1]["rungs"][1]
    assert models[1]["backend"].startswith("openai:stub:")
    served = sum(1 for s in stub.seen if s["mode"] == "ok")
    assert served == 2 * (40 + 21)  # 40 test items per rung, each asked once, + timing
    results_table = res.output.split("Cost at")[0]  # the cells table below names models too
    lines = [ln for ln in results_table.splitlines() if "│" in ln
             and ("dummy:" in ln or "openai:" in ln)]
    assert len(lines) == 4 and "dummy:smollm2-135m" in lines[0] and "openai:stub" in lines[1]
    stored = {r["rung"] for r in Store().db.execute("SELECT DISTINCT rung FROM predictions")}
    assert stored == {"zero_shot", "system_prompt", "zero_shot@openai:stub",
                      "system_prompt@openai:stub"}
    # The HTML report (and the web UI's run page, which shows the same body) has the table.
    from fastapi.testclient import TestClient

    from tunewise.report import build_report
    from tunewise.web.app import create_app

    data, html = build_report(Store(), result["run_id"])
    assert [m["model"] for m in data["models"]["models"]] == ["dummy:smollm2-135m", "openai:stub"]
    for row in data["models"]["rows"]:
        name = row["rung"]
        ours = next(r for r in result["rungs"] if r["name"] == name)
        theirs = next(r for r in models[1]["rungs"] if r["name"] == name)
        assert [c["value"] for c in row["cells"]] == [ours["value"], theirs["value"]]
    page = TestClient(create_app()).get(f"/runs/{result['run_id']}").text
    for doc in (html, page):
        table = doc.split('id="models"', 1)[1].split("</table>", 1)[0]
        assert "openai:stub" in table and table.count('<tr data-rung="') == 2
        assert f"{models[1]['rungs'][1]['value']:.3f}" in table


# ---- the real llama.cpp server -------------------------------------------------------------

SERVER_SCRIPT = REPO / "scripts" / "llama_server.sh"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    """llama-cpp-python's server with the bundled SmolLM2 GGUF (built and installed by the
    script if missing): two worker processes, prompt log-probs enabled."""
    state = tmp_path_factory.mktemp("llama")
    env = {**os.environ, "LLAMA_STATE": str(state), "LLAMA_PORT": "0", "LLAMA_LOGITS_ALL": "1"}
    done = subprocess.run(["bash", str(SERVER_SCRIPT), "start"], env=env, text=True,
                          capture_output=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    yield (state / "urls").read_text().split()
    subprocess.run(["bash", str(SERVER_SCRIPT), "stop"], env=env, timeout=60)


def snips_task(make_task, **fields) -> Path:
    path = make_task(split={"test": 60, "dev": 20, "seed": 0}, backend=None, **fields)
    path.write_text(path.read_text().replace("backend: null\n", ""))
    return path


@pytest.mark.integration
def test_llama_cpp_label_logprobs_equal_the_local_backend(llama_server: list[str],
                                                          make_task) -> None:
    """Through the server (completions + echo + logprobs on the chat-templated prompt) a
    label's log-prob is the local transformers backend's, up to Q4 arithmetic: so the same
    rung scores the same. Two items, three labels: llama-cpp-python computes echoed
    log-probs in Python (seconds per request), which is why the side-by-side run below
    uses forced tokens; their log-probs equal the local label-only scores too."""
    from tunewise.backends.local import LocalBackend
    from tunewise.rungs.base import get_rung

    path = snips_task(make_task, backends=[{"kind": "local"}, {
        "kind": "openai", "model": "smollm2-135m", "base_url": llama_server,
        "tokenizer": "smollm2-135m", "score_method": "logprob", "concurrency": 2}])
    task = load_task(path)
    plan = plan_run(task, Store(), backend=make_backend(task.backends[1]))
    prepared = get_rung("zero_shot").prepare(plan.ctx)
    items = plan.ctx.split.test[:2]
    prompts = [prepared.prompt_for(e) for e in items]
    labels = list(dict.fromkeys([e.output for e in items] + LABELS))[:3]
    remote = plan.ctx.backend.inner.score(prompts, [labels] * 2)
    local = LocalBackend("smollm2-135m").score(prompts, [labels] * 2)
    forced = make_backend(task.backends[1].model_copy(update={
        "score_method": "forced", "score_end_of_turn": False})).score(prompts, [labels] * 2)
    bare = LocalBackend("smollm2-135m", score_end_of_turn=False).score(prompts, [labels] * 2)
    for r, lo in [*zip(remote, local, strict=True), *zip(forced, bare, strict=True)]:
        assert r.method in ("logprob", "forced") and r.prompt_tokens == lo.prompt_tokens
        for a, b in zip(r.logprobs, lo.logprobs, strict=True):
            assert abs(a - b) <= 1.0, (r.method, r.logprobs, lo.logprobs)
        assert r.logprobs.index(max(r.logprobs)) == lo.logprobs.index(max(lo.logprobs))
    assert [r.method for r in forced] == ["forced"] * 2


@pytest.mark.integration
def test_llama_cpp_server_and_local_side_by_side(llama_server: list[str], make_task,
                                                 runner) -> None:
    """zero_shot and few_shot on 60 snips items through the llama.cpp server (forced label
    tokens over two worker URLs) and the local backend, in one run and one table: the same
    items score within 5 points of accuracy (Q4 weights on the server, fp32 locally)."""
    from tunewise.cli import app

    rungs = ["zero_shot", "few_shot_random"]
    path = snips_task(make_task, rungs=rungs, few_shot={"k": 4},
                      decision={"latency_sample": 2}, backends=[
        {"kind": "local"},
        {"kind": "openai", "model": "smollm2-135m", "base_url": llama_server,
         "tokenizer": "smollm2-135m", "score_method": "forced", "concurrency": 4}])
    res = runner.invoke(app, ["run", str(path), "--all"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    result = json.loads(Path(res.output.split("result: ")[1].split()[0]).read_text())
    local = {r["name"]: r for r in result["rungs"]}
    remote = {r["name"]: r for r in result["models"][1]["rungs"]}
    for name in rungs:
        assert remote[name]["n"] == local[name]["n"] == 60
        assert remote[name]["calls_made"] == 60 and remote[name]["tokens"]["prompt_mean"] > 20
        print(f"{name}: local {local[name]['value']:.3f}, llama.cpp {remote[name]['value']:.3f}")
        assert abs(remote[name]["value"] - local[name]["value"]) <= 0.05
    preds = Store().predictions(result["run_id"], "few_shot_random@openai:smollm2-135m")
    assert len(preds) == 60 and {p["prediction"] for p in preds} <= set(LABELS)
    assert all(json.loads(p["details_json"])["method"] == "forced" for p in preds)
    table = [ln for ln in res.output.splitlines() if "│" in ln and "few_shot_random" in ln]
    assert "local:smollm2-135m" in table[0] and "openai:smollm2-135m" in table[1]
