"""Cache identity of the openai backend: its id names the server and the served weights.

Another model behind the same ``model:`` name must not be answered from the cache; the same
server, asked again, must be.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai_stub import StubServer

from tunewise.backends.base import CachedBackend
from tunewise.backends.openai_compat import OpenAIBackend
from tunewise.backends.openai_identity import server_identity
from tunewise.store import Store
from tunewise.task import BackendSpec

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]


def backend(url: str | list[str], model: str = "same-name", **kw) -> OpenAIBackend:
    return OpenAIBackend(BackendSpec(kind="openai", model=model, base_url=url, **kw))


def asked(stub: StubServer) -> list[str]:
    return [s["key"] for s in stub.seen if s["path"] == "/v1/chat/completions"]


def llama_cpp(path: str, n_params: int = 134515008, created: int = 1) -> dict[str, Any]:
    """What a llama.cpp server says about itself (/v1/models and /props), trimmed."""
    models = {"object": "list", "data": [{
        "id": path.rsplit("/", 1)[-1], "object": "model", "created": created,
        "owned_by": "llamacpp", "aliases": [], "meta": {
            "vocab_type": 2, "n_vocab": 49152, "n_ctx": 4096, "n_ctx_train": 8192,
            "n_embd": 576, "n_params": n_params, "size": 138225664, "ftype": "Q8_0"}}]}
    props = {"model_path": path, "model_alias": path.rsplit("/", 1)[-1], "total_slots": 2,
             "chat_template": "{{ messages }}", "build_info": f"b{created}",
             "is_sleeping": False, "default_generation_settings": {"n_ctx": 4096}}
    return {"models": models, "props": props}


def test_same_model_name_on_two_servers_shares_no_cached_answer() -> None:
    store = Store()
    with StubServer() as a, StubServer() as b:
        first = CachedBackend(backend(a.url), store).generate(PROMPTS, 8, ["\n"])
        other = CachedBackend(backend(b.url), store).generate(PROMPTS, 8, ["\n"])
        again = CachedBackend(backend(a.url), store).generate(PROMPTS, 8, ["\n"])
    assert not any(c.cached for c in first) and not any(c.cached for c in other)
    assert all(c.cached for c in again)
    assert sorted(asked(a)) == sorted(asked(b)) == [p[0]["content"] for p in PROMPTS]  # a: once
    assert [c.text for c in again] == [c.text for c in first]


def test_other_weights_on_the_same_url_get_another_id() -> None:
    """A server restarted on its port with another GGUF under the same name: a new id;
    the first GGUF again: the first id (and its cache) again."""
    ids = []
    port = 0
    for path in ["/models/a.gguf", "/models/b.gguf", "/models/a.gguf"]:
        with StubServer(port=port, **llama_cpp(path)) as stub:
            port = int(stub.url.split(":")[-1].split("/")[0])
            ids.append(backend(stub.url).id)
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert all(":server=" in i and "unverified" not in i for i in ids)


@pytest.mark.parametrize("change,same", [
    ({"created": 2}, True),  # llama.cpp and vLLM put the current time there
    ({"build": 2}, True),  # a rebuilt server, same weights
    ({"n_params": 999}, False),  # other weights behind the same file name
])
def test_only_what_names_the_weights_changes_the_id(change: dict[str, int], same: bool) -> None:
    port = 0
    ids = []
    for variant in [{}, change]:
        info = llama_cpp("/models/m.gguf", n_params=variant.get("n_params", 134515008),
                         created=variant.get("created", 1))
        info["props"]["build_info"] = f"b{variant.get('build', 1)}"
        with StubServer(port=port, **info) as stub:
            port = int(stub.url.split(":")[-1].split("/")[0])
            ids.append(backend(stub.url).id)
    assert (ids[0] == ids[1]) is same


def test_ollama_digest_and_vllm_root_name_the_weights() -> None:
    def ollama(digest: str) -> dict[str, Any]:
        return {"models": {"data": [{"id": "llama3:latest", "owned_by": "library"},
                                    {"id": "qwen2:7b", "owned_by": "library"}]},
                "tags": {"models": [{"name": "qwen2:7b", "digest": "sha256:q"},
                                    {"name": "llama3:latest", "digest": digest}]}}

    one = server_identity("u", "llama3", ollama("sha256:1")["models"], None,
                          ollama("sha256:1")["tags"])
    assert one["verified"] is False  # "llama3" is not listed by that name
    listed = server_identity("u", "llama3:latest", ollama("sha256:1")["models"], None,
                             ollama("sha256:1")["tags"])
    assert listed["verified"] and listed["digest"] == "sha256:1"
    vllm = {"data": [{"id": "served", "root": "/w/llama-3-8b", "created": 1,
                      "owned_by": "vllm", "max_model_len": 8192}]}
    entry = server_identity("u", "served", vllm, None, None)
    assert entry == {"url": "u", "verified": True,
                     "model": {"id": "served", "root": "/w/llama-3-8b", "owned_by": "vllm"}}
    ids = []
    port = 0
    for digest in ["sha256:1", "sha256:2"]:
        with StubServer(port=port, **ollama(digest)) as stub:
            port = int(stub.url.split(":")[-1].split("/")[0])
            ids.append(backend(stub.url, model="llama3:latest").id)
    assert ids[0] != ids[1]


def test_without_v1_models_the_id_falls_back_to_url_and_name_and_says_so() -> None:
    with StubServer(models=None) as a, StubServer(models=None) as b:
        ids = [backend(a.url).id, backend(a.url).id, backend(b.url).id,
               backend(a.url, model="other").id]
    assert all(":server=unverified-" in i for i in ids)
    assert ids[0] == ids[1]  # stable for one server
    assert len({ids[0], ids[2], ids[3]}) == 3  # URL and model name both count
    with StubServer(models={"data": [{"id": "x"}, {"id": "y"}]}) as c:  # not listed
        assert ":server=unverified-" in backend(c.url).id


def test_the_server_is_probed_once_and_only_when_the_id_is_needed() -> None:
    with StubServer(**llama_cpp("/models/a.gguf")) as stub:
        b = backend(stub.url)
        assert stub.gets == []  # building the backend asks nothing
        ids = {b.id for _ in range(5)}
        b.generate(PROMPTS, 8, ["\n"])
        assert b.context_length is None  # llama.cpp's /v1/models has no max_model_len
        assert len(ids) == 1
        assert sorted(stub.gets) == ["/api/tags", "/props", "/v1/models"]
    assert b.servers[0]["props"]["model_path"] == "/models/a.gguf"
    assert "build_info" not in b.servers[0]["props"]


def test_replica_order_does_not_change_the_id() -> None:
    with StubServer() as a, StubServer() as b:
        assert backend([a.url, b.url]).id == backend([b.url, a.url]).id
        assert backend([a.url, b.url]).id != backend(a.url).id
