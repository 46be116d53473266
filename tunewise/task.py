"""The task file (`task.yaml`): schema, loading, and one-line errors that point at the line.

The schema is the truth about what a task file may say. Every model forbids unknown keys so a
typo is caught and answered with the closest valid key instead of being silently ignored.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunewise.errors import TunewiseError
from tunewise.files import read_utf8
from tunewise.policy import DecisionSpec
from tunewise.text import MAX_DEPTH, is_blank, label_text, surrogate_in

Kind = Literal["classification", "extraction", "generation", "qa"]


def _either(names: list[str]) -> str:
    """Names listed the way pydantic lists a Literal's values: 'a', 'b' or 'c'."""
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class Registered:
    """A name that must be registered with :mod:`tunewise.plugins` (rung names, metrics).

    The names are looked up when a task is validated, not when this module is imported, so
    plugins load lazily and a plugin's rung module may itself import this one. An unknown
    name gets the one-line error pydantic gives a Literal, listing every valid name; the
    JSON schema lists them as an enum.
    """

    def __init__(self, names: Callable[[], Sequence[str]], problem: Callable[[str], str | None],
                 pattern: str | None = None) -> None:
        self.names = names
        self.problem = problem
        self.pattern = pattern  # JSON schema: other values this pattern allows

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        return AfterValidator(self._check).__get_pydantic_core_schema__(source, handler)

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler
                                     ) -> dict[str, Any]:
        named = {**handler(schema), "enum": list(self.names())}
        return {"anyOf": [named, {"type": "string", "pattern": self.pattern}]} if (
            self.pattern) else named

    def _check(self, value: str) -> str:
        problem = self.problem(value)
        if problem is None:
            return value
        if problem.startswith("unknown "):  # worded as pydantic words a Literal's error
            raise ValueError(f"Input should be {_either(list(self.names()))}")
        raise ValueError(problem)


def _rung_problem(name: str) -> str | None:
    from tunewise.plugins import rung_problem

    return rung_problem(name)


def _rung_names() -> tuple[str, ...]:
    from tunewise.plugins import rung_names

    return rung_names()


def _metric_problem(name: str) -> str | None:
    from tunewise.plugins import metric_function

    try:
        metric_function(name)
    except TunewiseError as exc:  # unknown, or a plugin that does not load (PluginError)
        return exc.message
    return None


def _metric_names() -> tuple[str, ...]:
    from tunewise.plugins import metric_names

    return metric_names()


RungName = Annotated[str, Registered(_rung_names, _rung_problem)]
"""A rung's name: a built-in or a plugin's (``tunewise.plugins``), checked at validation."""
Metric = Annotated[str, Registered(_metric_names, _metric_problem,
                                   pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]
"""A metric: a built-in name, a plugin's registered name, or ``package.module:function``
(``fn(prediction, reference) -> float`` in [0, 1], see ``tunewise.plugins.MetricFn``)."""


def __getattr__(name: str) -> tuple[str, ...]:
    """RUNG_ORDER, FINE_TUNING and OPT_IN_RUNGS, derived from the registered rungs when first
    read (not at import: a rung's module imports this one)."""
    from tunewise import plugins

    if name == "RUNG_ORDER":
        return plugins.rung_names()
    if name == "FINE_TUNING":
        return plugins.rungs_with("weights")
    if name == "OPT_IN_RUNGS":
        return tuple(n for n in plugins.rung_names() if plugins.rung(n).meta.opt_in)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SEED_MAX = 2**32 - 1  # numpy and torch seeds: non-negative, at most 32 bits
MAX_YAML_VALUES = 100_000
"""Most values a task file may expand to through YAML aliases; far above any real task,
far below a "billion laughs" document (10 levels of 9 aliases: 9**10 values)."""

DEFAULT_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "extraction": "exact_match",
    "generation": "token_f1",
    "qa": "token_f1",
}


def _wants_number(annotation: Any) -> bool:
    """True for int/float fields (optional or not); bool and str fields are not numbers."""
    options = [annotation, *getattr(annotation, "__args__", ())]
    return any(o in (int, float) for o in options) and not any(
        o in (bool, str) for o in options)


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, numbers are finite (``.inf``
    and ``.nan`` are refused, so result.json stays strict JSON), and a YAML yes/no is not a
    number (pydantic would read ``target: yes`` as 1.0)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _wants_number(field.annotation):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()} "
                             "(YAML reads yes/no/on/off/true/false as booleans)")
        return value


class DataSpec(Strict):
    """Where the labelled examples are and which fields hold input and expected output."""

    path: Path = Field(description="JSONL or CSV file, relative to the task file.")
    input: str = Field("input", description="Field (column) holding the model input.")
    output: str = Field("output", description="Field (column) holding the expected output.")
    id: str | None = Field(None, description="Optional field with a stable example id.")
    rejected: str | None = Field(
        None, description="Field holding a rejected (worse) answer beside the output: "
        "preference pairs for the dpo rung. Every row must have one.")
    system: str | None = Field(
        None,
        description="Optional field holding each row's own system prompt (e.g. your production "
        "prompt). It is sent exactly as written on every rung, zero_shot included; rungs "
        "with a system message add their text (description, label set or format, "
        "instructions) after it, separated by a blank line.",
    )


