"""Fusing the reranker with the first stage: reciprocal-rank fusion, or a fusion learned on
validation and stored with the model.

- ``rrf`` (Cormack et al., 2009): ``sum over rankings of 1 / (k + rank)``, untuned; mining
  uses it for ``--method hybrid``, and it is the fallback wherever no fusion was learned.
- ``LearnedFusion``: fitted at the end of ``fit`` on the validation queries only, against the
  first stage's own scores of their candidates (the deployed top-k; BM25 over the given
  candidates otherwise), on the reranker's score as it ships (the self-ensemble's, by
  default): a weight ``w`` for the reranker (``1 − w`` for the first stage)
  over per-query z-scored scores (``zscore``) or in a weighted RRF (``rrf``) — whichever ranks
  the validation queries better, on a grid of weights. Stored in the run folder's manifest and
  used by ``Reranker.rerank(first_stage=...)``, ``rerankit eval``, the server and the adapters
  whenever one first-stage score per document is known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rerankit.ordering import ranks

RRF_K = 60
# Weights tried for the reranker (the rest goes to the first stage).
WEIGHT_GRID = tuple(round(w, 2) for w in np.linspace(1.0, 0.0, 21))


def rrf(score_arrays: Sequence[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """Fused scores of several score arrays over the same items (last axis)."""
    return sum(1.0 / (k + ranks(s)) for s in score_arrays)


def zscore(scores: np.ndarray) -> np.ndarray:
    """Scores of one query's documents centred and scaled (all equal: all zero).

    Divided by their largest magnitude first, so that no sum or square of huge finite scores
    (a retriever's 1e308) overflows: z-scores do not change under scaling."""
    scores = np.asarray(scores, dtype=np.float64)
    magnitude = float(np.abs(scores).max()) if scores.size else 0.0
    if magnitude > 0:
        scores = scores / magnitude
    spread = scores.std()
    return (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)


@dataclass(frozen=True)
class LearnedFusion:
    method: str  # "zscore" or "rrf"
    weight: float  # the reranker's share; the first stage has 1 - weight
    fitted_on: str = ""  # what the fusion was fitted on, in words

    def combine(self, reranker_logits: np.ndarray, first_stage: np.ndarray) -> np.ndarray:
        """Fused scores of one query's documents (higher is better)."""
        w = self.weight
        if self.method == "zscore":
            return w * zscore(reranker_logits) + (1 - w) * zscore(first_stage)
        return w / (RRF_K + ranks(reranker_logits)) + (1 - w) / (RRF_K + ranks(first_stage))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> LearnedFusion | None:
        if not data:
            return None
        if data.get("method") not in ("zscore", "rrf") or not 0.0 <= float(data.get("weight", -1)) <= 1.0:
            raise ValueError(f"fusion: expected a method zscore|rrf and a weight in [0, 1], got {dict(data)}")
        return cls(str(data["method"]), float(data["weight"]), str(data.get("fitted_on", "")))


def fit_fusion(
    reranker_logits: Sequence[np.ndarray],
    first_stage: Sequence[np.ndarray],
    quality: Callable[[list[np.ndarray]], float],
) -> tuple[LearnedFusion, dict]:
    """The fusion whose per-query scores ``quality`` (e.g. validation NDCG@10) rates highest.

    Ties go to ``zscore``, then to the larger reranker weight. Returns it and a summary: the
    best value, untuned RRF's and each method's value per weight.
    """
    grid: dict[str, dict[float, float]] = {}
    for method in ("zscore", "rrf"):
        grid[method] = {
            w: quality([LearnedFusion(method, w).combine(r, f) for r, f in zip(reranker_logits, first_stage)])
            for w in WEIGHT_GRID
        }
    best_value, best = _best(grid)
    untuned = quality([rrf([f, r]) for r, f in zip(reranker_logits, first_stage)])
    return best, {"value": best_value, "untuned_rrf": untuned, "grid": grid}


def _best(grid: dict[str, dict[float, float]]) -> tuple[float, LearnedFusion]:
    best_value, best = -np.inf, None
    for method in ("zscore", "rrf"):
        for w in WEIGHT_GRID:  # from 1.0 down: a tie keeps the larger reranker weight
            if grid[method][w] > best_value:
                best_value, best = grid[method][w], LearnedFusion(method, w)
    return best_value, best
