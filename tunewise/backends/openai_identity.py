"""Which weights a server serves: the part of the openai backend's id that names the server.

The answers come from ``/v1/models`` (every OpenAI-compatible server), llama.cpp's
``/props`` and Ollama's ``/api/tags``; each is optional. What each server puts there (read
from their sources): llama.cpp lists its one model with ``meta`` (vocabulary, parameter
count, size, quantisation) and gives the GGUF path and chat template in ``/props``;
llama-cpp-python lists only its aliases; vLLM gives ``root`` (the weights' path or hub id);
Ollama's tags carry a content digest (llama.cpp's Ollama-style list leaves it empty).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Only fields that stay put while the same weights are served: never ``created`` (llama.cpp
# and vLLM put the current time there), build info, slot or sleep state, or context settings.
MODEL_FIELDS = ("id", "aliases", "owned_by", "root", "parent")  # a /v1/models entry
META_FIELDS = ("vocab_type", "n_vocab", "n_ctx_train", "n_embd", "n_params", "size", "ftype")
PROPS_FIELDS = ("model_path", "model_ftype", "chat_template", "bos_token", "eos_token")


def served_entry(models: Any, name: str) -> dict[str, Any] | None:
    """The ``/v1/models`` entry of the model asked for: listed under its name or an alias,
    else the only entry (llama.cpp and llama-cpp-python serve one model whatever it is
    called in the request)."""
    entries = models.get("data") if isinstance(models, dict) else None
    entries = [e for e in entries or [] if isinstance(e, dict)]
    for entry in entries:
        aliases = entry.get("aliases")
        if entry.get("id") == name or (isinstance(aliases, list) and name in aliases):
            return entry
    return entries[0] if len(entries) == 1 else None


def server_identity(url: str, name: str, models: Any, props: Any, tags: Any
                    ) -> dict[str, Any]:
    """What identifies the weights behind one base URL, from its (optional) answers to
    ``/v1/models``, llama.cpp's ``/props`` and Ollama's ``/api/tags``.

    ``verified`` is False when ``/v1/models`` did not answer or does not list the model:
    the identity is then only the URL and the model name.
    """
    out: dict[str, Any] = {"url": url}
    entry = served_entry(models, name)
    out["verified"] = entry is not None
    if entry is None:
        return out
    out["model"] = {k: entry[k] for k in MODEL_FIELDS if entry.get(k) is not None}
    meta = entry.get("meta")
    if isinstance(meta, dict):  # llama.cpp
        out["meta"] = {k: meta[k] for k in META_FIELDS if meta.get(k) is not None}
    if isinstance(props, dict):  # llama.cpp
        kept = {k: props[k] for k in PROPS_FIELDS if props.get(k) not in (None, "")}
        if kept:
            out["props"] = kept
    served = str(entry.get("id", name))
    wanted = {served, f"{served}:latest"}  # Ollama adds the default tag
    for tag in (tags.get("models") if isinstance(tags, dict) else None) or []:
        if (isinstance(tag, dict) and tag.get("digest")  # llama.cpp leaves it empty
                and (tag.get("name") in wanted or tag.get("model") in wanted)):
            out["digest"] = str(tag["digest"])  # Ollama: the model's content digest
            break
    return out


def server_key(model: str, servers: list[dict[str, Any]]) -> str:
    """The id's server part: a digest of every base URL's identity, marked ``unverified-``
    when one of them could not say which model it serves."""
    blob = json.dumps({"model": model, "servers": sorted(servers, key=lambda s: s["url"])},
                      sort_keys=True)  # ASCII escapes: a lone surrogate cannot break it
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return digest if all(s["verified"] for s in servers) else f"unverified-{digest}"
