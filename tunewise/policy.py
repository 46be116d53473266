"""Decision policy: the thresholds the verdict and the advisor apply, in one place.

Each threshold has exactly one default here; ``task.yaml``'s ``decision:`` section may
override any of them, and the values a run used are echoed in ``result.json``
(``decision``) and in the report, so a reader can see which lines the verdict drew.
The advisor (before any run) and the verdict (after one) read the same values.

Where the defaults come from (the lesson pages the product was conceived from):

- ``prompting_enough`` 0.9: "take your best examples as few-shot shots; if that reaches
  90% of the quality target, prompt engineering may be sufficient";
- ``min_examples`` 100: under ~100 good examples fine-tuning overfits or does nothing;
- ``warn_examples`` 200: the flowcharts' "200+ examples" line for fine-tuning.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PROMPTING_ENOUGH = 0.9
MIN_GAIN = 0.05
FORMAT_ERROR_SHARE = 0.2
MIN_EXAMPLES = 100
WARN_EXAMPLES = 200
FORGETTING_THRESHOLD = 0.05
HORIZON_DAYS = 365.0
LATENCY_SAMPLE = 20
HIGH_RECALL = 0.8
ALPHA = 0.05


class DecisionSpec(BaseModel):
    """Thresholds and policy of the verdict (``decision:`` in task.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompting_enough: float = Field(
        PROMPTING_ENOUGH, gt=0, le=1,
        description="Best prompting rung at this share of the target or more: improve the "
                    "prompt instead of fine-tuning (the lesson's 90% rule).")
    min_gain: float = Field(
        MIN_GAIN, ge=0, le=1,
        description="Smallest gain in metric points that counts as a practical gap (a gain "
                    "must also be significant).")
    format_error_share: float = Field(
        FORMAT_ERROR_SHARE, ge=0, le=1,
        description="Share of wrong answers outside the expected format that points to a "
                    "behaviour (format) gap.")
    min_examples: int = Field(
        MIN_EXAMPLES, ge=1,
        description="Below this many training examples the lora rungs refuse to run.")
    warn_examples: int = Field(
        WARN_EXAMPLES, ge=1,
        description="Below this many training examples fine-tuning results are fragile.")
    forgetting_threshold: float = Field(
        FORGETTING_THRESHOLD, ge=0, le=1,
        description="A general-set drop beyond this (and significant) flags forgetting.")
    horizon_days: float = Field(
        HORIZON_DAYS, gt=0,
        description="Days over which total cost (upfront + daily x days) is compared.")
    high_recall: float = Field(
        HIGH_RECALL, ge=0, le=1,
        description="Retrieval recall at or above this means retrieval finds the answer; "
                    "low scores then point to the reader model.")
    alpha: float = Field(
        ALPHA, gt=0, lt=1,
        description="Family-wise error rate of the verdict's comparisons (Holm).")
    latency_sample: int = Field(
        LATENCY_SAMPLE, ge=0,
        description="Test items timed one request at a time (batch 1, after a warm-up) for "
                    "latency p50/p95; 0 turns single-request timing off.")