class CorpusSpec(Strict):
    """Documents the retrieval rungs search; one JSON object (or CSV row) per document."""

    path: Path = Field(description="JSONL or CSV file of documents, relative to the task file.")
    id: str = Field("id", description="Field holding the document id cited in answers.")
    text: str = Field("text", description="Field holding the document text.")


class RetrievalSpec(Strict):
    """How the retrieval rungs search the corpus and how much of it goes into the prompt.

    The defaults suit small models: SmolLM2-135M picks the wrong fact out of long context,
    so passages are sentence-sized (on the clinic demo, 32-token passages answered about
    twice as many questions right as 128-token ones at the same k).
    """

    method: Literal["bm25", "dense", "hybrid"] = Field(
        "hybrid", description="bm25 (exact words), dense (embeddings), or hybrid (both, fused "
        "by reciprocal rank)."
    )
    k: int = Field(3, ge=1, le=20, description="Passages put into the prompt.")
    chunk_tokens: int = Field(
        32, ge=8, le=4096,
        description="Passage length in tokens (words and punctuation): about a sentence or two.",
    )
    overlap: int = Field(8, ge=0, description="Tokens shared by consecutive passages.")
    shots: int = Field(
        2, ge=0, le=8,
        description="Worked examples from the training split (passages, question, cited "
        "answer) shown first; they teach small models the short, cited answer format.",
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> RetrievalSpec:
        if self.overlap >= self.chunk_tokens:
            raise ValueError("overlap must be smaller than chunk_tokens")
        return self


class FreshnessEdit(Strict):
    """One fact to change in a corpus document before re-asking the questions about it."""

    doc: str = Field(description="Id of the document to edit.")
    find: str = Field(min_length=1, description="Text to replace (every occurrence in the doc).")
    replace: str = Field(
        min_length=1, description="The new fact; an answer that follows the edit contains it."
    )


class FreshnessSpec(Strict):
    """The freshness test: edit facts in the corpus, re-ask, count answers that follow."""

    run: bool = Field(False, description="Run it after the ladder (result.json 'freshness').")
    rung: RungName = Field("rag", description="Rung whose answers are re-asked after the edit.")
    edits: list[FreshnessEdit] = Field(
        default_factory=list,
        description="Edits to make; default: automatic swaps of gold answer spans in their "
        "source documents for another value of the same shape found in the corpus.",
    )
    max_questions: int = Field(30, ge=1, description="Most test questions re-asked.")
    only_known: bool = Field(
        True,
        description="Count only questions the rung answered right before the edit: a fact "
        "it never knew cannot show whether it follows a change.",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX,
                      description="Seed of the automatic choice of replacement values.")


class SplitSpec(Strict):
    """How labelled examples are divided; the split is deterministic for a given seed."""

    test: int = Field(100, ge=1, description="Held-out examples scored for every rung.")
    dev: int = Field(50, ge=0, description="Examples used to choose shots and stop training.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seed of the shuffle that makes the "
                      "split.")
    train: int | None = Field(
        None, ge=1, description="Most training examples (default: all that remain after test "
        "and dev); the others are left out, which bounds fine-tuning and distillation time.")
    group_by: str | None = Field(
        None, description="Keep examples that share this field together (``output``, "
        "``input`` or any other column, e.g. ``source_id``), as scikit-learn's "
        "GroupShuffleSplit does: no test answer or record is also seen in train/dev, so "
        "scores measure new cases, not look-ups. Test and dev then hold whole groups and "
        "may come out slightly larger than asked.")


class VolumeSpec(Strict):
    """Expected production traffic, used for daily cost and break-even."""

    requests_per_day: int = Field(10_000, ge=0, description="Requests per day in production.")


_KEY_FIELDS = {"api_key", "apikey", "key", "token", "secret", "password", "authorization"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _looks_like_key(text: str) -> bool:
    """True for strings shaped like a literal API key (sk-..., long random tokens)."""
    return bool(re.search(r"\bsk-[A-Za-z0-9_\-]{6,}|\b(hf|gsk|xai|pk)_[A-Za-z0-9]{16,}", text))


class BackendSpec(Strict):
    """Where the model runs: the keys every backend has.

    Each kind's own keys live in its spec class, in the backend's own file (``LocalSpec`` in
    ``backends/local.py``, ``OpenAISpec`` in ``backends/openai_compat.py``, ``DummySpec`` in
    ``backends/dummy.py``, a plugin's in its package). The kinds form a discriminated union
    on ``kind`` whose members are the registered backends (``tunewise.plugins``): validating
    or constructing a ``BackendSpec`` gives an instance of the kind's class, so
    ``BackendSpec(kind="openai", model="m")`` is an ``OpenAISpec``, and an unknown kind or a
    key the kind does not have is a one-line error naming the valid ones.
    """

    kind: str = Field(
        "local", description="local (transformers), openai (any compatible server), dummy "
        "(tests), or a plugin's kind.",
        json_schema_extra=lambda schema: schema.update(enum=list(_backend_kinds())),
    )
    model: str = Field(
        "smollm2-135m",
        description="smollm2-135m (bundled), a local HF model folder, or a hub id (needs network).",
    )
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass (local backend).")
    max_new_tokens: int = Field(48, ge=1, description="Cap on generated tokens per answer.")
    score_end_of_turn: bool = Field(
        True,
        description="Add the end-of-turn token's log-prob to each label's score (it tells "
        "'neuro' from 'neurology'). llama.cpp never reports it, so score_method forced "
        "scores the label's own tokens only, and a run whose backends include one turns it "
        "off on every backend: the side-by-side columns then measure the same thing.",
    )

    prompt_only: ClassVar[bool] = False
    """True for a backend whose weights cannot be trained (a served model): a ``models:``
    entry of this kind may not name a rung that needs ``weights``."""

    def build(self) -> Any:
        """The backend (see ``backends.base.Backend``) this spec describes; each kind's class
        implements it, importing its heavy dependencies only here."""
        raise NotImplementedError(f"backend kind '{self.kind}' has no build()")

    def __new__(cls, *args: Any, **data: Any) -> BackendSpec:
        concrete = _concrete(cls, data)
        if concrete is not None:
            return concrete(**data)  # the kind's class; __init__ then sees a subclass instance
        return super().__new__(cls)

    def __init__(self, **data: Any) -> None:
        super().__init__(**_without_legacy(type(self), data))

    @classmethod
    def model_construct(cls, _fields_set: set[str] | None = None, **values: Any) -> Any:
        concrete = _concrete(cls, values)
        if concrete is not None:
            return concrete.model_construct(_fields_set, **values)
        return super().model_construct(_fields_set, **values)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: GetJsonSchemaHandler
                                     ) -> dict[str, Any]:
        """The union's JSON schema: one member per registered kind (each its own keys),
        chosen by ``kind``; a kind whose plugin does not load is left out."""
        if cls not in _UNIONS:
            return handler(schema)
        members = []
        for kind in _backend_kinds():
            with contextlib.suppress(TunewiseError):
                kind_cls = spec_class(kind)
                members.append(handler((kind_cls if cls is BackendSpec
                                        else _model_variant(kind_cls)).__pydantic_core_schema__))
        return {"oneOf": members, "discriminator": {"propertyName": "kind"}}

    @model_validator(mode="wrap")
    @classmethod
    def _by_kind(cls, data: Any, handler: Any) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        concrete = _concrete(cls, data)
        if concrete is not None:
            return concrete.model_validate(data)
        return handler(_without_legacy(cls, data))

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if str(key).lower() in _KEY_FIELDS:
                    raise ValueError(
                        f"'{key}' is not allowed: never put an API key in the task file; "
                        "export it and give the variable's NAME in api_key_env"
                    )
        return data


def _backend_kinds() -> tuple[str, ...]:
    from tunewise.plugins import backend_kinds

    return backend_kinds()


def spec_class(kind: str) -> type[BackendSpec]:
    """The spec class of backend ``kind`` (built-in or plugin).

    Raises:
        TunewiseError: no backend has that kind, or its plugin did not load (one line).
    """
    from tunewise.plugins import spec_class as registered

    try:
        cls = registered(kind)
    except KeyError:
        raise TunewiseError(f"unknown backend kind '{kind}'", field="backend.kind") from None
    if not issubclass(cls, BackendSpec):
        raise TunewiseError(f"backend '{kind}' ({cls.__module__}.{cls.__name__}) is not a "
                            "tunewise.task.BackendSpec subclass", field="backend.kind")
    return cls


def _without_legacy(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` less the keys of another built-in kind that hold that kind's default.

    Before backends had a class each, one flat spec took every kind's keys, and ``tunewise
    init`` wrote them all (``timeout_s: 60.0`` and ``seed: 0`` under ``kind: local``); such
    files keep working. A key of another kind with any other value is an error, naming the
    kind it belongs to: it would do nothing here.
    """
    if cls in _UNIONS or not any(k not in cls.model_fields for k in data):
        return data
    from tunewise.plugins import BUILTIN_BACKENDS

    defaults: dict[str, Any] = {}
    for kind in BUILTIN_BACKENDS:
        with contextlib.suppress(TunewiseError):
            for name, field in spec_class(kind).model_fields.items():
                if name not in BackendSpec.model_fields and not field.is_required():
                    defaults.setdefault(name, field.get_default(call_default_factory=True))
    return {k: v for k, v in data.items() if k in cls.model_fields or k not in defaults
            or v != defaults[k] or isinstance(v, bool) != isinstance(defaults[k], bool)}


_UNIONS: set[type] = set()  # the dispatching bases: BackendSpec, ModelSpec


def _concrete(cls: type, data: dict[str, Any]) -> type | None:
    """The class to build ``data`` as when ``cls`` is a dispatching base, else None.

    Raises:
        ValidationError: an unknown kind, located at ``kind`` (pydantic prefixes the field's
            location when this is raised inside validation), listing the valid kinds.
    """
    if cls not in _UNIONS:
        return None
    kind = data.get("kind", "local")
    if not isinstance(kind, str) or kind not in _backend_kinds():
        raise ValidationError.from_exception_data(cls.__name__, [{
            "type": "literal_error", "loc": ("kind",), "input": kind,
            "ctx": {"expected": _either(list(_backend_kinds()))}}])
    try:
        kind_cls = spec_class(kind)
    except TunewiseError as exc:
        raise ValidationError.from_exception_data(cls.__name__, [{
            "type": "value_error", "loc": ("kind",), "input": kind,
            "ctx": {"error": exc.message}}]) from None
    return kind_cls if cls is BackendSpec else _model_variant(kind_cls)


class BudgetSpec(Strict):
    """Hard limits checked against an estimate before any model call is made."""

    max_calls: int | None = Field(None, ge=0, description="Maximum uncached model calls.")
    max_usd: float | None = Field(None, ge=0, description="Maximum estimated spend in USD.")


class PriceFields(Strict):
    """Prices in USD; any field left out keeps the value of the named price-table entry."""

    input_per_1m: float | None = Field(None, ge=0, description="Per 1M prompt tokens.")
    output_per_1m: float | None = Field(None, ge=0, description="Per 1M generated tokens.")
    cached_input_per_1m: float | None = Field(
        None, ge=0, description="Per 1M prompt tokens served from a prefix cache (if offered)."
    )
    tuned_input_per_1m: float | None = Field(
        None, ge=0, description="Per 1M prompt tokens on a fine-tuned model (default: base)."
    )
    tuned_output_per_1m: float | None = Field(
        None, ge=0, description="Per 1M generated tokens on a fine-tuned model (default: base)."
    )
    training_per_1m: float | None = Field(
        None, ge=0, description="Hosted fine-tuning: per 1M training tokens (tokens x epochs)."
    )
    compute_per_hour: float | None = Field(
        None, ge=0, description="Self-hosting: $/hour of the GPU/CPU machine (prep, training)."
    )


class CostSpec(Strict):
    """How tunewise prices the measured tokens and time (see `tunewise cost`)."""

    price: str = Field(
        "local-cpu", description="Entry of the price table (bundled prices.yaml or prices_file)."
    )
    prices_file: Path | None = Field(
        None, description="Optional YAML price table of your own, relative to the task file."
    )
    override: PriceFields = Field(
        default_factory=PriceFields, description="Per-field overrides of the chosen entry."
    )
    data_prep_hours: float = Field(
        0.0, ge=0, description="Person-hours to prepare fine-tuning data (added to its upfront)."
    )
    hourly_rate: float = Field(50.0, ge=0, description="USD per person-hour of data prep.")
    retrain_every_days: float | None = Field(
        30.0, gt=0, description="Fine-tuned rungs are retrained this often (None: never)."
    )
    reindex_every_days: float | None = Field(
        7.0, gt=0, description="Retrieval rungs rebuild their index this often (None: never)."
    )
    count_eval_calls: bool = Field(
        True, description="Add the cost of this run's evaluation calls to each rung's upfront."
    )


class ModelSpec(BackendSpec):
    """One model of ``models:``: where it runs (its backend kind's keys) and what it costs.

    Like :class:`BackendSpec`, validating one gives the kind's variant: a class made from
    this one and the kind's spec class (``OpenAISpecModel``), so each entry takes exactly
    its backend's keys plus these.
    """

    price: str | None = Field(
        None, description="Price-table entry of this model (default: cost.price)."
    )
    override: PriceFields = Field(
        default_factory=PriceFields, description="Per-field overrides of this model's entry."
    )
    rungs: list[RungName] | None = Field(
        None, description="Only these rungs on this model (default: every rung of the task "
        "the model can serve; fine-tuning needs a local model).",
    )

    @model_validator(mode="after")
    def _can_train(self) -> ModelSpec:
        from tunewise.plugins import rungs_with

        tuned = [r for r in self.rungs or [] if r in rungs_with("weights")]
        if tuned and self.prompt_only:  # a served model: no weights to tune
            raise ValueError(f"{tuned[0]} needs the model's weights (kind: local); a model "
                             f"of kind {self.kind} can only be prompted: drop it from rungs")
        return self

    def backend_spec(self) -> BackendSpec:
        """The backend part alone (what ``make_backend`` builds)."""
        cls = spec_class(self.kind)
        return cls.model_validate(self.model_dump(include=set(cls.model_fields)))


_UNIONS.update((BackendSpec, ModelSpec))
_VARIANTS: dict[type, type] = {}


def _model_variant(kind_cls: type[BackendSpec]) -> type[ModelSpec]:
    """ModelSpec for one backend kind: the kind's keys plus price, override and rungs."""
    if kind_cls not in _VARIANTS:
        _VARIANTS[kind_cls] = type(f"{kind_cls.__name__}Model", (ModelSpec, kind_cls),
                                   {"__module__": kind_cls.__module__,
                                    "__doc__": ModelSpec.__doc__})
    return _VARIANTS[kind_cls]  # type: ignore[return-value]


class UnlabelledSpec(Strict):
    """Inputs without outputs: more for the distill rung's teacher to label."""

    path: Path = Field(description="JSONL or CSV file of inputs, relative to the task file.")
    input: str = Field("input", description="Field (column) holding the model input.")


class DistillSpec(Strict):
    """The distill rung: a large model's answers train a small model (LoRA)."""

    teacher: str | None = Field(
        None, description="Name of the model in models: whose best prompting rung (on dev) "
        "labels the training inputs; default: the model, other than the student, whose best "
        "prompting rung scores highest on the test split's neighbour, the dev split.",
    )
    rungs: list[RungName] | None = Field(
        None, description="Teacher rungs to choose from (default: the prompting rungs of the "
        "task).",
    )


class FewShotSpec(Strict):
    """How many examples the few-shot rungs put in the prompt."""

    k: int = Field(8, ge=1, le=64, description="Shots for few_shot_random and few_shot_knn.")
    best_max: int = Field(20, ge=1, le=64, description="Most shots few_shot_best may choose.")
    best_candidates: int = Field(
        6, ge=1, le=50, description="Candidate shot sets few_shot_best scores on the dev split."
    )
    max_prompt_tokens: int = Field(
        2048, ge=64, description="Prompt cap; shots are dropped (never cut) to stay under it."
    )


class LoraSpec(Strict):
    """Fine-tuning (the lora rungs): adapter shape, training loop, guard rails, checks."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (effective scale alpha/r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1, description="Module names that get adapters (attention projections).",
    )
    epochs: int = Field(2, ge=1, le=100, description="Passes over the training examples.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (linear warm-up and decay).")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (default: epochs decide)."
    )
    patience: int = Field(
        1, ge=0, description="Epochs without a lower dev loss before stopping (0: never stop)."
    )
    max_length: int = Field(
        1024, ge=16, description="Longest prompt + answer in tokens; longer examples are skipped."
    )
    seed: int = Field(0, ge=0, le=SEED_MAX,
                      description="Seed of adapter init, batch order and dropout.")
    checkpoint_every: int = Field(
        25, ge=1, description="Optimizer steps between checkpoints (Ctrl-C also saves one)."
    )
    qlora: bool = Field(
        False, description="CUDA only: load the base model in 4 bits (bitsandbytes, QLoRA)."
    )
    min_examples: int | None = Field(
        None, ge=1, description="Alias of decision.min_examples (resolved to its value)."
    )
    warn_examples: int | None = Field(
        None, ge=1, description="Alias of decision.warn_examples (resolved to its value)."
    )
    curve: list[int] = Field(
        [50, 100, 200, 400],
        description="Learning-curve subset sizes (plus all examples); [] turns the curve off.",
    )
    general: Path | None = Field(
        None, description="Forgetting check set (JSONL input/output[/choices]); default: bundled."
    )
    forgetting_threshold: float | None = Field(
        None, ge=0, le=1,
        description="Alias of decision.forgetting_threshold (resolved to its value).",
    )
    full_lr: float = Field(
        5e-5, gt=0, description="Peak learning rate of the full_ft rung (every weight trained; "
        "LoRA's rate would wreck pretrained weights). Epochs, batches, schedule: as above."
    )


class DpoSpec(Strict):
    """Preference tuning (the dpo rung): DPO (Rafailov et al. 2023) on data.rejected pairs."""

    start_from: Literal["sft", "base"] = Field(
        "sft", description="sft: on top of the lora rung's adapter (merged); base: the base model."
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature: how far from the reference.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of the DPO adapter.")
    epochs: int = Field(1, ge=1, le=20, description="Passes over the preference pairs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")


def _one_scoring_rule(specs: list[BackendSpec]) -> None:
    """Backends compared side by side score labels the same way: when one cannot add the
    end-of-turn log-prob (score_method forced), none does, unless a task asks otherwise."""
    if all(s.score_end_of_turn for s in specs):
        return
    for i, spec in enumerate(specs):
        if spec.score_end_of_turn and "score_end_of_turn" in spec.model_fields_set:
            raise ValueError(
                f"backends[{i}] sets score_end_of_turn: true but another backend scores "
                "labels without the end-of-turn token; the side-by-side scores would not be "
                "comparable: drop the setting")
        object.__setattr__(spec, "score_end_of_turn", False)


class PromptsSpec(Strict):
    """The task's own message templates (Jinja2), each replacing the built-in of that name in
    ``tunewise/prompts.yaml``. They see the same variables: ``task``, ``labels``, ``input``,
    ``shots`` and ``passages``; ``tunewise show-prompt`` prints the result."""

    system: str | None = Field(
        None, description="System message of every rung above zero_shot (task, labels, "
        "instructions).")
    user: str | None = Field(
        None, description="User turn of system-prompt and few-shot rungs, and of each shot.")
    zero_shot_user: str | None = Field(None, description="The zero_shot rung's only message.")
    rag_user: str | None = Field(
        None, description="User turn of retrieval rungs: instruction, passages, question.")


class TaskSpec(Strict):
    """A task: labelled data, what good looks like, and the traffic it must serve."""

    name: str = Field(description="Short name shown in tables and reports.")
    kind: Kind = Field(description="classification | extraction | generation | qa.")
    description: str = Field(
        "", description="One or two sentences saying what the task is; used by system prompts."
    )
    instructions: str = Field(
        "", description="Extra rules for the system prompt (format, tone, edge cases)."
    )
    labels: list[str] | None = Field(
        None, description="classification: the label set; default: labels seen in the data."
    )
    data: DataSpec = Field(description="The labelled examples.")
    corpus: CorpusSpec | None = Field(None, description="Optional documents; enables RAG rungs.")
    retrieval: RetrievalSpec = Field(
        default_factory=RetrievalSpec, description="Retrieval settings (rag rungs)."
    )
    freshness: FreshnessSpec = Field(
        default_factory=FreshnessSpec, description="Freshness test settings."
    )
    metric: Metric | None = Field(None, description="Quality metric; default depends on kind.")
    target: float = Field(ge=0, le=1, description="Quality the task must reach, in [0, 1].")
    split: SplitSpec = Field(default_factory=SplitSpec, description="Train/dev/test split.")
    volume: VolumeSpec = Field(default_factory=VolumeSpec, description="Production traffic.")
    latency_ms: float | None = Field(None, gt=0, description="Optional p95 latency target.")
    backend: SerializeAsAny[BackendSpec] = Field(
        default_factory=BackendSpec, description="Where the model runs.")
    backends: list[SerializeAsAny[BackendSpec]] | None = Field(
        None, min_length=1,
        description="Instead of backend: several models compared side by side. The first "
        "runs the whole ladder; the prompting rungs also run on each of the others.",
    )
    models: dict[str, SerializeAsAny[ModelSpec]] | None = Field(
        None, min_length=1,
        description="Instead of backend: named models, each a backend plus its own price "
        "entry. Every rung runs on every model that can serve it; the verdict picks the "
        "cheapest (rung, model) cell that meets the target.",
    )
    unlabelled: UnlabelledSpec | None = Field(
        None, description="Optional inputs without outputs; the distill rung's teacher labels "
        "them too.",
    )
    distill: DistillSpec = Field(
        default_factory=DistillSpec, description="Distillation (the distill rung)."
    )
    rungs: list[RungName] | None = Field(
        None, description="Rungs to climb, cheapest first; default: every rung that applies."
    )
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="Spend limits.")
    few_shot: FewShotSpec = Field(default_factory=FewShotSpec, description="Few-shot settings.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Fine-tuning settings.")
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="Preference tuning settings.")
    cost: CostSpec = Field(default_factory=CostSpec, description="Prices and cost assumptions.")
    decision: DecisionSpec = Field(
        default_factory=DecisionSpec,
        description="Thresholds of the verdict and the advisor (90% rule, minimum gain, "
                    "example counts, forgetting, cost horizon); echoed in result.json.",
    )
    prompts: PromptsSpec = Field(
        default_factory=PromptsSpec,
        description="Message templates replacing the built-ins (Jinja2, same variables).")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        """Numbers become labels by the data's rule (``1`` and ``1.0`` are "1"); every
        label is stripped and NFC-normalised, as the data's outputs are."""
        if not isinstance(value, list):
            return value
        for i, v in enumerate(value):
            if isinstance(v, bool):
                raise ValueError(f"label {i + 1} is the YAML boolean {str(v).lower()} (yes/no/"
                                 "on/off/true/false unquoted): quote it")
        return [label_text(v) if isinstance(v, (str, int, float)) else v for v in value]

    @field_validator("labels")
    @classmethod
    def _two_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        seen: dict[str, int] = {}
        for i, label in enumerate(value):
            if is_blank(label):
                raise ValueError(f"label {i + 1} is empty (blank labels cannot be predicted "
                                 "or told apart)")
            if label in seen:
                raise ValueError(f"label '{label}' is given twice (items {seen[label] + 1} "
                                 f"and {i + 1})")
            seen[label] = i
        if len(value) < 2:
            raise ValueError("needs at least two distinct labels")
        return value

    @field_validator("rungs")
    @classmethod
    def _pairs_for_rungs_that_need_them(cls, value: list[str] | None, info: ValidationInfo
                                        ) -> list[str] | None:
        from tunewise.plugins import rungs_with

        data = info.data.get("data")
        wanting = [r for r in value or [] if r in rungs_with("rejected")]
        if wanting and data is not None and data.rejected is None:
            raise ValueError(f"the {wanting[0]} rung needs preference data: set data.rejected "
                             "to the field holding the rejected answer of each row")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> TaskSpec:
        if self.metric is None:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.kind])
        for key in ("min_examples", "warn_examples", "forgetting_threshold"):
            legacy = getattr(self.lora, key)  # the old home of these thresholds
            if legacy is not None and key not in self.decision.model_fields_set:
                setattr(self.decision, key, legacy)
            # one value, readable from both places (decision: is where it is documented)
            object.__setattr__(self.lora, key, getattr(self.decision, key))
        if self.backends:
            if "backend" in self.model_fields_set:
                raise ValueError("give either backend or backends, not both")
            if self.models:
                raise ValueError("give either models or backends, not both (models: "
                                 "{name: {kind: ..., model: ..., price: ...}} replaces backends)")
            object.__setattr__(self, "backend", self.backends[0])
            _one_scoring_rule(self.backends)
        if self.models:
            if "backend" in self.model_fields_set:
                raise ValueError("give either backend or models, not both (put the backend "
                                 "under models: as one named model)")
            specs = list(self.models.values())
            _one_scoring_rule(specs)
            object.__setattr__(self, "backend", specs[0].backend_spec())
        return self

    def model_entries(self) -> dict[str, ModelSpec]:
        """Every model of the task by name, the first one leading the ladder.

        ``models:`` as written; ``backends:`` named ``kind:model``; a lone ``backend:`` is one
        model named the same way. Each entry's price defaults to ``cost.price``.
        """
        if self.models:
            return dict(self.models)
        specs = self.backends or [self.backend]
        labels = [f"{s.kind}:{s.model}" for s in specs]
        labels = [x if labels.count(x) == 1 else f"{x}#{i + 1}" for i, x in enumerate(labels)]
        return {label: ModelSpec.model_validate(s.model_dump())
                for label, s in zip(labels, specs, strict=True)}

    # Set by load_task / parse_task: the file this spec came from and its YAML node tree
    # (not part of the YAML), so errors found later can still name the line.
    _source: Path | None = None
    _yaml: Any = None

    def line_of(self, field: str) -> int | None:
        """Line (1-based) of the dotted ``field`` in the task file, None if not written."""
        return _node_line(self._yaml, tuple(field.split(".")), exact=True)

    @property
    def source(self) -> Path | None:
        """The task file this spec was loaded from, if any."""
        return self._source

    def fingerprint(self) -> str:
        """A short hash of the resolved spec; identical tasks share it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...], exact: bool = False
               ) -> int | None:
    """Line (1-based) of the YAML node at ``loc``, or of its deepest existing parent (None
    instead with ``exact``)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    nxt, line = value, key.start_mark.line + 1
                    break
        elif (isinstance(node, yaml.SequenceNode) and isinstance(part, int)
              and part < len(node.value)):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            return None if exact else line
        node = nxt
    return line


def _duplicate_key(node: yaml.Node | None, loc: tuple[str, ...] = (),
                   visited: set[int] | None = None) -> tuple[str, int] | None:
    """The first key given twice in one mapping, as (dotted path, line), or None.

    PyYAML silently keeps the last of two equal keys, so a pasted block that repeats
    ``target:`` would quietly change the task; this finds it instead. A node reached again
    through an alias was already checked: each node is walked once, so an alias bomb costs
    its size on the page, not its expansion.
    """
    visited = set() if visited is None else visited
    if node is None or id(node) in visited:
        return None
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                return ".".join((*loc, name)), key.start_mark.line + 1
            seen.add(name)
            found = _duplicate_key(value, (*loc, name), visited)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, (*loc, str(i)), visited)
            if found:
                return found
    return None


def _children(node: yaml.Node) -> list[tuple[str, yaml.Node, int]]:
    """(name, child node, line) of a mapping's values or a sequence's items."""
    if isinstance(node, yaml.MappingNode):
        return [(str(k.value), v, k.start_mark.line + 1) for k, v in node.value]
    if isinstance(node, yaml.SequenceNode):
        return [(str(i), v, v.start_mark.line + 1) for i, v in enumerate(node.value)]
    return []


def _expanded_sizes(root: yaml.Node) -> dict[int, int]:
    """Values each node stands for once aliases are expanded, by ``id(node)``.

    Each node is sized once (children first, without recursion), so a document whose
    aliases expand to billions of values is measured in the time it takes to read it.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in sizes:
            continue
        kids = [child for _, child, _ in _children(node)]
        if ready:
            sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes


def _compose(text: str, path: Path) -> yaml.Node | None:
    """The YAML node graph of ``text``, refusing hostile YAML before anything builds on it:
    nesting deeper than MAX_DEPTH (found from the parser's events, which never recurse),
    aliases that expand beyond MAX_YAML_VALUES, or a string holding a lone surrogate (a
    ``"\\ud800"`` escape).

    Raises:
        TunewiseError: naming the line; yaml.YAMLError for YAML that does not parse.
    """
    depth, top_key, key_next = 0, None, False  # key_next: the root mapping's next is a key
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if depth == 1 and key_next and isinstance(event, yaml.ScalarEvent):
            top_key = event.value
        if depth == 1 and isinstance(event, yaml.NodeEvent):
            key_next = not key_next
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            key_next = key_next if depth > 1 else isinstance(event, yaml.MappingStartEvent)
            if depth > MAX_DEPTH:
                raise TunewiseError(f"nested more than {MAX_DEPTH} levels deep", path=path,
                                    line=event.start_mark.line + 1, field=top_key)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:
        return None
    sizes = _expanded_sizes(root)
    if sizes[id(root)] > MAX_YAML_VALUES:
        node, loc, line = root, [], root.start_mark.line + 1
        while True:  # descend to the first value that is too big on its own
            big = next(((name, child, at) for name, child, at in _children(node)
                        if sizes[id(child)] > MAX_YAML_VALUES), None)
            if big is None:
                break
            loc.append(big[0])
            node, line = big[1], big[2]
        raise TunewiseError(
            f"YAML aliases expand to {sizes[id(node)]:,} values (more than "
            f"{MAX_YAML_VALUES:,}); a task file never needs that many",
            path=path, line=line, field=".".join(loc) or None)
    for node in _all_nodes(root):
        if isinstance(node, yaml.ScalarNode) and surrogate_in(str(node.value)):
            raise TunewiseError("a lone surrogate (an unpaired \\ud800-\\udfff escape) is not "
                                "text", path=path, line=node.start_mark.line + 1)
    return root


def _all_nodes(root: yaml.Node) -> list[yaml.Node]:
    """Every node of the graph once (keys included), in document order."""
    seen: set[int] = set()
    out: list[yaml.Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in reversed(node.value) for n in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
    return out


def _model_at(loc: tuple[Any, ...], raw: Any = None) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for did-you-mean).

    ``raw`` is the task's data: where the schema has a backend (a union by ``kind``), the
    class is the one of the kind written there, so ``base_ur`` under ``kind: openai`` is
    matched against the openai backend's keys.
    """
    model: type[BaseModel] = TaskSpec
    node = raw
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return model if isinstance(part, str) else None
        node = node.get(part) if isinstance(node, dict) else None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        if not any(isinstance(c, type) and issubclass(c, BaseModel) for c in candidates):
            # a dict or list of models (models:, backends:): step over the key or index
            inner = [a for c in candidates for a in getattr(c, "__args__", ())]
            candidates = [getattr(a, "__origin__", a) for a in inner] + [
                getattr(a, "__args__", (None,))[0] for a in inner]
            if parts:
                key = parts.pop(0)
                node = (node.get(key) if isinstance(node, dict) else
                        node[key] if isinstance(node, list) and isinstance(key, int)
                        and key < len(node) else None)
        sub = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if sub is None:
            return None
        if sub in _UNIONS and isinstance(node, dict):
            with contextlib.suppress(ValidationError, TunewiseError):
                sub = _concrete(sub, node) or sub
        model = sub
    return model


# Keys people write for a concept the schema names differently, where spelling alone
# cannot find it (difflib does not know that a system prompt is description + instructions).
KEY_HINTS: dict[str, str] = {
    "system_prompt": "'description' and 'instructions' (the task's system prompt), or "
                     "'data.system' (a column holding each row's own system prompt)",
    "system": "'description' and 'instructions' (the task's system prompt), or "
              "'data.system' (a column holding each row's own system prompt)",
    "prompt": "'description' and 'instructions' (the system prompt); see `tunewise "
              "show-prompt` for what the model receives",
    "instruction": "'instructions'",
    "max_tokens": "'backend.max_new_tokens'",
    "max_new_tokens": "'backend.max_new_tokens'",
}


def _kinds_with(key: str) -> str:
    """A hint for a backend key of another kind: " (a key of kind dummy)", or ""."""
    kinds = []
    for kind in _backend_kinds():
        with contextlib.suppress(TunewiseError):
            if key in spec_class(kind).model_fields:
                kinds.append(kind)
    return f" (a key of kind {' and '.join(kinds)})" if kinds else ""


def _explain(err: dict[str, Any], raw: Any = None) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1], raw) or TaskSpec
        close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        if str(loc[-1]).lower() in KEY_HINTS and owner is TaskSpec:
            hint = f" (did you mean {KEY_HINTS[str(loc[-1]).lower()]}?)"
        if issubclass(owner, BackendSpec) and not close:
            hint = _kinds_with(str(loc[-1]))
        return f"unknown key '{loc[-1]}'{hint}"
    return err["msg"].replace("Value error, ", "")


