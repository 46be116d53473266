"""Typed, versioned run results: the one shape ``result.json``, the CLI, report and web share.

The ladder builds its result as plain data and validates it here before writing it;
every reader loads it through :func:`load_result`, so no reader guesses a shape. Field
names are those ``result.json`` has always had (other tools read them).

Compatibility rules:

- unknown fields are kept, not rejected (``extra="allow"``): a result written by a newer
  tunewise, or a field another part of the ladder adds, still loads; the typed fields are
  what readers may rely on;
- ``schema_version`` says which shape a file has. Version 0 (files written before the
  field existed) is migrated on load; a file that still does not fit gets one line that
  says to re-run the task.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunewise.errors import TunewiseError

SCHEMA_VERSION = 1


class Model(BaseModel):
    """Base of every result model: unknown fields are kept (forward compatible)."""

    model_config = ConfigDict(extra="allow")


# ---- scores and tests ------------------------------------------------------------------


class Interval(Model):
    """A value with its 95% confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int | None = None


class PairedTest(Model):
    """A paired test of a rung against zero-shot (``vs_zero_shot``): b - a on the same items."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float


class Comparison(Model):
    """One paired comparison the verdict states: ``b`` against ``a`` on the same items.

    ``diff`` is metric(b) - metric(a), recomputed on each bootstrap resample of the items
    (for macro-F1 the whole macro-F1 is recomputed). ``p`` is two-sided; ``p_adjusted`` is
    Holm-adjusted over the verdict's family of comparisons and decides ``significant``.
    Cells (``rung@model``) use the same model for parity statements.
    """

    id: str = ""
    a: str
    b: str
    metric: str
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_adjusted: float | None = None
    p_text: str = ""
    significant: bool = False
    n: int | None = None
    b_resamples: int | None = None
    purpose: str = ""


# ---- one rung (cell) ---------------------------------------------------------------------


class Tokens(Model):
    """Measured tokens per request."""

    prompt_mean: float = 0.0
    completion_mean: float = 0.0
    shared_prefix: float = 0.0


class LatencyMs(Model):
    """``latency_ms``: p50/p95 per request in ms (single-request timings when measured)."""

    p50: float = 0.0
    p95: float = 0.0


class Latency(Model):
    """Single requests timed at batch 1 after a warm-up, and how they were obtained.

    ``replayed`` marks timings read back from a cached run, never measured again.
    """

    single_p50_ms: float | None = None
    single_p95_ms: float | None = None
    n: int = 0
    batch_size: int = 1
    replayed: bool = False
    note: str = ""


class CurvePoint(Model):
    """One learning-curve point: an adapter trained on ``n`` examples, scored on test."""

    n: int
    value: float
    ci_low: float
    ci_high: float
    train_seconds: float | None = None
    steps: int | None = None
    trained_now: bool | None = None


class LearningCurve(Model):
    """Scores of adapters trained on growing subsets (``info.learning_curve``)."""

    metric: str = ""
    points: list[CurvePoint] = Field(default_factory=list)
    examples_to_target: int | None = None
    monotone: bool | None = None
    slope_per_100: float | None = None


class RungInfo(Model):
    """What a rung reports about its preparation (free-form; the typed keys are read)."""

    learning_curve: LearningCurve | None = None
    epochs: int | None = None
    steps: int | None = None
    train_examples: int | None = None
    train_tokens: float | None = None
    stopped_early: bool | None = None
    stopped_by: str | None = None
    dev_losses: list[float | None] | None = None
    loss_falling: bool | None = None
    max_steps: int | None = None
    retrieval_recall: dict[str, Any] | None = None


class RungResult(Model):
    """One rung on one model (a cell): status, score with CI, tokens, latency, upfront."""

    name: str
    family: str = ""
    status: str = "done"
    reason: str = ""
    model: str | None = None
    metric: str | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    tokens: Tokens | None = None
    latency_ms: LatencyMs | None = None
    latency: Latency | None = None
    throughput_items_s: float | None = None
    upfront_s: float | None = None
    info: RungInfo = Field(default_factory=RungInfo)
    calls_made: int = 0
    cache_hits: int = 0
    ece: float | None = None
    secondary: dict[str, Any] | None = None
    vs_zero_shot: PairedTest | None = None
    # added by the metrics work (issue 14): degenerate answers, truncation, per-field scores
    degenerate: bool | None = None
    truncated: int | None = None
    per_field: dict[str, dict[str, float]] | None = None  # key -> {value, n}
    dev_tie: bool | None = None

    @property
    def done(self) -> bool:
        """Whether the rung ran and has a score."""
        return self.status == "done" and self.value is not None

    def score(self) -> Interval:
        """The rung's score as an interval (only for done rungs)."""
        return Interval(value=self.value or 0.0, ci_low=self.ci_low or 0.0,
                        ci_high=self.ci_high or 0.0, n=self.n)


