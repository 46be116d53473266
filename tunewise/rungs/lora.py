"""Fine-tuning rungs: a LoRA adapter trained on the task, alone and in combination.

- ``lora``: the tuned model answers the bare input (no system prompt, no shots). It is
  trained on exactly that prompt, so the behaviour it learns needs no instructions, and
  its prompts are the shortest of any rung (the point of tuning at volume).
- ``lora_system_prompt``: the same adapter, prompted with the system prompt as well.
- ``lora_rag``: the same adapter, prompted the way the ``rag`` rung prompts (retrieved
  passages), and answered through that rung's own prediction step.

The adapter is trained once per task/settings/data (see :mod:`tunewise.training.adapters`);
the combinations reuse it and never retrain.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tunewise.backends.base import CachedBackend, Messages
from tunewise.dataset import Example
from tunewise.errors import TunewiseError
from tunewise.extras import missing
from tunewise.prompts import build_messages, row_system
from tunewise.rungs.base import (
    Prepared,
    PromptRung,
    RunContext,
    RungMeta,
    RungUnavailable,
    get_rung,
)


def local_backend(ctx: RunContext) -> Any | None:
    """The run's local (transformers) backend, or None: training needs the weights."""
    from tunewise.backends.local import LocalBackend

    inner = ctx.backend.inner
    return inner if isinstance(inner, LocalBackend) else None


def train_prompt(ctx: RunContext, ex: Example) -> Messages:
    """The prompt the adapter is trained on and the ``lora`` rung predicts with."""
    return build_messages(ctx.task, ctx.labels, ex.input, system=False,
                          row_system=row_system(ctx.task, ex))


@dataclass
class Tuned:
    """A trained adapter and the model that answers with it."""

    adapter: Any  # tunewise.training.adapters.Adapter
    backend: Any  # LocalBackend with the adapter merged in
    skipped_long: int

    def info(self) -> dict[str, Any]:
        """What the rung result reports about training (the cost model reads it too)."""
        log = self.adapter.log
        return {
            "train_examples": log.get("n_train"),
            "dev_examples": log.get("n_dev"),
            "skipped_too_long": self.skipped_long,
            "steps": log.get("steps_done"),
            "epochs": log.get("epochs_done"),
            "examples_seen": log.get("examples_seen"),
            "train_tokens": log.get("train_tokens"),
            "train_seconds": log.get("train_seconds"),
            "final_loss": log.get("final_loss"),
            "dev_loss": log.get("dev_loss"),
            "stopped_early": log.get("stopped_early"),
            **training_stop(log, max_steps_of(log)),
            "resumed_from_step": log.get("resumed_from_step", []),
            "precision": log.get("precision"),
            "device": log.get("device"),
            "method": log.get("method", "lora"),
            "trainable_params": log.get("trainable_params"),
            "peak_rss_mb": log.get("peak_rss_mb"),
            "artefact_bytes": log.get("artefact_bytes"),
            "adapter_key": self.adapter.key,
            "adapter_path": str(self.adapter.path),
            "trained_now": self.adapter.trained_now,
            "prompt": "bare input (no system prompt), as trained",
        }


def max_steps_of(log: dict[str, Any]) -> int | None:
    """The ``lora.max_steps`` the adapter was trained with (from its saved config)."""
    return (log.get("config") or {}).get("max_steps")


def training_stop(log: dict[str, Any], max_steps: int | None) -> dict[str, Any]:
    """Why training stopped, and whether its loss was still falling then.

    ``stopped_by`` is ``early_stopping`` (dev loss stopped improving), ``max_steps`` (the
    step cap cut it) or ``epochs`` (all epochs ran). ``loss_falling`` compares the last two
    dev losses when there are two, else the mean training loss of the last quarter of the
    steps with the quarter before (a fall of over 5% counts): an adapter stopped by a cap
    while still falling is under-trained, which the verdict says instead of "adds little".
    """
    epochs = [e.get("dev_loss") for e in log.get("epochs") or []]
    steps = [s.get("loss") for s in log.get("steps") or [] if s.get("loss") is not None]
    if log.get("stopped_early"):
        stopped = "early_stopping"
    elif max_steps is not None and log.get("steps_done") == max_steps:
        stopped = "max_steps"
    else:
        stopped = "epochs"
    dev = [x for x in epochs if x is not None]
    falling: bool | None = None
    if len(dev) >= 2:
        falling = dev[-1] < dev[-2] * 0.99
    elif len(steps) >= 8:
        q = len(steps) // 4
        last, before = sum(steps[-q:]) / q, sum(steps[-2 * q:-q]) / q
        falling = last < before * 0.95
    return {"stopped_by": stopped, "loss_falling": falling, "dev_losses": epochs,
            "max_steps": max_steps}