def read_yaml(text: str, path: Path | str) -> tuple[Any, yaml.Node | None]:
    """YAML text as (data, node tree) for a user's file, with hostile YAML refused (see
    :func:`_compose`) and syntax errors as one line naming the line.

    Raises:
        TunewiseError: the YAML does not parse, nests too deep, expands too far through
            aliases, or holds a lone surrogate.
    """
    path = Path(path)
    try:
        root = _compose(text, path)
        return yaml.safe_load(text), root
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and mark and start.line != mark.line:
            problem += f" ({context} that starts on line {start.line + 1})"
        raise TunewiseError(
            f"not valid YAML: {problem}", path=path, line=mark.line + 1 if mark else None
        ) from None


def parse_task(text: str, path: Path | str = "<task>") -> TaskSpec:
    """Validate YAML text as a task, raising a one-line :class:`TunewiseError` on any problem."""
    path = Path(path)
    raw, root = read_yaml(text, path)
    if not isinstance(raw, dict):
        raise TunewiseError("a task file must be a mapping of keys to values", path=path)
    duplicate = _duplicate_key(root)
    if duplicate:
        raise TunewiseError("key given twice (the second would silently win)", path=path,
                            line=duplicate[1], field=duplicate[0])
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or None
        raise TunewiseError(
            _explain(err, raw), path=path, line=_node_line(root, loc), field=field
        ) from None
    spec._yaml = root
    _check_model_names(spec, path)
    from tunewise.prompts import check_task_templates  # prompts reads TaskSpec: import late

    check_task_templates(spec, path)
    return spec


