"""Training examples as token ids: the rung's own chat prompt, then the answer to learn.

A tuned model is only as good as the match between what it was trained on and what it is
asked at prediction time, so the prompt here is rendered by the same backend ``render``
(the tokenizer's chat template) the rung predicts with, and the answer is followed by the
end-of-turn token that ends generation. Only answer tokens carry a loss; the prompt is
masked with -100.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunewise.backends.base import Messages

IGNORE = -100


@dataclass(frozen=True)
class Feature:
    """One training sequence: ``labels`` is ``input_ids`` with the prompt masked out."""

    input_ids: list[int]
    labels: list[int]

    @property
    def answer_tokens(self) -> int:
        """Tokens that carry a loss (the answer and its end-of-turn token)."""
        return sum(t != IGNORE for t in self.labels)


def encode(render: Callable[[Messages], str], tokenize: Callable[[str], list[int]],
           end_of_turn: str, messages: Messages, answer: str) -> Feature:
    """Prompt tokens (masked) followed by answer tokens and the end-of-turn token.

    The answer is tokenized on its own, exactly as generation produces it after the prompt
    (and as the local backend scores a choice), so train and predict see the same tokens.
    """
    prompt = tokenize(render(messages))
    target = tokenize(answer + end_of_turn)
    return Feature(prompt + target, [IGNORE] * len(prompt) + target)


def encode_all(backend: Any, prompts: Sequence[Messages], answers: Sequence[str],
               max_length: int) -> tuple[list[Feature], int]:
    """Features for many examples through a local backend's tokenizer and chat template.

    Returns the features and how many examples were skipped for exceeding ``max_length``
    (skipped rather than cut: a cut answer teaches the model to stop mid-record).
    """
    tok = backend.tok

    def tokenize(text: str) -> list[int]:
        return tok(text, add_special_tokens=False).input_ids

    feats, skipped = [], 0
    for messages, answer in zip(prompts, answers, strict=True):
        f = encode(backend.render, tokenize, backend.end_of_turn, messages, answer)
        if len(f.input_ids) > max_length:
            skipped += 1
            continue
        feats.append(f)
    return feats, skipped


def fingerprint(features: Sequence[Feature]) -> str:
    """Hash of the token sequences: identical training data gives an identical hash."""
    h = hashlib.sha256()
    for f in features:
        h.update(json.dumps([f.input_ids, f.labels]).encode())
    return h.hexdigest()[:16]


def length_batches(lengths: Sequence[int], batch_size: int, seed: int,
                   window: int = 16) -> list[list[int]]:
    """Batches of indices with similar lengths, in a seeded random order.

    Indices are shuffled, cut into windows of ``window`` batches, sorted by length inside
    each window and chunked; the batches are then shuffled. Similar lengths mean little
    padding (padding is compute spent on nothing), while the windows keep each epoch's
    order random rather than always short-to-long.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)).tolist()
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches)).tolist()
    return [batches[i] for i in perm]


def shard_batches(batches: Sequence[list[int]], world: int, rank: int) -> list[list[int]]:
    """Rank ``rank``'s share of an epoch's micro-batches, for ``world`` processes.

    Every rank gets the same number of batches, and at least one: a rank with none (or one
    fewer) would skip a collective (gradient all-reduce) the others wait in, and the run
    would hang. The list is padded by wrapping around to a multiple of ``world`` (as
    torch's DistributedSampler pads), so every batch is trained on each epoch and at most
    ``world - 1`` batches twice.
    """
    if world <= 1 or not batches:
        return [list(b) for b in batches]
    per_rank = -(-len(batches) // world)  # ceil
    padded = [batches[i % len(batches)] for i in range(per_rank * world)]
    return [list(b) for b in padded[rank::world]]


def collate(features: Sequence[Feature], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (padding masked)."""
    import torch

    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f.input_ids)
        ids[i, :n] = torch.tensor(f.input_ids)
        labels[i, :n] = torch.tensor(f.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_packed(features: Sequence[Feature]) -> dict[str, Any]:
    """All features in one row, no padding: input_ids, position_ids (restarting at 0 for
    each feature), labels, and no attention mask, which is what makes transformers build a
    block-diagonal causal mask from the position ids (attention stays inside each feature).
    The first label of each feature is masked so no position predicts across a boundary."""
    import torch

    ids, pos, labels = [], [], []
    for f in features:
        ids.extend(f.input_ids)
        pos.extend(range(len(f.input_ids)))
        labels.extend([IGNORE, *f.labels[1:]])
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]),
            "attention_mask": None, "labels": torch.tensor([labels])}