class Baseline(Model):
    """A trivial answer's score (majority class, most common answer) with its CI."""

    label: str | None = None
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    per_item: list[float] | None = None


class CellCost(Model):
    """A cell's cost at the task's volume, with the model's own prices."""

    per_request_usd: float | None = None
    daily_usd: float | None = None
    upfront_usd: float | None = None


class Cell(Model):
    """One (rung, model) cell: a score with its CI and its cost (``cells``)."""

    rung: str
    model: str | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    cost: CellCost | None = None

    @property
    def label(self) -> str:
        """``rung@model``, how comparisons name a cell."""
        return f"{self.rung}@{self.model}" if self.model else self.rung


class ModelRuns(Model):
    """The rungs of a further model (``models``), and its forgetting check when it trained
    (the first model's is the run's own ``forgetting``)."""

    model: str
    backend: str = ""
    rungs: list[RungResult] = Field(default_factory=list)
    forgetting: Forgetting | None = None


# ---- cost --------------------------------------------------------------------------------


class RungCost(Model):
    """Cost of one rung at the task's volume (``cost.rungs[name]``)."""

    name: str
    family: str = ""
    value: float | None = None
    per_request: float
    per_1k: float = 0.0
    request: dict[str, float] = Field(default_factory=dict)
    upfront: float
    upfront_parts: dict[str, float] = Field(default_factory=dict)
    maintenance_per_day: float = 0.0
    daily: float
    latency_ms: dict[str, Any] = Field(default_factory=dict)
    basis: list[str] = Field(default_factory=list)
    meets_target: bool = False
    total_over_horizon: float | None = None

    def total(self, days: float) -> float:
        """Upfront plus daily cost over ``days``."""
        return self.upfront + self.daily * days


class BreakEvenPair(Model):
    """When the rung with the larger upfront cost has paid it back."""

    a: str
    b: str
    extra_upfront: float
    daily_saving: float
    days: float | None = None
    pays_back: bool | None = None  # False: no daily saving, "never pays back"
    text: str = ""


class BreakEven(Model):
    """Break-even between the rungs that meet the target (none when fewer than two do)."""

    basis: str = ""
    candidates: list[str] = Field(default_factory=list)
    pairs: list[BreakEvenPair] = Field(default_factory=list)
    closest: dict[str, Any] | None = None  # no rung meets the target: the closest one's cost


class CostSummary(Model):
    """The ``cost`` section: prices used, per-rung costs, break-even, chart series."""

    price: dict[str, Any] = Field(default_factory=dict)
    requests_per_day: int = 0
    horizon_days: float | None = None
    assumptions: dict[str, Any] = Field(default_factory=dict)
    rungs: dict[str, RungCost] = Field(default_factory=dict)
    met_target: list[str] = Field(default_factory=list)
    break_even: BreakEven = Field(default_factory=BreakEven)
    chart: dict[str, Any] = Field(default_factory=dict)


# ---- checks after the ladder ------------------------------------------------------------


class Forgetting(Model):
    """Base vs tuned model on a general set (``forgetting``); ``error`` when it failed."""

    rung: str = "lora"
    set: str | None = None
    n: int | None = None
    metric: str | None = None
    base: Interval | None = None
    tuned: Interval | None = None
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    flagged: bool = False
    error: str | None = None


class Freshness(Model):
    """A corpus fact edited and re-asked (``freshness``): does the rung follow the edit?"""

    status: str = "done"
    rung: str = "rag"
    reason: str = ""
    mode: str | None = None
    candidates: int | None = None
    knew_before: int | None = None
    edited_questions: int | None = None
    edits: int | None = None
    edited_docs: int | None = None
    followed: int | None = None
    followed_share: float | None = None
    kept_old: int | None = None
    kept_old_share: float | None = None
    note: str | None = None
    examples: list[dict[str, Any]] = Field(default_factory=list)


class RungUsage(Model):
    """Model calls of one rung (or check) of a run."""

    calls_made: int = 0
    cache_hits: int = 0


class Usage(Model):
    """Model calls of a run: totals, the pre-run estimate, and per rung or check.

    ``calls`` counts every call the run asked for (made or served from the cache), the
    quantity the pre-run estimate (``estimated_calls``) predicts; ``tokens`` likewise.
    """

    calls: int = 0
    calls_made: int = 0
    cache_hits: int = 0
    estimated_calls: int | None = None
    tokens: int | None = None
    estimated_tokens: int | None = None
    rungs: dict[str, RungUsage] = Field(default_factory=dict)


# ---- verdict -----------------------------------------------------------------------------


