"""``rerankit eval``: a reranker against its first stage on held-out data.

Two inputs:

- a seed-format JSONL file: each query's positives and given negatives are the candidates;
  the first stage is BM25 over those candidates (as in training validation);
- a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``): the first stage
  (BM25, a bi-encoder, or their hybrid) retrieves the top ``k`` of the whole corpus for each
  judged query and the reranker reorders them. Metrics are over the full qrels, so a positive
  the first stage missed counts against both.

Both also report the reciprocal-rank fusion of the first stage's ranking(s) with the reranker's.

The reranker scores the candidates in this process, query by query, or, given ``bulk``
(``rerankit.held_out_bulk.BulkScoring``), through the bulk path of ``rerankit score``: resumable,
and on a Ray actor pool with ``engine="ray"``. The metrics are computed the same way from either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rerankit.beir import read_corpus, read_qrels, read_queries
from rerankit.data import read_records, require_scores
from rerankit.errors import DataError
from rerankit.first_stage import DEFAULT_DENSE_MODEL, BM25Index, CorpusScorer, bm25_candidate_scores
from rerankit.fusion import rrf
from rerankit.held_out_bulk import BulkScoring, Group, PairScores
from rerankit.ordering import best_first
from rerankit.ranking_metrics import ranking_metrics
from rerankit.validation import ValidationSet

# Rerank depths `rerankit eval` reports: how far into the first stage's list the reranker reads.
DEPTHS = (10, 30, 100)


def _read_beir(folder: Path, split: str):
    """Corpus (title + text), queries, and the qrels of queries that have a positive."""
    corpus = read_corpus(folder / "corpus.jsonl", with_title=True)
    queries = read_queries(folder / "queries.jsonl")
    qrels = {
        q: judged
        for q, judged in read_qrels(folder / "qrels" / f"{split}.tsv").items()
        if q in queries and any(v > 0 for v in judged.values())
    }
    return corpus, queries, qrels


class Candidates(NamedTuple):
    """One query's top-k from the first stage."""

    ids: list[str]
    scores: np.ndarray  # what the first stage ranked them by (best first)
    components: dict[str, np.ndarray]  # BM25's and/or the bi-encoder's scores of them


def first_stage_top_k(
    corpus: dict[str, str],
    queries: list[str],
    top_k: int,
    method: str,
    dense_model: str = DEFAULT_DENSE_MODEL,
    block_size: int | None = None,
) -> list[Candidates]:
    """Each query's top ``k`` doc ids from the first stage over the whole corpus.

    ``bm25`` (bm25s), ``dense`` (bi-encoder cosine) or ``hybrid`` (their reciprocal-rank
    fusion over the whole corpus, as ``rerankit mine --method hybrid`` ranks).
    """
    doc_ids = list(corpus)
    texts = [corpus[d] for d in doc_ids]
    if method == "bm25":  # bm25s's own top-k (and its order of tied scores)
        picked, scores = BM25Index(texts).top_k(queries, top_k)
        rows = [np.asarray(bm25, dtype=np.float64) for bm25 in scores]
        return [
            Candidates([doc_ids[i] for i in ids], bm25, {"bm25": bm25}) for ids, bm25 in zip(picked, rows)
        ]
    scorer = CorpusScorer(texts, method, dense_model)
    result = []
    for block in scorer.blocks(queries, block_size):
        top = best_first(block.ranking, top_k)
        for row, picked in enumerate(top):
            result.append(
                Candidates(
                    [doc_ids[i] for i in picked],
                    block.ranking[row, picked],
                    {name: c[row, picked] for name, c in block.components.items()},
                )
            )
    return result


