"""Ranking metrics.

NDCG@10, MRR@10 (RR@10), MAP (AP) and Recall@k come from ``ir_measures`` (backed by
``pytrec_eval``, the reference trec_eval implementation). Pairwise accuracy — the share of
(positive, negative) pairs of a query that the scores order correctly, ties counting half —
is computed here, since trec_eval has no such measure.

trec_eval orders documents of equal score by their ids, so a tie would be ranked by how the
ids happen to be spelled; here tied documents keep the order they came in (``ordering``), as
every ranking rerankit serves does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def ranking_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], recall_at: int = 10
) -> dict[str, float]:
    """Mean metrics over the queries of ``qrels`` (a query missing from ``run`` scores 0)."""
    per_query = per_query_metrics(qrels, run, recall_at)
    n = len(qrels)
    result = {name: sum(values.values()) / n for name, values in per_query.items()}
    result["pairwise_accuracy"] = pairwise_accuracy(qrels, run)
    return result


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], recall_at: int = 10
) -> dict[str, dict[str, float]]:
    """Each metric's value per query of ``qrels`` (0 for a query missing from ``run``)."""
    from rerankit.errors import require

    ir_measures = require("ir_measures", "train")
    AP, RR, R, nDCG = ir_measures.AP, ir_measures.RR, ir_measures.R, ir_measures.nDCG

    measures = {"ndcg@10": nDCG @ 10, "mrr@10": RR @ 10, "map": AP, f"recall@{recall_at}": R @ recall_at}
    names = {str(measure): name for name, measure in measures.items()}
    per_query = {name: dict.fromkeys(qrels, 0.0) for name in measures}
    for m in ir_measures.iter_calc(list(measures.values()), qrels, _ties_in_input_order(run)):
        per_query[names[str(m.measure)]][m.query_id] = m.value
    return per_query


def _ties_in_input_order(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Each query's scores replaced by distinct ones that keep their order, ties broken by the
    order the documents were given in."""
    from rerankit.ordering import ranks

    out = {}
    for qid, scores in run.items():
        ids = list(scores)
        order = ranks(np.fromiter((float(scores[d]) for d in ids), dtype=np.float64, count=len(ids)))
        out[qid] = {d: float(len(ids) - r) for d, r in zip(ids, order)}
    return out


def pairwise_accuracy(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> float:
    """Mean over queries of the share of (positive, negative) pairs with s_pos > s_neg."""
    values = []
    for qid, judged in qrels.items():
        scores = run.get(qid, {})
        pos = np.array([s for d, s in scores.items() if judged.get(d, 0) > 0])
        neg = np.array([s for d, s in scores.items() if judged.get(d, 0) <= 0])
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            values.append(float(((diff > 0) + 0.5 * (diff == 0)).mean()))
    return float(np.mean(values)) if values else 0.0