class Diagnosis(Model):
    """What limits the best rung: knowledge, behaviour (format), reader capacity, ..."""

    gap: str = "none"
    baseline: str | None = None
    rag_gain: float | None = None
    lora_gain: float | None = None
    recall: float | None = None
    recall_k: int | None = None
    knowledge: list[str] = Field(default_factory=list)
    behaviour: list[str] = Field(default_factory=list)
    reader: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)
    format_errors: dict[str, Any] = Field(default_factory=dict)
    freshness: dict[str, float] = Field(default_factory=dict)
    under_trained: bool = False


class Choice(Model):
    """The chosen cell (``verdict.choice``)."""

    rung: str
    model: str | None = None


class Verdict(Model):
    """Which rung to use, why (each comparison sentence cites ``comparisons[i]``), what next."""

    rung: str | None = None
    combination: list[str] = Field(default_factory=list)
    meets_target: bool = False
    rule: str = ""
    met_target: list[str] = Field(default_factory=list)
    summary: str = ""
    reasons: list[str] = Field(default_factory=list)
    rejected: list[str] = Field(default_factory=list)
    next: list[str] = Field(default_factory=list)
    diagnosis: Diagnosis | None = None
    break_even: list[str] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    multiple_comparisons: str = ""
    tied: list[str] = Field(default_factory=list)
    choice: Choice | None = None
    parity: list[Comparison] = Field(default_factory=list)


# ---- the run -----------------------------------------------------------------------------


class TaskEcho(Model):
    """The task facts a reader needs (``task``)."""

    name: str
    kind: str
    metric: str
    target: float
    source: str = ""
    fingerprint: str = ""
    requests_per_day: int | None = None
    latency_ms: float | None = None


class RunResult(Model):
    """A run's result (``result.json``)."""

    schema_version: int = SCHEMA_VERSION
    run_id: str = ""
    task: TaskEcho
    backend: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    split: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | None = None
    decision: dict[str, Any] = Field(default_factory=dict)
    rungs: list[RungResult] = Field(default_factory=list)
    models: list[ModelRuns] | None = None
    baselines: dict[str, Baseline] | None = None
    cells: list[Cell] | None = None
    forgetting: Forgetting | None = None
    freshness: Freshness | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: CostSummary | None = None
    verdict: Verdict | None = None
    result_path: str | None = None

    def done(self) -> list[RungResult]:
        """Rungs that ran and have a score, in ladder order."""
        return [r for r in self.rungs if r.done]

    def rung(self, name: str) -> RungResult | None:
        """The rung called ``name`` (None if it is not in the run)."""
        return next((r for r in self.rungs if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data; fields a producer never set stay absent, as they always were."""
        return _finite(self.model_dump(mode="json", exclude_unset=True))


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: such numbers become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


# ---- loading and migration ---------------------------------------------------------------


def _migrate_0(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 -> 1: usage per rung moves under ``usage.rungs`` with totals beside it."""
    usage = data.get("usage")
    if isinstance(usage, dict) and "rungs" not in usage and all(
            isinstance(v, dict) for v in usage.values()):
        made = sum(int(v.get("calls_made", 0) or 0) for v in usage.values())
        hits = sum(int(v.get("cache_hits", 0) or 0) for v in usage.values())
        data["usage"] = {"calls": made + hits, "calls_made": made, "cache_hits": hits,
                         "rungs": usage}
    data["schema_version"] = 1
    return data


MIGRATIONS = {0: _migrate_0}


def load_result(data: dict[str, Any] | RunResult, where: str = "result") -> RunResult:
    """A stored result as a :class:`RunResult`, migrated from older versions.

    Args:
        data: the parsed ``result.json`` (or a result already typed).
        where: what to name in the error (a run id or a file).

    Raises:
        TunewiseError: a result that cannot be read (one line, saying to re-run).
    """
    if isinstance(data, RunResult):
        return data
    if not isinstance(data, dict):
        raise TunewiseError(f"{where} is not a tunewise result; re-run the task "
                            "(tunewise run TASK.yaml)")
    data = dict(data)
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TunewiseError(f"{where} has schema_version {version!r}, newer than this tunewise "
                            f"reads ({SCHEMA_VERSION}); upgrade tunewise or re-run the task")
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version = data["schema_version"]
    try:
        return RunResult.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise TunewiseError(f"{where} was written in a shape this tunewise cannot read "
                            f"({loc}: {err['msg']}); re-run the task to rebuild it "
                            "(tunewise run TASK.yaml)") from None


def check_result(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a freshly built result and return it as JSON data (what gets written).

    Raises:
        pydantic.ValidationError: the ladder built a shape the schema does not know (a
            bug: raised loudly so it is fixed, not written).
    """
    data = {**data, "schema_version": SCHEMA_VERSION}
    return RunResult.model_validate(data).to_json()


__all__ = [
    "SCHEMA_VERSION", "Baseline", "Cell", "Comparison", "CostSummary", "Diagnosis", "Forgetting",
    "Freshness", "LearningCurve", "RunResult", "RungCost", "RungResult", "Usage", "Verdict",
    "check_result", "load_result",
]
