"""Reciprocal-rank fusion (Cormack et al., 2009): ``sum over rankings of 1 / (k + rank)``.

Fusing the reranker's order with the first stage's is a cheap lever when training data is
scarce; mining uses it for ``--method hybrid``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RRF_K = 60


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every entry along the last axis (best = 1; ties keep input order)."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, axis=-1, kind="stable")
    result = np.empty_like(order)
    np.put_along_axis(result, order, np.arange(1, scores.shape[-1] + 1) * np.ones_like(order),
                      axis=-1)
    return result


def rrf(score_arrays: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Fused scores of several score arrays over the same items (last axis)."""
    return sum(1.0 / (k + ranks(s)) for s in score_arrays)
