"""Asking the servers behind the OpenAI-compatible backend who they are and what they offer.

- **Cache identity.** The backend ``id`` (part of every cache key) names the server as well
  as the model: the base URLs, the model id ``/v1/models`` reports, and the weights'
  fingerprint where the server gives one (llama.cpp: ``/v1/models`` meta and ``/props``;
  Ollama: ``/api/tags`` digest; see :mod:`tunewise.backends.openai_identity`). Probed once
  per backend, when the id is first needed. A server that cannot be asked gets
  ``server=unverified-...``: base URLs and model name only. A server that is down takes the
  identity it gave when last probed, remembered in the store.
- **Optional features**, each probed once and remembered: a tokenize endpoint
  (llama-cpp-python ``/extras/tokenize/count``, llama.cpp and vLLM ``/tokenize``), the
  chat template (llama.cpp ``/apply-template``), echoed prompt log-probs, grammar-forced
  completions, and the served context window (vLLM ``max_model_len``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

import httpx

from tunewise.backends.base import Messages
from tunewise.backends.openai_identity import served_entry, server_identity
from tunewise.backends.openai_transport import Transport, _Retryable, server_root
from tunewise.backends.openai_wire import forced_logprobs, http_detail, token_grammar
from tunewise.errors import TunewiseError, redact

log = logging.getLogger(__name__)


class ServerProbe:
    """What the servers of one backend are and can do, each asked once."""

    def __init__(self, transport: Transport, model: str) -> None:
        self.transport = transport
        self.model = model
        self.features: dict[str, Any] = {}  # probed once: tokenize, apply-template, ...
        self.unreachable: set[str] = set()  # base URLs that gave no answer to the probe
        self.store: Any = None  # where server identities are remembered (attach_store)

    # ---- identity ----------------------------------------------------------------
    def _identity_key(self, url: str) -> str:
        blob = json.dumps(["openai-identity", url, self.model], ensure_ascii=True)
        return "identity:" + hashlib.sha256(blob.encode()).hexdigest()

    def recall(self, servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Servers that did not answer at all take the identity they gave when last probed
        (one log line says so); servers that answered and named their model are remembered.

        Without this, a re-run whose answers are all cached would miss the cache only
        because the server is down: its id would fall back to the unverified URL-and-name
        form. A server that answers is never overridden: new weights give a new id.
        """
        store = self.store
        if store is None:
            return servers
        keys = {s["url"]: self._identity_key(s["url"]) for s in servers}
        down = [s["url"] for s in servers if s["url"] in self.unreachable]
        memory = store.get_memo([keys[u] for u in down]) if down else {}
        out, used = [], []
        for server in servers:
            known = memory.get(keys[server["url"]])
            if server["url"] in self.unreachable and known:
                out.append(known["identity"])
                used.append(f"{server['url']} (as probed "
                            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(known['at']))})")
            else:
                out.append(server)
        if used:
            log.warning("%s", redact("server unreachable; cached answers are looked up under "
                                     "the identity it last gave: " + ", ".join(used)))
        fresh = {keys[s["url"]]: {"identity": s, "at": time.time()} for s in servers
                 if s["verified"] and s["url"] not in self.unreachable}
        if fresh:
            store.put_memo(fresh)
        return out

    def identify(self) -> list[dict[str, Any]]:
        """Each base URL's identity (see :func:`server_identity`), its probes concurrent.
        A URL none of whose probes got any answer is noted in ``unreachable``."""
        transport = self.transport

        async def probe(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
            root = server_root(url)
            failed: list[str] = []
            models, props, tags = await asyncio.gather(
                transport.get_json(client, url + "/models", failed=failed),
                transport.get_json(client, root + "/props", failed=failed),
                transport.get_json(client, root + "/api/tags", failed=failed))
            if len(failed) == 3:
                self.unreachable.add(url)
            if models is not None:
                self.features.setdefault("models", models)
            return server_identity(url, self.model, models, props, tags)

        async def all_urls() -> list[dict[str, Any]]:
            async with transport.client(3 * len(transport.urls)) as client:
                return list(await asyncio.gather(*(probe(client, u)
                                                   for u in sorted(set(transport.urls)))))

        return transport.run_sync(all_urls)

    # ---- optional features -------------------------------------------------------
    def server_template(self, prompt: Messages) -> str | None:
        """The prompt rendered by the server's /apply-template (llama.cpp), if offered."""
        if self.features.get("apply_template") is False:
            return None
        data = self.transport.try_("/apply-template", {"messages": prompt})
        if data is not None and isinstance(data.get("prompt"), str):
            self.features["apply_template"] = True
            return data["prompt"]
        if self.features.get("apply_template"):  # it worked before: do not guess now
            raise TunewiseError(self.transport.error(
                server_root(self.transport.urls[0]) + "/apply-template", "failed"),
                field="backend")
        self.features["apply_template"] = False
        return None

    def server_count(self, text: str) -> int | None:
        """Tokens of ``text`` by the server's own tokenizer, when it offers one."""
        how = self.features.get("tokenize")
        if how is None:
            for name in ("extras", "tokenize"):
                self.features["tokenize"] = name
                if (n := self.server_count(text)) is not None:
                    return n
            self.features["tokenize"] = False
            return None
        if how == "extras":  # llama-cpp-python
            data = self.transport.try_("/extras/tokenize/count",
                                       {"input": text, "model": self.model}, root=True)
            return int(data["count"]) if data and "count" in data else None
        if how == "tokenize":  # llama.cpp server ("content"), vLLM ("prompt")
            data = self.transport.try_("/tokenize", {"content": text, "prompt": text,
                                                     "model": self.model, "add_special": False})
            return len(data["tokens"]) if data and isinstance(data.get("tokens"), list) else None
        return None

    def context_length(self) -> int | None:
        """The served context window when the server says (vLLM ``max_model_len``)."""
        if "context" not in self.features:
            models = self.features.get("models") or self.transport.try_("/models", None,
                                                                        root=False)
            entry = served_entry(models, self.model) or {}
            length = entry.get("max_model_len")
            ok = isinstance(length, int) and not isinstance(length, bool) and length > 0
            self.features["context"] = length if ok else None
        return self.features["context"]

    def echoes_logprobs(self) -> bool:
        """Whether ``/completions`` echoes the prompt's token log-probs (logprob scoring)."""
        data = self.transport.try_("/completions", {
            "model": self.model, "prompt": "Hello world", "max_tokens": 1, "temperature": 0,
            "echo": True, "logprobs": 1}, root=False)
        try:
            lp = data["choices"][0]["logprobs"]  # type: ignore[index]
            return any(x is not None for x in lp["token_logprobs"]) and bool(lp["text_offset"])
        except (KeyError, IndexError, TypeError):
            return False

    def check_forced(self, tok: Any) -> None:
        """One tiny forced completion, so a server that cannot do it fails at once, with
        its reason, instead of after every retry of every item."""
        if tok is None:
            raise TunewiseError("score_method forced needs backend.tokenizer (the token ids "
                                "of each label)", field="backend.tokenizer")
        ids = tok("Yes, thank you", add_special_tokens=False).input_ids[:2]
        url = self.transport.urls[0]
        why = ""
        try:
            resp = self.transport.request(url + "/completions", {
                "model": self.model, "prompt": "Hello", "max_tokens": len(ids), "temperature": 0,
                "logprobs": 1, "grammar": token_grammar(ids)})
        except _Retryable as exc:
            why = exc.why
        else:
            if resp.status_code != 200:
                why = f"HTTP {resp.status_code}{http_detail(resp)}"
            else:
                try:
                    forced_logprobs(resp.json(), len(ids))
                except ValueError as exc:  # also a body that is not JSON
                    why = str(exc)
        if why:
            raise TunewiseError(self.transport.error(
                url, f"score_method forced does not work here: {why}. llama-cpp-python "
                "needs --logits_all true (LLAMA_LOGITS_ALL=1 for scripts/llama_server.sh); "
                "other servers: score_method constrained"), field="backend.score_method")