@contextlib.contextmanager
def naming_the_model_line(ctx: RunContext) -> Iterator[None]:
    """Errors about the model itself (the planner refusing a model too large for the
    memory, raised deep in the trainer with no file) name the task file's line of the
    model that was to be trained: ``models.NAME.model`` or ``backend.model``."""
    with naming_model_line(ctx.task, ctx.model):
        yield


@contextlib.contextmanager
def naming_model_line(task: Any, model: str) -> Iterator[None]:
    """:func:`naming_the_model_line` for a task and one of its model names."""
    try:
        yield
    except TunewiseError as exc:
        if exc.path is not None or exc.field != "backend.model":
            raise
        field, line = "backend.model", task.line_of("backend.model") or task.line_of("backend")
        if task.models and model in task.models:
            field = f"models.{model}.model"
            dotted = "." in model  # line_of splits on dots: such a name is not found
            line = (None if dotted else task.line_of(field) or task.line_of(
                f"models.{model}")) or task.line_of("models")
        elif task.backends:
            field, line = "backends", task.line_of("backends")
        raise TunewiseError(exc.message, path=task.source, line=line, field=field) from None


def train_adapter(ctx: RunContext, train: list[Example], label: str = "lora",
                  on_step: Any = None, spec: Any = None, full: bool = False
                  ) -> tuple[Any, int]:
    """The cached adapter for ``train`` (training or resuming when it is not finished).

    ``spec`` overrides the task's ``lora:`` settings; ``full`` trains every weight instead
    of an adapter (the ``full_ft`` rung). Returns the adapter and how many examples were
    too long to train on.
    """
    from tunewise.backends.local import resolve_model
    from tunewise.training.adapters import remembered, text_key, train_or_load
    from tunewise.training.features import encode_all

    base = local_backend(ctx)
    if base is None:
        raise TunewiseError("fine-tuning needs the local backend (the model's weights)",
                            field="backend.kind")
    spec = spec or ctx.task.lora
    pairs = [(train_prompt(ctx, e), e.output) for e in train]
    dev_pairs = [(train_prompt(ctx, e), e.output) for e in ctx.split.dev]

    def train_now() -> tuple[Any, int]:
        feats, skipped = encode_all(base, [m for m, _ in pairs], [a for _, a in pairs],
                                    spec.max_length)
        dev, _ = encode_all(base, [m for m, _ in dev_pairs], [a for _, a in dev_pairs],
                            spec.max_length)
        if skipped:
            ctx.log(f"{label}: {skipped} training examples are longer than lora.max_length="
                    f"{spec.max_length} tokens and were skipped")
        with naming_the_model_line(ctx):
            adapter = train_or_load(base.id, resolve_model(base.name), spec, feats, dev,
                                    base.tok.pad_token_id, label=label, log=ctx.log,
                                    on_step=on_step, full=full, before=base.unload)
        return adapter, skipped

    return remembered(text_key(base.id, spec, pairs, dev_pairs, full), train_now)


def load_tuned(ctx: RunContext, adapter: Any) -> Any:
    """A local backend answering with ``adapter`` merged into the base weights.

    Merging removes the adapter's extra matmuls from every decoding step; the backend id
    still names the adapter, so its cache entries never mix with the base model's. Nothing
    is loaded until a call misses the cache (a re-run answered from the store loads no
    weights).
    """
    from tunewise.backends.local import LocalBackend

    base = local_backend(ctx)
    return LocalBackend(base.name, batch_size=base.batch_size, adapter=adapter.path,
                        score_end_of_turn=base.score_end_of_turn, threads=base.threads,
                        merge_adapter=True)


def check_examples(ctx: RunContext, label: str = "lora") -> None:
    """The guard rails on data size every fine-tuning rung shares.

    Raises:
        TunewiseError: fewer training examples than ``decision.min_examples``.
    """
    n, spec = len(ctx.split.train), ctx.task.decision
    if n < spec.min_examples:
        raise TunewiseError(f"only {n} training examples; fine-tuning needs at least "
                            f"{spec.min_examples} (collect more, or keep prompting)",
                            field="decision.min_examples")
    if n < spec.warn_examples:
        ctx.log(f"{label}: {n} training examples; under {spec.warn_examples} results are "
                f"fragile")


