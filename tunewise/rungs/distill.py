"""The ``distill`` rung: a larger model's answers train a small model (LoRA).

Teams with few gold labels and a good (but dear) prompted model often end up here: the
prompted model labels the inputs, and a small model is tuned on those labels.

1. The teacher is the best prompting cell of another model of the task (``distill.teacher``
   or every other model), chosen by its score on the dev split; the test split is never
   read to choose.
2. The teacher labels the training inputs (their gold outputs are ignored) and the inputs
   of the optional ``unlabelled:`` file.
3. A LoRA adapter is trained on those labels exactly as the ``lora`` rung trains on gold
   ones (same code, same prompt), and the student answers the bare input.

The cell is scored on the gold test split like every other; its upfront cost includes the
teacher's labelling calls at the teacher's price (see :mod:`tunewise.cells`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tunewise.dataset import Example, read_rows
from tunewise.errors import TunewiseError
from tunewise.evaluate import evaluate
from tunewise.plugins import family, rung_names
from tunewise.rungs.base import RunContext, RungMeta, get_rung
from tunewise.rungs.lora import Lora, Tuned, load_tuned, train_adapter
from tunewise.task import TaskSpec


@dataclass
class Teacher:
    """The cell that labels: model, rung, its dev score, and how it prompts."""

    model: str
    rung: str
    dev_value: float
    ctx: RunContext
    prepared: Any
    dev_calls: int = 0  # calls made to choose the teacher (every candidate on dev)


@dataclass
class Distilled(Tuned):
    """A student adapter trained on a teacher's labels."""

    teacher: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "teacher": self.teacher}


def teacher_models(ctx: RunContext) -> list[str]:
    """Models that may teach this one: ``distill.teacher``, else every other model."""
    chosen = ctx.task.distill.teacher
    names = [chosen] if chosen else list(ctx.peers)
    return [n for n in names if n != ctx.model and n in ctx.peers]


def teacher_rungs(ctx: RunContext, model: str) -> list[str]:
    """Prompting rungs ``model`` is tried with as a teacher: ``distill.rungs``, else the
    rungs it runs in this task (its own ``rungs:``, else the task's)."""
    spec = ctx.task.model_entries().get(model)
    names = (ctx.task.distill.rungs or (spec.rungs if spec else None) or ctx.task.rungs
             or list(rung_names()))
    return [n for n in names if family(n) == "prompting"]


def unlabelled_inputs(task: TaskSpec) -> tuple[list[Example], str | None]:
    """Inputs of the ``unlabelled:`` file (ids ``U<line>``), and a warning when rows there
    carry outputs (they are ignored: the teacher labels every input)."""
    spec = task.unlabelled
    if spec is None:
        return [], None
    rows = read_rows(spec.path)
    out = []
    for line, row in rows:
        text = row.get(spec.input)
        if not isinstance(text, str) or not text.strip():
            raise TunewiseError(f"no text in field '{spec.input}'", path=spec.path, line=line,
                                field=spec.input)
        out.append(Example(f"U{line}", text, ""))
    has_output = [line for line, row in rows if str(row.get(task.data.output) or "").strip()]
    warning = None
    if has_output:
        where = f"{task.source or 'task'}:{task.line_of('unlabelled') or '?'}"
        warning = (f"{where}: unlabelled: {len(has_output)} rows of {spec.path.name} have an "
                   f"'{task.data.output}' field (first on line {has_output[0]}); distill "
                   "ignores it and trains on the teacher's labels (labelled rows belong in "
                   "data:)")
    return out, warning


def _as_rung(ctx: RunContext, name: str) -> RunContext:
    """The context with its calls attributed to ``name`` in the store."""
    return replace(ctx, backend=ctx.backend.for_rung(name))


def choose_teacher(ctx: RunContext) -> Teacher:
    """The best prompting cell of the teacher models on the dev split.

    Raises:
        TunewiseError: no other model, or no prompting rung it can serve.
    """
    dev = ctx.split.dev
    best: Teacher | None = None
    tried = 0
    for model in teacher_models(ctx):
        peer = ctx.peers[model]
        for name in teacher_rungs(ctx, model):
            rung = get_rung(name)
            if rung.requires(peer):
                continue
            tctx = _as_rung(peer, f"distill:teacher:{name}@{model}")
            prepared = rung.prepare(tctx)
            value = -1.0
            if dev:
                preds = rung.predict(prepared, dev, tctx)
                value = evaluate([p.text for p in preds], [e.output for e in dev],
                                 ctx.task.metric).value
                tried += len(dev)
            if best is None or value > best.dev_value:
                best = Teacher(model, name, value, tctx, prepared)
    if best is not None:
        best.dev_calls = tried
    if best is None:
        raise TunewiseError("distill needs another model to teach it (models:) with a "
                            "prompting rung it can serve", field="distill.teacher")
    return best


def teacher_labels(ctx: RunContext, teacher: Teacher, inputs: list[Example]
                   ) -> tuple[list[Example], dict[str, Any]]:
    """The inputs labelled by the teacher, and what labelling took (calls, tokens)."""
    rung = get_rung(teacher.rung)
    preds = rung.predict(teacher.prepared, inputs, teacher.ctx)
    labelled = [Example(e.id, e.input, p.text.strip(), e.extra)
                for e, p in zip(inputs, preds, strict=True)]
    n = max(len(preds), 1)
    tokens = {"prompt_mean": sum(p.prompt_tokens for p in preds) / n,
              "completion_mean": sum(p.completion_tokens for p in preds) / n,
              "shared_prefix": 0}
    return labelled, {"calls": len(preds) + teacher.dev_calls, "labelled": len(preds),
                      "tokens": tokens}


class Distill(Lora):
    """A LoRA student trained on the best teacher cell's labels of the training inputs."""

    name = "distill"
    meta = RungMeta("fine_tuning", 80, needs={"weights"}, prompt=("query",))

    def requires(self, ctx: RunContext) -> str | None:
        if not teacher_models(ctx):
            return "distill needs a second model to teach it (add one under models:)"
        return super().requires(ctx)

    def tuned(self, ctx: RunContext) -> Tuned:
        if "distill" not in ctx.shared:
            teacher = choose_teacher(ctx)
            train = ctx.split.train + unlabelled_inputs(ctx.task)[0]
            labelled, usage = teacher_labels(ctx, teacher, train)
            gold = {e.id: e.output for e in ctx.split.train}
            agree = [lab.output == gold[lab.id] for lab in labelled if lab.id in gold]
            least = ctx.task.decision.min_examples
            if len(labelled) < least:
                raise TunewiseError(f"only {len(labelled)} inputs for the teacher to label; "
                                    f"distill needs at least {least}",
                                    field="lora.min_examples")
            adapter, skipped = train_adapter(ctx, labelled, label="distill")
            ctx.shared["distill"] = Distilled(adapter, load_tuned(ctx, adapter), skipped, {
                "model": teacher.model, "rung": teacher.rung, "dev_value": teacher.dev_value,
                "agreement_with_gold": sum(agree) / len(agree) if agree else None,
                "unlabelled": len(labelled) - len(ctx.split.train), **usage})
            ctx.log(f"distill: teacher {teacher.rung}@{teacher.model} (dev {ctx.task.metric} "
                    f"{teacher.dev_value:.3f}) labelled {len(labelled)} inputs")
        return ctx.shared["distill"]
