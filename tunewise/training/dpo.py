"""Direct preference optimisation (DPO) through the LoRA trainer's loop.

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly
a Reward Model", eq. 7) trains a policy on pairs (prompt, chosen, rejected) without a
reward model. With ``log pi(y|x)`` summed over the answer's tokens:

    loss = -log sigmoid( beta * [ (log pi(chosen) - log ref(chosen))
                                 - (log pi(rejected) - log ref(rejected)) ] )

The policy is a fresh LoRA adapter on the starting model (the base model, or the base with
the task's supervised adapter merged in); the reference is that starting model itself, i.e.
the policy with its adapter switched off, so no second copy of the model is held. Reference
log-probs are computed once, before the first step. TRL's DPOTrainer was not used: TRL is
only in the ``bench`` extra, and its trainer would bypass this loop's answer-only logits,
length batching, checkpoints and cache.

Everything else (batches, schedule, Ctrl-C checkpoints, resume, cache) is
:class:`tunewise.training.lora.LoraTrainer`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.task import LoraSpec
from tunewise.training.adapters import Adapter, cached_training
from tunewise.training.features import Feature, collate, fingerprint
from tunewise.training.lora import PLAIN_HEAD, TRAINER_VERSION, LoraTrainer, answer_logits

DPO_VERSION = "1"  # bump when the DPO objective or its inputs change: part of the cache key


@dataclass(frozen=True)
class Pair:
    """One preference pair: the same prompt with the chosen and the rejected answer."""

    chosen: Feature
    rejected: Feature

    @property
    def input_ids(self) -> list[int]:
        """The longer sequence: what length batching and the memory check go by."""
        c, r = self.chosen.input_ids, self.rejected.input_ids
        return c if len(c) >= len(r) else r

    @property
    def answer_tokens(self) -> int:
        """Answer tokens of both sequences."""
        return self.chosen.answer_tokens + self.rejected.answer_tokens


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any,
             beta: float) -> tuple[Any, Any, Any]:
    """Per-pair DPO losses and the implicit rewards of chosen and rejected answers.

    All inputs are tensors of summed answer log-probs, one value a pair.
    """
    import torch.nn.functional as F

    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def _logp_module(model: Any) -> Any:
    """Wrap a peft model so forward returns each sequence's summed answer-token log-prob."""
    import torch
    import torch.nn.functional as F

    class SequenceLogps(torch.nn.Module):
        """Logits only where a label exists, as in the SFT loss; one sum per sequence."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.base = inner.get_base_model()
            self.fast = getattr(self.base.config, "model_type", "") in PLAIN_HEAD

        def forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
            logits, target, sel = answer_logits(self, input_ids, attention_mask, labels)
            logp = F.log_softmax(logits.float(), dim=-1)
            picked = logp.gather(1, target[sel].unsqueeze(1)).squeeze(1)
            rows = sel.nonzero()[:, 0]  # boolean indexing is row-major: row of each token
            return torch.zeros(input_ids.shape[0], device=picked.device).index_add(
                0, rows, picked)

    return SequenceLogps(model)


class DpoTrainer(LoraTrainer):
    """A LoRA adapter trained by DPO on preference pairs.

    Args:
        base_model: the model folder.
        spec: loop settings (LoRA shape, batch size, epochs, learning rate).
        train, dev: preference pairs (dev gives the early-stopping loss).
        out_dir, pad_id: as for :class:`LoraTrainer`.
        beta: the DPO temperature.
        sft_adapter: an adapter folder merged into the base first (start from SFT), or None.
    """

    sequences_per_item = 2  # chosen and rejected

    def __init__(self, base_model: str, spec: LoraSpec, train: Sequence[Pair],
                 dev: Sequence[Pair], out_dir: Path, pad_id: int, *, beta: float,
                 sft_adapter: Path | None = None, **kwargs: Any) -> None:
        super().__init__(base_model, spec, train, dev, out_dir, pad_id, **kwargs)
        self.beta = beta
        self.sft_adapter = sft_adapter

    def _prepare_base(self, model: Any) -> Any:
        if self.sft_adapter is None:
            return model
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(self.sft_adapter)).merge_and_unload()

    def _make_module(self, model: Any) -> Any:
        return _logp_module(model)

    def _plan(self) -> None:
        super()._plan()
        # The reference log-probs of a pair are computed when a step first needs it: a
        # capped run (max_steps) pays for the pairs it trains on, not for every pair.
        self.ref_known: dict[int, Any] = {}
        self.ref_dev: Any = None

    def _train_reference(self, indices: list[int]) -> Any:
        """Reference log-probs (len(indices), 2) of these training pairs."""
        import torch

        missing = [i for i in indices if i not in self.ref_known]
        if missing:
            rows = self._reference([self.train_feats[i] for i in missing])
            self.ref_known.update(zip(missing, rows, strict=True))
        return torch.stack([self.ref_known[i] for i in indices])

    def _logps(self, pairs: Sequence[Pair]) -> tuple[Any, Any]:
        """Summed answer log-probs of the chosen and the rejected answers, one per pair."""
        feats = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        batch = {k: v.to(self.accelerator.device) for k, v in collate(feats, self.pad_id).items()}
        out = self.module(**batch)
        return out[: len(pairs)], out[len(pairs):]

    def _reference(self, pairs: Sequence[Pair]) -> Any:
        """The starting model's log-probs (adapter off, no dropout), shape (pairs, 2)."""
        import torch

        if not pairs:
            return torch.zeros((0, 2))
        self.module.eval()
        rows = []
        bs = self.spec.batch_size
        with torch.no_grad(), self.peft_model.disable_adapter():
            for b in range(0, len(pairs), bs):
                c, r = self._logps(pairs[b : b + bs])
                rows.append(torch.stack([c, r], dim=1).cpu())
        self.module.train()
        return torch.cat(rows)

    def _train_step(self, group: list[list[int]]) -> tuple[float, int, int]:
        n = sum(len(mb) for mb in group)
        tokens = sum(len(self.train_feats[i].chosen.input_ids)
                     + len(self.train_feats[i].rejected.input_ids) for mb in group for i in mb)
        answer = sum(self.train_feats[i].answer_tokens for mb in group for i in mb)
        loss_sum = 0.0
        import contextlib

        for j, mb in enumerate(group):
            sync = j == len(group) - 1
            ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.module)
            with ctx:
                ref = self._train_reference(list(mb))
                pc, pr = self._logps([self.train_feats[i] for i in mb])
                ref = ref.to(pc.device)
                losses, _, _ = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], self.beta)
                self.accelerator.backward(losses.sum() / n)
            loss_sum += float(losses.detach().sum())
        self.accelerator.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / n, tokens, answer

    def dev_loss(self) -> float | None:
        """Mean DPO loss on the dev pairs (None without dev pairs)."""
        import torch

        if not self.dev_feats:
            return None
        if self.ref_dev is None:
            self.ref_dev = self._reference(self.dev_feats)
        self.module.eval()
        total = 0.0
        bs = self.spec.batch_size
        with torch.no_grad():
            for b in range(0, len(self.dev_feats), bs):
                pc, pr = self._logps(self.dev_feats[b : b + bs])
                ref = self.ref_dev[b : b + bs].to(pc.device)
                losses, _, _ = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], self.beta)
                total += float(losses.sum())
        self.module.train()
        return total / len(self.dev_feats)


