"""Reciprocal-rank fusion (Cormack et al., 2009): ``sum over rankings of 1 / (k + rank)``.

Fusing the reranker's order with the first stage's is a cheap lever when training data is
scarce; mining uses it for ``--method hybrid``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerankit.ordering import ranks

RRF_K = 60


def rrf(score_arrays: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Fused scores of several score arrays over the same items (last axis)."""
    return sum(1.0 / (k + ranks(s)) for s in score_arrays)
