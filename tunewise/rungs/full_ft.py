"""The ``full_ft`` rung: every weight trained, same data, prompt and schedule as ``lora``.

It answers "is LoRA enough, or do we need a full fine-tune?" on the user's own task. The
training loop is the LoRA trainer's (:class:`tunewise.training.lora.LoraTrainer` with
``full=True``): same features, batches, epochs, warm-up, early stopping, checkpoints and
cache; only the learning rate differs (``lora.full_lr``), because a rate that suits a
freshly initialised adapter would wreck pretrained weights. The result carries what the
comparison needs: train time, peak memory, trainable parameters and the artefact's size
(a whole model, against an adapter of a few MB), and the cost model hosts it as a model of
its own (an adapter can share the base model's deployment; a full fine-tune cannot).
"""

from __future__ import annotations

from typing import Any

from tunewise.backends.base import CachedBackend, Messages
from tunewise.dataset import Example
from tunewise.rungs.base import Prepared, PromptRung, RunContext, RungMeta
from tunewise.rungs.lora import (
    Lora,
    Tuned,
    check_examples,
    local_backend,
    train_adapter,
    train_prompt,
)


def full_model(ctx: RunContext) -> Tuned:
    """The task's fully fine-tuned model, trained (or loaded from the cache) once per run."""
    from tunewise.backends.local import LocalBackend

    if "full_ft" not in ctx.shared:
        check_examples(ctx, "full_ft")
        spec = ctx.task.lora.model_copy(update={"lr": ctx.task.lora.full_lr})
        trained, skipped = train_adapter(ctx, ctx.split.train, label="full_ft", spec=spec,
                                         full=True)
        base = local_backend(ctx)
        backend = LocalBackend(str(trained.path), batch_size=base.batch_size,
                               score_end_of_turn=base.score_end_of_turn)
        ctx.shared["full_ft"] = Tuned(trained, backend, skipped)
    return ctx.shared["full_ft"]


class FullFt(PromptRung):
    """The fully fine-tuned model on the bare input (the prompt it was trained on)."""

    name = "full_ft"
    meta = RungMeta("fine_tuning", 110, needs={"train_examples", "weights"},
                    prompt=("query",), opt_in=True)

    def requires(self, ctx: RunContext) -> str | None:
        return Lora().requires(ctx)

    def prompt(self, ctx: RunContext, ex: Example) -> Messages:
        """How this rung prompts the tuned model: exactly as ``lora`` does."""
        return train_prompt(ctx, ex)

    def prepare(self, ctx: RunContext) -> Prepared:
        from tunewise.training.adapters import copy_adapter

        tuned = full_model(ctx)
        info: dict[str, Any] = {**tuned.info(), "separate_model": True,
                                "learning_rate": ctx.task.lora.full_lr}
        if ctx.run_id:  # the run keeps its own copy of the tuned weights and training log
            info["run_adapter_path"] = str(copy_adapter(tuned.adapter,
                                                        ctx.work_dir / "adapters" / self.name))
        backend = CachedBackend(tuned.backend, ctx.store, ctx.run_id or None, self.name)
        return Prepared(self.name, lambda ex: self.prompt(ctx, ex), info=info,
                        upfront_s=tuned.adapter.train_seconds, backend=backend)
