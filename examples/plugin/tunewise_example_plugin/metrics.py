"""A metric: does the answer contain the reference answer?

A tunewise metric scores one test item: ``fn(prediction, reference) -> float`` in [0, 1].
tunewise averages it over the test split and, from the per-item scores, gives it the same
95% interval and paired tests between rungs as its built-in metrics.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def contains_answer(prediction: str, reference: str) -> float:
    """1.0 when the reference's words appear, in order, inside the prediction (case and
    punctuation ignored): lenient credit for a right answer wrapped in a sentence."""
    ref = " ".join(_WORD.findall(reference.lower()))
    pred = " ".join(_WORD.findall(prediction.lower()))
    return float(bool(ref) and f" {ref} " in f" {pred} ")
