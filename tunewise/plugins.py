"""What can be plugged in (rungs, backends, metrics): the built-ins and other packages' ones.

A package adds to tunewise by declaring entry points (simonw/llm's plugin model), one per
thing, and nothing else:

```toml
[project.entry-points."tunewise.rungs"]
self_check = "my_pkg.rungs:SelfCheck"            # a Rung class with name and meta (RungMeta)
[project.entry-points."tunewise.backends"]
my_server = "my_pkg.backend:MyServerSpec"        # a BackendSpec subclass; kind = its name
[project.entry-points."tunewise.metrics"]
keyword_hit = "my_pkg.metrics:keyword_hit"       # fn(prediction, reference) -> float in [0, 1]
```

The built-ins are listed here, in code, rather than as entry points of tunewise's own
``pyproject.toml``: entry points exist only in an installed distribution's metadata, so a
source checkout on ``PYTHONPATH`` (how the tests and CI run) would find no rungs at all, and
an editable install made before a rung was added would not know it. The lists below are the
built-ins' "one line"; a plugin's is its entry point. Both load through the same code.

Everything loads lazily, on first use: ``tunewise --help`` imports no plugin (simonw/llm issue
#1280, where an eager plugin import broke the CLI). A plugin that fails to load (import
error, wrong type, bad metadata) is skipped with one warning line on stderr naming it and its
package; a task that names it gets a one-line error with the same reason, never a traceback.
It imports nothing of tunewise but its errors, so no module depends on this one in a cycle.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from tunewise.errors import TunewiseError

RUNGS, BACKENDS, METRICS = "tunewise.rungs", "tunewise.backends", "tunewise.metrics"

BUILTIN_RUNGS: dict[str, str] = {
    "zero_shot": "tunewise.rungs.prompting:ZeroShot",
    "system_prompt": "tunewise.rungs.prompting:SystemPrompt",
    "few_shot_random": "tunewise.rungs.few_shot:FewShotRandom",
    "few_shot_knn": "tunewise.rungs.few_shot:FewShotKNN",
    "few_shot_best": "tunewise.rungs.few_shot:FewShotBest",
    "rag": "tunewise.rungs.rag:Rag",
    "lora": "tunewise.rungs.lora:Lora",
    "distill": "tunewise.rungs.distill:Distill",
    "lora_rag": "tunewise.rungs.lora:LoraRag",
    "lora_system_prompt": "tunewise.rungs.lora:LoraSystemPrompt",
    "full_ft": "tunewise.rungs.full_ft:FullFt",
    "dpo": "tunewise.rungs.dpo:Dpo",
}
"""Built-in rungs: name -> "module:Class" (their order on the ladder is in their meta)."""

BUILTIN_BACKENDS: dict[str, str] = {
    "local": "tunewise.backends.local:LocalSpec",
    "openai": "tunewise.backends.openai_compat:OpenAISpec",
    "dummy": "tunewise.backends.dummy:DummySpec",
}
"""Built-in backends: kind -> "module:SpecClass" (the spec builds its backend)."""

BUILTIN_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "exact_match", "token_f1",
                                    "field_f1")
"""Metrics implemented in :mod:`tunewise.evaluate`."""

FAMILIES: tuple[str, ...] = ("prompting", "retrieval", "fine_tuning")
"""Rung families: the report's colours, the verdict's diagnosis and the cost model use them
(fine_tuning rungs are priced at the tuned model's rates and pay training)."""

NEEDS: dict[str, str] = {
    "corpus": "a corpus (corpus:); skipped without one",
    "train_examples": "at least decision.min_examples training examples; skipped with fewer",
    "rejected": "a rejected answer per row (data.rejected); a task naming the rung without "
                "it is an error",
    "weights": "a model whose weights can be trained; a prompt-only model (kind: openai) "
               "naming the rung under models: is an error",
}
"""Data and model requirements a rung may declare (``RungMeta.needs``), checked before the
run (task validation and the data checks) rather than half-way through it."""

PROMPT_PARTS: dict[str, str] = {
    "query": "the user turn with the input",
    "system": "the system message (description, labels or format, instructions)",
    "shots": "few_shot.k worked examples",
    "best_shots": "few_shot.best_max worked examples",
    "passages": "retrieval.k passages, plus retrieval.shots worked examples with theirs",
}
"""What a rung's prompt is made of (``RungMeta.prompt``): the pre-run cost estimate sizes
each part from real items and adds them up."""


class PluginError(TunewiseError):
    """A registered rung, backend or metric could not be loaded or is malformed."""


@dataclass(frozen=True)
class RungMeta:
    """What a rung declares about itself, on its class (``meta = RungMeta(...)``).

    The task schema's rung names, the families, the default ladder, the data checks and the
    cost estimate are all derived from these, so a new rung is its own file plus one entry
    point (or, for a built-in, one line in :data:`BUILTIN_RUNGS`).

    Attributes:
        family: one of :data:`FAMILIES`.
        position: place on the ladder, cheapest first; built-ins sit at 10, 20, ... 120
            (zero_shot 10, system_prompt 20, few-shot 30-50, rag 60, lora 70 ...), so a
            plugin picks a number between the rungs it belongs between.
        needs: requirements from :data:`NEEDS`.
        prompt: the parts of its prompt, from :data:`PROMPT_PARTS` (pre-run cost estimate).
        opt_in: climbed only when a task (``rungs:``) or ``--rungs`` names it, e.g. a rung
            that trains a model of its own.
    """

    family: str
    position: float
    needs: frozenset[str] = frozenset()
    prompt: tuple[str, ...] = ("query", "system")
    opt_in: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "prompt", tuple(self.prompt))
        _check_choice("family", [self.family], FAMILIES)
        _check_choice("needs", self.needs, NEEDS)
        _check_choice("prompt", self.prompt, PROMPT_PARTS)
        if not isinstance(self.position, (int, float)) or isinstance(self.position, bool):
            raise ValueError(f"position must be a number, not {self.position!r}")


