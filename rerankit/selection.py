"""Choosing a fitted setting over a plain one only when it clearly gains on held-out queries.

The self-ensemble's weights and the fusion with the first stage are both fitted on a run's
validation queries, often fewer than a hundred. A setting picked from a grid on them always
looks better there than where it ships, so both fits follow the same rule: cross-validate the
fit over folds of queries, compare each held-out query's value with the plain setting's (equal
weights, the reranker alone), and adopt the fitted setting only when the mean gain is larger
than its standard error (the one-standard-error rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

FOLDS = 5
# Rounding room when a gain is compared with its standard error.
GAIN_TOLERANCE = 1e-9

Setting = TypeVar("Setting")


def query_folds(n: int, folds: int, seed: int) -> list[list[int]]:
    """``n`` query indices dealt into at most ``folds`` folds, shuffled by ``seed`` (one fold of
    every query when there are fewer than two)."""
    if folds < 2:  # one fold would fit on the very queries it is judged on
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    if n < 2:
        return [list(range(n))]
    order = np.random.default_rng(seed).permutation(n)
    return [sorted(order[i::folds].tolist()) for i in range(min(folds, n))]


def held_out_values(
    n: int,
    parts: Sequence[Sequence[int]],
    fit: Callable[[list[int]], Setting],
    value: Callable[[Setting, int], float],
) -> np.ndarray:
    """Each query's ``value`` under the setting ``fit`` chose on the other folds' queries."""
    values = np.zeros(n)
    for part in parts:
        held = set(part)
        rest = [q for q in range(n) if q not in held] or list(part)
        setting = fit(rest)
        values[list(part)] = [value(setting, q) for q in part]
    return values


def gain_and_error(gains: np.ndarray) -> tuple[float, float]:
    """The mean of per-query gains and its standard error (0 with fewer than two queries,
    where it is unknown)."""
    if len(gains) < 2:
        return (float(gains.mean()) if len(gains) else 0.0), 0.0
    return float(gains.mean()), float(gains.std(ddof=1) / math.sqrt(len(gains)))


def beats_noise(gain: float, error: float, n: int) -> bool:
    """Whether a held-out gain over ``n`` queries is larger than its standard error.

    Strictly larger: when a single query moves, the gain equals its standard error. With fewer
    than two queries there is no error to compare with, and nothing beats noise."""
    return n >= 2 and gain > error + GAIN_TOLERANCE
