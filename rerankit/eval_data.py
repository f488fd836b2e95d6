"""``rerankit eval``: a reranker against its first stage on held-out data.

Two inputs:

- a seed-format JSONL file: each query's positives and given negatives are the candidates;
  the first stage is BM25 over those candidates (as in training validation);
- a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): BM25 retrieves
  the top ``k`` of the whole corpus for each judged query and the reranker reorders them.
  Metrics are over the full qrels, so a positive BM25 missed counts against both.

Both also report the reciprocal-rank fusion of BM25's order with the reranker's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rerankit.beir import read_corpus, read_qrels, read_queries
from rerankit.data import read_records
from rerankit.evaluation import ValidationSet
from rerankit.fusion import rrf
from rerankit.metrics import ranking_metrics


def _read_beir(folder: Path, split: str):
    """Corpus (title + text), queries, and the qrels of queries that have a positive."""
    corpus = read_corpus(folder / "corpus.jsonl", with_title=True)
    queries = read_queries(folder / "queries.jsonl")
    qrels = {q: judged for q, judged in read_qrels(folder / "qrels" / f"{split}.tsv").items()
             if q in queries and any(v > 0 for v in judged.values())}
    return corpus, queries, qrels


def evaluate_beir(reranker, folder: str | Path, *, top_k: int = 30, split: str = "test",
                  recall_at: int = 10, max_queries: int | None = None) -> dict[str, Any]:
    """BM25 top-k over the corpus vs the reranker's order of the same top-k."""
    from tqdm.auto import tqdm

    from rerankit.first_stage import BM25Retriever

    corpus, queries, qrels = _read_beir(Path(folder), split)
    qids = sorted(qrels)[:max_queries] if max_queries else sorted(qrels)
    qrels = {q: qrels[q] for q in qids}
    hits = BM25Retriever(corpus).retrieve([queries[q] for q in qids], top_k)
    first, reranked, fused = {}, {}, {}
    for qid, ranked in tqdm(list(zip(qids, hits)), desc="reranking", unit="query"):
        ids = [d for d, _ in ranked]
        bm25 = np.array([s for _, s in ranked])
        scores = np.asarray(reranker.score([(queries[qid], corpus[d]) for d in ids], raw=True))
        first[qid], reranked[qid] = dict(zip(ids, bm25)), dict(zip(ids, scores))
        fused[qid] = dict(zip(ids, rrf([bm25, scores])))
    return {"data": str(folder), "kind": "beir", "queries": len(qids), "top_k": top_k,
            "first_stage": {"name": f"bm25 top-{top_k}", **ranking_metrics(qrels, first, recall_at)},
            "reranked": ranking_metrics(qrels, reranked, recall_at),
            "fused": ranking_metrics(qrels, fused, recall_at)}


def evaluate_seed_file(reranker, path: str | Path, *, recall_at: int = 10) -> dict[str, Any]:
    """Each query's positives + negatives, ranked by BM25 and by the reranker."""
    from rerankit.first_stage import bm25_candidate_scores

    records, report = read_records(path)
    vset = ValidationSet.from_records(records)
    queries, docs = vset.flat_pairs()
    scores = vset.split_scores(reranker.score(list(zip(queries, docs)), raw=True))
    bm25 = bm25_candidate_scores(vset.queries, vset.candidates)
    return {"data": str(path), "kind": "seed", "queries": len(vset), "pairs": vset.num_pairs,
            "first_stage": {"name": "bm25 over the candidates", **vset.metrics(bm25, recall_at)},
            "reranked": vset.metrics(scores, recall_at),
            "fused": vset.metrics([rrf([b, s]) for b, s in zip(bm25, scores)], recall_at),
            "data_report": report.summary()}