def _check_choice(what: str, values: Iterable[str], valid: Iterable[str]) -> None:
    valid = list(valid)
    for value in values:
        if value not in valid:
            raise ValueError(f"{what} '{value}' is not one of {', '.join(valid)}")


@dataclass(frozen=True)
class Ref:
    """One registered thing: its name, where it lives ("module:attr"), who provides it."""

    name: str
    target: str
    source: str = "tunewise"

    @property
    def builtin(self) -> bool:
        return self.source == "tunewise"

    def describe(self) -> str:
        return f"'{self.name}' ({self.target}" + ("" if self.builtin else
                                                   f", from {self.source}") + ")"

    def load(self, noun: str) -> Any:
        """Import the object, raising :class:`PluginError` (one line) when that fails;
        ``noun`` (rung, backend, metric) starts the message."""
        return load_reference(self.target, what=f"{noun} {self.describe()}")


def load_reference(target: str, what: str | None = None) -> Any:
    """The object ``target`` ("package.module:attr") names.

    Raises:
        PluginError: the reference is malformed, its module does not import (the error is
            the exception's type and message, not a traceback) or has no such attribute.
    """
    what = what or f"'{target}'"
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise PluginError(f"{what}: give a reference as package.module:name")
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # a plugin's import may fail in any way; say how, in a line
        raise PluginError(f"{what} did not import: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what}: module '{module}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


_WARNED: set[str] = set()


def warn(message: str) -> None:
    """One warning line on stderr, once per message (a broken plugin is named once a run)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


@cache
def refs(group: str) -> dict[str, Ref]:
    """Everything registered in ``group``: the built-ins first, then installed plugins'
    entry points. A plugin name that is already taken is skipped with a warning (built-ins
    are never replaced; of two plugins, the first found wins)."""
    builtin: dict[str, str] = {RUNGS: BUILTIN_RUNGS, BACKENDS: BUILTIN_BACKENDS,
                               METRICS: dict.fromkeys(BUILTIN_METRICS, "")}[group]
    out = {name: Ref(name, target) for name, target in builtin.items()}
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else "an entry point"
        if dist is not None and dist.name == "tunewise":
            continue  # an install of tunewise itself declaring entry points: built-ins above
        ref = Ref(ep.name, ep.value, source)
        if ep.name in out:
            warn(f"plugin {ref.describe()} is ignored: {group} already has "
                 f"{out[ep.name].describe()}")
            continue
        out[ep.name] = ref
    return out


def clear() -> None:
    """Forget what was discovered and loaded (after installing a plugin in-process; tests)."""
    for fn in (refs, _rungs, spec_class, _metric_plugin):
        fn.cache_clear()
    _WARNED.clear()


# ---- rungs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RungEntry:
    """A loaded rung: its class and what it declares."""

    cls: type
    meta: RungMeta
    ref: Ref


def _load_rung(ref: Ref) -> RungEntry:
    cls = ref.load("rung")
    meta = getattr(cls, "meta", None)
    if not inspect.isclass(cls):
        raise PluginError(f"rung {ref.describe()} is not a class")
    if getattr(cls, "name", None) != ref.name:
        raise PluginError(f"rung {ref.describe()}: the class's name is "
                          f"{getattr(cls, 'name', None)!r}, not '{ref.name}' as registered")
    if not isinstance(meta, RungMeta):
        raise PluginError(f"rung {ref.describe()} declares no meta = RungMeta(...) on its "
                          "class")
    for method in ("requires", "prepare", "predict"):
        if not callable(getattr(cls, method, None)):
            raise PluginError(f"rung {ref.describe()} has no {method}() method")
    return RungEntry(cls, meta, ref)


@cache
def _rungs() -> tuple[dict[str, RungEntry], dict[str, str]]:
    """(loaded rungs in ladder order, {name: why it did not load})."""
    loaded: list[RungEntry] = []
    broken: dict[str, str] = {}
    for name, ref in refs(RUNGS).items():
        try:
            loaded.append(_load_rung(ref))
        except (PluginError, ValueError) as exc:
            broken[name] = str(exc)
            warn(f"{exc}; the rung is not available")
    loaded.sort(key=lambda e: (e.meta.position, e.ref.name))
    return {e.ref.name: e for e in loaded}, broken


def rung_names() -> tuple[str, ...]:
    """Every available rung's name, in ladder order (cheapest first)."""
    return tuple(_rungs()[0])


def rung(name: str) -> RungEntry:
    """The registered rung ``name``.

    Raises:
        PluginError: it is registered but did not load (the reason, one line).
        TunewiseError: no rung has that name.
    """
    loaded, broken = _rungs()
    if name in loaded:
        return loaded[name]
    if name in broken:
        raise PluginError(broken[name], field="rungs")
    raise TunewiseError(f"unknown rung '{name}'", field="rungs")


def rung_meta(name: str) -> RungMeta | None:
    """What rung ``name`` declares; None for a name no available rung has (e.g. in an old
    result)."""
    entry = _rungs()[0].get(name)
    return entry.meta if entry else None


def family(name: str) -> str | None:
    """The family of rung ``name`` (None when it is not available)."""
    meta = rung_meta(name)
    return meta.family if meta else None


def rungs_with(need: str) -> tuple[str, ...]:
    """The available rungs that declare ``need`` (see :data:`NEEDS`), in ladder order."""
    return tuple(n for n, e in _rungs()[0].items() if need in e.meta.needs)


def rung_problem(name: str) -> str | None:
    """Why ``name`` cannot be used as a rung name (None when it can)."""
    loaded, broken = _rungs()
    if name in loaded:
        return None
    return broken.get(name) or f"unknown rung '{name}'"


# ---- backends -----------------------------------------------------------------------------


def backend_kinds() -> tuple[str, ...]:
    """Every registered backend kind (loading none of them)."""
    return tuple(refs(BACKENDS))


@cache
def spec_class(kind: str) -> type:
    """The spec class (a pydantic model with ``build()``) of backend ``kind``.

    Raises:
        PluginError: the kind's plugin did not load or is not a backend spec.
        KeyError: no backend has that kind.
    """
    ref = refs(BACKENDS)[kind]
    cls = ref.load("backend")
    if not (inspect.isclass(cls) and hasattr(cls, "model_validate")
            and callable(getattr(cls, "build", None))):
        raise PluginError(f"backend {ref.describe()} is not a BackendSpec subclass with "
                          "build()")
    default = getattr(cls, "model_fields", {}).get("kind")
    if default is None or default.default != kind:
        raise PluginError(f"backend {ref.describe()}: its spec's kind field must default to "
                          f"'{kind}' (kind: Literal['{kind}'] = '{kind}')")
    return cls


# ---- metrics ------------------------------------------------------------------------------

MetricFn = Callable[[str, str], float]
"""A user metric: ``fn(prediction, reference) -> float`` in [0, 1] for one test item (1 is
a perfect answer). tunewise averages it over the test split and, because each item has its
own score, gives it the same 95% interval (Wilson for 0/1 scores, else a floored bootstrap)
and paired bootstrap tests between rungs as a built-in metric."""


def metric_names() -> tuple[str, ...]:
    """Built-in metric names and those plugins register (loading none)."""
    return tuple(refs(METRICS))


@cache
def _metric_plugin(name: str) -> MetricFn:
    ref = refs(METRICS)[name]
    return _as_metric(ref.load("metric"), ref.describe())


def _as_metric(fn: Any, what: str) -> MetricFn:
    if not callable(fn):
        raise PluginError(f"metric {what} is not a function")
    try:
        inspect.signature(fn).bind("prediction", "reference")
    except TypeError:
        raise PluginError(f"metric {what} must take (prediction, reference)") from None
    except ValueError:
        pass  # a builtin without a signature: trust it
    return fn


def metric_function(metric: str) -> MetricFn | None:
    """The function of a plugin metric (a registered name or "package.module:function");
    None for a built-in metric, which :mod:`tunewise.evaluate` implements.

    Raises:
        PluginError: the metric does not load or does not take (prediction, reference).
        TunewiseError: an unknown name.
    """
    if metric in BUILTIN_METRICS:
        return None
    if ":" in metric:
        return _as_metric(load_reference(metric, what=f"metric '{metric}'"),
                          f"'{metric}'")
    if metric in refs(METRICS):
        return _metric_plugin(metric)
    raise TunewiseError(f"unknown metric '{metric}'", field="metric")