def evaluate_beir(
    reranker,
    folder: str | Path,
    *,
    top_k: int = 30,
    split: str = "test",
    recall_at: int = 10,
    max_queries: int | None = None,
    first_stage: str = "bm25",
    dense_model: str = DEFAULT_DENSE_MODEL,
    depths: Sequence[int] = DEPTHS,
    bulk: BulkScoring | None = None,
) -> dict[str, Any]:
    """The first stage's top-k over the corpus vs the reranker's order of the same top-k.

    The fused row is the reranker's fusion (``Reranker.fuse``) with each ranking the first
    stage is made of (BM25, the bi-encoder, or both for ``hybrid``): learned on the run's
    validation set where it applies, else reciprocal-rank fusion (also reported as ``fused_rrf``).
    ``depths``: the first stage, the cross-encoder alone and the reranker as it scores (with its
    ensemble) reordering the top d of the first stage, for each d (``depth``).
    ``bulk``: score the candidates through ``rerankit.bulk`` instead of query by query here.
    """
    corpus, queries, qrels = _read_beir(Path(folder), split)
    if not qrels:
        raise DataError(
            f"no query of qrels/{split}.tsv has a positive document and a text in queries.jsonl: "
            "nothing to evaluate",
            path=str(folder),
        )
    qids = sorted(qrels)[:max_queries] if max_queries else sorted(qrels)
    qrels = {q: qrels[q] for q in qids}
    deepest = max(top_k, *depths)
    hits = first_stage_top_k(corpus, [queries[q] for q in qids], deepest, first_stage, dense_model)
    # every candidate scored once, as deep as the deepest depth; score injection reads `own`
    groups = [Group(queries[q], [corpus[d] for d in hit.ids], hit.scores) for q, hit in zip(qids, hits)]
    scored = bulk.scores(groups) if bulk is not None else _in_process(reranker, groups)
    first, reranked, fused, fused_rrf = {}, {}, {}, {}
    deep: dict[str, dict[str, dict[str, float]]] = {"first_stage": {}, "cross_encoder": {}, "reranked": {}}
    for qid, (ids, own, components), (logits, final) in zip(qids, hits, scored):
        for name, values in (("first_stage", own), ("cross_encoder", logits), ("reranked", final)):
            deep[name][qid] = dict(zip(ids, map(float, values)))
        ids, own, scores = ids[:top_k], own[:top_k], final[:top_k]
        components = {name: values[:top_k] for name, values in components.items()}
        first[qid], reranked[qid] = dict(zip(ids, own)), dict(zip(ids, scores))
        fused[qid] = dict(zip(ids, reranker.fuse(scores, list(components.values()))))
        fused_rrf[qid] = dict(zip(ids, rrf([*components.values(), scores])))
    name = {"bm25": "bm25", "dense": "bi-encoder", "hybrid": "hybrid (bm25 + bi-encoder, RRF)"}
    return {
        "data": str(folder),
        "kind": "beir",
        "queries": len(qids),
        "top_k": top_k,
        "first_stage": {
            "name": f"{name[first_stage]} top-{top_k}",
            **ranking_metrics(qrels, first, recall_at),
        },
        "reranked": ranking_metrics(qrels, reranked, recall_at),
        "fused": ranking_metrics(qrels, fused, recall_at),
        "fused_name": _fused_name(reranker, [*hits[0].components] if hits else []),
        "fused_rrf": ranking_metrics(qrels, fused_rrf, recall_at),
        "depths": {
            str(d): {name: ranking_metrics(qrels, _top(run, d), recall_at) for name, run in deep.items()}
            for d in depths
        },
    }


def _in_process(reranker, groups: Sequence[Group]) -> Iterator[PairScores]:
    """Each query's candidates scored by ``reranker`` here, one query at a time."""
    from tqdm.auto import tqdm

    for query, texts, first_stage in tqdm(groups, desc="reranking", unit="query"):
        final, logits = reranker.scores_and_logits(
            [(query, text) for text in texts], raw=True, first_stage=first_stage
        )
        yield PairScores(logits, final)


def _top(run: dict[str, dict[str, float]], depth: int) -> dict[str, dict[str, float]]:
    """Each query's first ``depth`` candidates (the first stage's order) with their scores."""
    return {q: dict(list(scores.items())[:depth]) for q, scores in run.items()}


def _fused_name(reranker, components: list[str]) -> str:
    parts = ", ".join([*components, "reranker"])
    if len(components) == 1 and reranker.fusion is not None:
        return f"fused: {reranker.fusion_name} ({parts})"
    return f"fused: RRF({parts})"


def evaluate_seed_file(
    reranker, path: str | Path, *, recall_at: int = 10, bulk: BulkScoring | None = None
) -> dict[str, Any]:
    """Each query's positives + negatives, ranked by BM25 and by the reranker.

    ``bulk``: score the pairs through ``rerankit.bulk`` instead of in one call here (not for
    queries with an instruction read by a prompt template: a pairs file has no place for one).
    """
    records, report = read_records(path)
    if reranker.score_injection is not None:
        require_scores(records, path, "this model (trained with score injection)")
    vset = ValidationSet.from_records(records)
    if bulk is not None:
        if vset.instructions and reranker.prompt is not None:
            raise DataError(
                "queries with an instruction are evaluated in process: a pairs file for the bulk "
                "path has no place for one (leave out --engine)",
                path=str(path),
                field="instruction",
            )
        groups = [
            Group(query, [text for _, text in docs], scores)
            for query, docs, scores in zip(vset.queries, vset.candidates, vset.first_stage)
        ]
        scores = [scored.final for scored in bulk.scores(groups)]
    else:
        model_queries, docs = vset.flat_pairs(reranker.score_injection)  # as the model reads them
        logits = reranker.input_logits(model_queries, docs, vset.flat_instructions())[0]
        final = reranker.final_scores(logits, reranker.signal_scores(vset.flat_pairs()[0], docs))
        scores = vset.split_scores(final)
    bm25 = bm25_candidate_scores(vset.queries, vset.candidates)
    return {
        "data": str(path),
        "kind": "seed",
        "queries": len(vset),
        "pairs": vset.num_pairs,
        "first_stage": {"name": "bm25 over the candidates", **vset.metrics(bm25, recall_at)},
        "reranked": vset.metrics(scores, recall_at),
        "fused": vset.metrics([reranker.fuse(s, [b]) for b, s in zip(bm25, scores)], recall_at),
        "fused_name": _fused_name(reranker, ["bm25"]),
        "fused_rrf": vset.metrics([rrf([b, s]) for b, s in zip(bm25, scores)], recall_at),
        "data_report": report.summary(),
    }
