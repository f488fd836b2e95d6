"""Calibrated relevance scores: a scale and a bias on the logit, fitted on validation.

Ranking losses only care about order, and the listwise loss does not even see a shift of all
scores: ``sigmoid(logit)`` of a trained reranker is a number in [0, 1], not a probability, and
a threshold on it (``score_threshold`` in the adapters) means something different in every run.
At the end of ``fit`` the logits of the validation pairs (every positive and given negative)
are mapped to probabilities by Platt scaling — a one-feature logistic regression
(scikit-learn, in the ``train`` extra), ``p = sigmoid(scale · logit + bias)`` — stored with the run,
and applied (numpy alone) by every surface that reports a relevance score. Raw logits stay
available (``raw=True``).

The probabilities are calibrated for candidates like the validation ones (mined hard negatives
and positives); the expected calibration error before and after is in the run report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from rerankit.scoring import sigmoid


@dataclass(frozen=True)
class Calibration:
    """``sigmoid(scale · logit + bias)``: the scale is positive (a calibration never reverses the
    order) and both are finite (one that is not would serve NaN, or only 0 and 1)."""

    scale: float
    bias: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number above 0, got {self.scale!r}")
        if not math.isfinite(self.bias):
            raise ValueError(f"bias must be a finite number, got {self.bias!r}")

    def probabilities(self, logits) -> np.ndarray:
        return sigmoid(self.scale * np.asarray(logits, dtype=np.float64) + self.bias)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> Calibration | None:
        if not data:
            return None
        scale, bias = data["scale"], data["bias"]
        for name, value in (("scale", scale), ("bias", bias)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        return cls(float(scale), float(bias))


def fit_calibration(logits, labels) -> Calibration | None:
    """Platt scaling of ``logits`` to the 0/1 ``labels``; None when one class is missing, or
    when the fit would reverse the order (the logits rank negatives above positives)."""
    from rerankit.errors import require

    LogisticRegression = require("sklearn.linear_model", "train").LogisticRegression
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, 1)
    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2 or not np.isfinite(logits).all():
        return None
    # Next to no regularisation: two parameters, thousands of pairs.
    model = LogisticRegression(C=1e4).fit(logits, labels)
    scale, bias = float(model.coef_[0, 0]), float(model.intercept_[0])
    return Calibration(scale, bias) if scale > 0 and math.isfinite(bias) else None


def expected_calibration_error(probabilities, labels, bins: int = 10) -> float:
    """Mean |accuracy − confidence| over equal-width probability bins, weighted by bin size."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if len(probabilities) == 0:
        return 0.0
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(labels[inside].mean() - probabilities[inside].mean())
    return float(error)


def calibration_report(logits, labels) -> dict:
    """The fitted calibration (or None) and the ECE of plain and calibrated sigmoids."""
    calibration = fit_calibration(logits, labels)
    before = expected_calibration_error(sigmoid(logits), labels)
    after = expected_calibration_error(calibration.probabilities(logits), labels) if calibration else before
    return {
        "calibration": calibration.to_dict() if calibration else None,
        "ece_before": round(before, 4),
        "ece_after": round(after, 4),
        "pairs": len(labels),
    }