def dpo_key(base_id: str, sft_key: str | None, spec: LoraSpec, beta: float,
            train: Sequence[Pair], dev: Sequence[Pair]) -> str:
    """Content address of a DPO adapter: start model, settings and the pairs."""
    from tunewise.training.adapters import TRAINING_FIELDS

    settings = spec.model_dump(mode="json", include=TRAINING_FIELDS)
    data = [fingerprint([p.chosen for p in train]), fingerprint([p.rejected for p in train]),
            fingerprint([p.chosen for p in dev]), fingerprint([p.rejected for p in dev])]
    blob = json.dumps([TRAINER_VERSION, DPO_VERSION, base_id, sft_key, settings, beta, data],
                      sort_keys=True)
    return "dpo-" + hashlib.sha256(blob.encode()).hexdigest()[:20]


def train_or_load_dpo(base_id: str, base_path: str, spec: LoraSpec, beta: float,
                      train: Sequence[Pair], dev: Sequence[Pair], pad_id: int,
                      sft: Adapter | None, *, label: str = "dpo",
                      log: Callable[[str], None] = print,
                      on_step: Callable[[LoraTrainer], None] | None = None) -> Adapter:
    """The cached DPO adapter for these pairs, training (or resuming) it when needed."""
    key = dpo_key(base_id, sft.key if sft else None, spec, beta, train, dev)
    return cached_training(key, lambda path: DpoTrainer(
        base_path, spec, train, dev, path, pad_id, beta=beta,
        sft_adapter=sft.path if sft else None, label=label, log=log, on_step=on_step))