def _check_model_names(spec: TaskSpec, path: Path) -> None:
    """Model names used elsewhere in the task must be defined under ``models:``."""
    teacher = spec.distill.teacher
    names = list(spec.model_entries())
    if teacher is not None and teacher not in names:
        close = difflib.get_close_matches(teacher, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TunewiseError(f"model '{teacher}' is not defined{hint}; models: "
                            f"{', '.join(names)}", path=path,
                            line=spec.line_of("distill.teacher"), field="distill.teacher")


def check_prices(spec: TaskSpec) -> None:
    """Every model's price entry exists in the price table (error names the line)."""
    from tunewise.cost import price_table

    table = price_table(spec.cost.prices_file)
    for name, model in spec.model_entries().items():
        entry = model.price or spec.cost.price
        if entry in table:
            continue
        field = f"models.{name}.price" if model.price else "cost.price"
        close = difflib.get_close_matches(entry, list(table), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise TunewiseError(f"unknown price entry '{entry}'{hint}; valid names: "
                            f"{', '.join(sorted(table))}", path=spec.source,
                            line=spec.line_of(field), field=field)


def load_task(path: str | Path) -> TaskSpec:
    """Read, validate and resolve a task file; data and corpus paths become absolute."""
    path = Path(path)
    text = read_utf8(path, missing="task file not found",
                     folder="is a folder; give the path of the task file in it")
    spec = parse_task(text, path)
    base = path.resolve().parent
    spec.data.path = (base / spec.data.path).resolve()
    if spec.corpus is not None:
        spec.corpus.path = (base / spec.corpus.path).resolve()
    if spec.cost.prices_file is not None:
        spec.cost.prices_file = (base / spec.cost.prices_file).resolve()
    if spec.lora.general is not None:
        spec.lora.general = (base / spec.lora.general).resolve()
    if spec.unlabelled is not None:
        spec.unlabelled.path = (base / spec.unlabelled.path).resolve()
    spec._source = path.resolve()
    check_prices(spec)
    return spec
