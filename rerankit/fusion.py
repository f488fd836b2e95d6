"""Fusing the reranker with the first stage: reciprocal-rank fusion, or a fusion learned on
validation and stored with the model.

- ``rrf`` (Cormack et al., 2009): ``sum over rankings of 1 / (k + rank)``, untuned; mining
  uses it for ``--method hybrid``, and it is the fallback wherever no fusion was learned.
- ``LearnedFusion``: fitted at the end of ``fit`` on the validation queries only, against the
  first stage's own scores of their candidates (the deployed top-k; BM25 over the given
  candidates otherwise), on the reranker's score as it ships (the self-ensemble's, by
  default): a weight ``w`` for the reranker (``1 − w`` for the first stage) over per-query
  z-scored scores (``zscore``) or in a weighted RRF (``rrf``) — whichever ranks the validation
  queries better, on a grid of weights. It is kept only when its held-out gain over the reranker
  alone beats noise (``selection``); otherwise the weight is 1 and first-stage scores change
  nothing. Stored in the run folder's manifest and used by ``Reranker.rerank(first_stage=...)``,
  ``rerankit eval``, the server and the adapters whenever one first-stage score per document is
  known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rerankit.ordering import ranks
from rerankit.selection import FOLDS, beats_noise, gain_and_error, held_out_values, query_folds

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
    quality: Callable[[list[np.ndarray], Sequence[int]], float],
    *,
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[LearnedFusion, dict]:
    """The fusion of the reranker with the first stage that ranks validation queries best, kept
    only when it clearly gains over the reranker alone.

    ``quality(scores, queries)``: the metric (NDCG@10, say) of per-query scores of the queries at
    those indices, a mean over them. The grid of methods and weights is fitted by cross-validation
    over ``folds`` folds of queries; the grid's best replaces the reranker alone (``zscore`` with
    weight 1) only when its held-out gain per query is larger than the gain's standard error
    (``selection``). Ties go to ``zscore``, then to the larger reranker weight. Returns the fusion
    and a summary: its value on every query, untuned RRF's, the grid's values, the held-out gain
    with its standard error, and the grid's best on every query (``fitted``) whether kept or not.
    """
    n = len(reranker_logits)
    everyone = list(range(n))
    alone = LearnedFusion("zscore", 1.0)

    def fused(fusion: LearnedFusion, queries: Sequence[int]) -> list[np.ndarray]:
        return [fusion.combine(reranker_logits[q], first_stage[q]) for q in queries]

    def grid_on(queries: Sequence[int]) -> dict[str, dict[float, float]]:
        return {
            method: {w: quality(fused(LearnedFusion(method, w), queries), queries) for w in WEIGHT_GRID}
            for method in ("zscore", "rrf")
        }

    def value(fusion: LearnedFusion, q: int) -> float:
        return quality(fused(fusion, [q]), [q])

    parts = query_folds(n, folds, seed)
    fitted_held_out = held_out_values(n, parts, lambda qs: _best(grid_on(qs))[1], value)
    alone_values = np.array([value(alone, q) for q in everyone])  # nothing fitted: no folds
    gain, error = gain_and_error(fitted_held_out - alone_values)
    grid = grid_on(everyone)
    fitted_value, fitted = _best(grid)
    chosen = fitted if beats_noise(gain, error, n) else alone
    return chosen, {
        "value": quality(fused(chosen, everyone), everyone),
        "untuned_rrf": quality([rrf([first_stage[q], reranker_logits[q]]) for q in everyone], everyone),
        "grid": grid,
        "folds": len(parts),
        "queries": n,
        "gain_over_reranker": gain,
        "standard_error": error,
        "fitted": {**fitted.to_dict(), "value": fitted_value},
        "kept": "fitted" if chosen is fitted else "reranker alone",
    }


def _best(grid: dict[str, dict[float, float]]) -> tuple[float, LearnedFusion]:
    best_value, best = -np.inf, None
    for method in ("zscore", "rrf"):
        for w in WEIGHT_GRID:  # from 1.0 down: a tie keeps the larger reranker weight
            if grid[method][w] > best_value:
                best_value, best = grid[method][w], LearnedFusion(method, w)
    return best_value, best
