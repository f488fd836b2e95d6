"""Orders of scores, the one way every part of rerankit ranks: best first, ties in input order.

``best_first`` selects the top ``k`` without sorting the rest (``np.partition``), yet returns
exactly what a stable full sort would; ``ranks`` gives each entry's 1-based rank.
"""

from __future__ import annotations

import numpy as np


def best_first(scores, k: int | None = None) -> np.ndarray:
    """Indices of the ``k`` best entries along the last axis (all when ``k`` is None), best
    first; ties keep input order, as ``np.argsort(-scores, kind="stable")[..., :k]`` would."""
    scores = np.asarray(scores)
    n = scores.shape[-1]
    if k is None or k >= n or np.isnan(scores).any():
        return np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    if k <= 0:
        return np.zeros((*scores.shape[:-1], 0), dtype=np.intp)
    if scores.ndim == 1:
        return _top_k(scores, k)
    flat = scores.reshape(-1, n)
    return np.stack([_top_k(row, k) for row in flat]).reshape(*scores.shape[:-1], k)


def _top_k(row: np.ndarray, k: int) -> np.ndarray:
    kth = np.partition(row, len(row) - k)[len(row) - k]  # the k-th largest score
    # Every entry above it is in; of those tied with it, the first in input order fill up.
    candidates = np.flatnonzero(row >= kth)
    return candidates[np.argsort(-row[candidates], kind="stable")][:k]


def ranks(scores) -> np.ndarray:
    """1-based rank of every entry along the last axis (best = 1; ties keep input order)."""
    scores = np.asarray(scores)
    order = best_first(scores)
    result = np.empty_like(order)
    np.put_along_axis(result, order, np.arange(1, scores.shape[-1] + 1) * np.ones_like(order), axis=-1)
    return result