def main_adapter(ctx: RunContext, on_step: Any = None) -> tuple[Any, int]:
    """The task's adapter on all training examples, with the guard rails on data size.

    Raises:
        TunewiseError: fewer training examples than ``lora.min_examples``.
    """
    check_examples(ctx)
    return train_adapter(ctx, ctx.split.train, on_step=on_step)


def tuned_model(ctx: RunContext) -> Tuned:
    """The task's tuned model, built once per run and shared by the lora rungs."""
    if "lora" not in ctx.shared:
        adapter, skipped = main_adapter(ctx)
        ctx.shared["lora"] = Tuned(adapter, load_tuned(ctx, adapter), skipped)
    return ctx.shared["lora"]


def release(backend: Any) -> None:
    """Free a backend's weights now (a lazy local backend reloads them if called again)
    rather than whenever the collector runs and the caller's references go."""
    unload = getattr(backend, "unload", None)
    if unload is not None:
        unload()
    gc.collect()


class Lora(PromptRung):
    """The tuned model on the bare input."""

    name = "lora"
    meta = RungMeta("fine_tuning", 70, needs={"train_examples", "weights"}, prompt=("query",))

    def requires(self, ctx: RunContext) -> str | None:
        if local_backend(ctx) is None:
            return "fine-tuning needs the local backend (the model's weights)"
        return missing("train")

    def prompt(self, ctx: RunContext, ex: Example) -> Messages:
        """How this rung prompts the tuned model."""
        return train_prompt(ctx, ex)

    def tuned(self, ctx: RunContext) -> Tuned:
        """The tuned model this rung answers with (``distill`` trains another)."""
        return tuned_model(ctx)

    def prepare(self, ctx: RunContext) -> Prepared:
        from tunewise.training.adapters import copy_adapter

        tuned = self.tuned(ctx)
        info = tuned.info()
        if ctx.run_id:  # a real run keeps its own copy of the adapter and training log
            info["run_adapter_path"] = str(copy_adapter(tuned.adapter,
                                                        ctx.work_dir / "adapters" / self.name))
        backend = CachedBackend(tuned.backend, ctx.store, ctx.run_id or None, self.name)
        return Prepared(self.name, lambda ex: self.prompt(ctx, ex), info=info,
                        upfront_s=tuned.adapter.train_seconds, backend=backend)


class LoraSystemPrompt(Lora):
    """The tuned model with the system prompt (task description, format, rules) added."""

    name = "lora_system_prompt"
    meta = RungMeta("fine_tuning", 100, needs={"train_examples", "weights"})

    def prompt(self, ctx: RunContext, ex: Example) -> Messages:
        return build_messages(ctx.task, ctx.labels, ex.input,
                              row_system=row_system(ctx.task, ex))


class LoraRag(Lora):
    """The tuned model prompted and answered by the ``rag`` rung (retrieved passages)."""

    name = "lora_rag"
    meta = RungMeta("fine_tuning", 90, needs={"corpus", "train_examples", "weights"},
                    prompt=("query", "system", "passages"))

    def _rag(self) -> Any:
        return get_rung("rag")

    def requires(self, ctx: RunContext) -> str | None:
        try:
            rag = self._rag()
        except (RungUnavailable, ImportError):
            return "needs the retrieval rung (rag), which is not available in this version"
        return rag.requires(ctx) or super().requires(ctx)

    def prepare(self, ctx: RunContext) -> Prepared:
        rag_prepared = self._rag().prepare(ctx)
        lora_prepared = super().prepare(ctx)
        rag_prepared.rung = self.name
        rag_prepared.backend = lora_prepared.backend
        rag_prepared.info = {**rag_prepared.info, "lora": lora_prepared.info}
        rag_prepared.upfront_s = rag_prepared.upfront_s + lora_prepared.upfront_s
        return rag_prepared

    def predict(self, prepared: Prepared, examples: list[Example], ctx: RunContext) -> list:
        return self._rag().predict(prepared, examples, ctx)

    def with_corpus(self, prepared: Prepared, corpus: Any, ctx: RunContext) -> Prepared:
        """Re-point the retriever at another corpus (freshness test); the adapter stays."""
        return self._rag().with_corpus(prepared, corpus, ctx)
