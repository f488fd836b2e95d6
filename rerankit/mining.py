"""Hard-negative mining: (queries, corpus, qrels) or positive-only seed lines -> seed-format JSONL.

First stages: ``bm25`` (bm25s), ``dense`` (a sentence-transformers bi-encoder; the packaged
all-MiniLM-L6-v2 by default) and ``hybrid`` (reciprocal-rank fusion of the two, k=60).
For each query, candidates come from the first stage's ranking, minus:

- every positive of the query, by doc_id and by identical text;
- the ``skip_top`` best remaining candidates (the usual home of unlabelled positives);
- with ``margin`` set, candidates the dense model scores within ``margin`` (cosine) of the
  query's weakest positive (a false-negative guard; bm25 uses its own scores relative to the
  weakest positive: candidates above ``(1 - margin)`` times it are dropped).

The next ``num_negatives`` candidates become the line's negatives. Rankings are
deterministic (ties keep corpus order), so the same inputs give the same file. Queries are
scored a block at a time against a corpus indexed once, so memory grows with the corpus,
not with queries × corpus. With ``teacher_scores`` every written document carries the first
stage's score for its query (BM25's score, the cosine, or the hybrid's RRF), the ``"score"``
that ``loss.distillation`` trains towards.

sentence-transformers' ``util.mine_hard_negatives`` is not used: it works on single
(anchor, positive) pairs and dense scores only, and rerankit needs several positives per
query and a lexical first stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rerankit.beir import read_corpus, read_qrels, read_queries
from rerankit.data import Doc, QueryRecord, read_records
from rerankit.first_stage import CorpusScorer
from rerankit.ordering import best_first


@dataclass
class MiningInput:
    corpus: dict[str, str]  # doc_id -> text, in file order
    queries: dict[str, str]  # query id -> text
    positives: dict[str, list[str]]  # query id -> positive doc_ids


def from_beir(corpus: str | Path, queries: str | Path, qrels: str | Path) -> MiningInput:
    """Queries with a positive (grade > 0) in the qrels, over the corpus."""
    docs, texts = read_corpus(corpus), read_queries(queries)
    positives = {
        q: [d for d, grade in judged.items() if grade > 0 and d in docs]
        for q, judged in read_qrels(qrels).items()
        if q in texts
    }
    positives = {q: ids for q, ids in positives.items() if ids}
    return MiningInput(docs, {q: texts[q] for q in positives}, positives)


def from_seed_lines(path: str | Path, corpus: str | Path | None = None) -> MiningInput:
    """Positive-only seed lines; the corpus defaults to every document in the file."""
    records, _ = read_records(path)
    docs: dict[str, str] = read_corpus(corpus) if corpus else {}
    for rec in records:
        for doc in rec.positives + rec.negatives:
            docs.setdefault(doc.doc_id, doc.text)
    return MiningInput(
        docs,
        {str(i): r.query for i, r in enumerate(records)},
        {str(i): [d.doc_id for d in r.positives] for i, r in enumerate(records)},
    )


def mine(
    data: MiningInput,
    *,
    method: Literal["bm25", "dense", "hybrid"] = "bm25",
    num_negatives: int = 15,
    skip_top: int = 0,
    margin: float | None = None,
    dense_model: str = "sentence-transformers/all-MiniLM-L6-v2",
    block_size: int | None = None,
    teacher_scores: bool = False,
) -> list[QueryRecord]:
    """Mine negatives for every query with a positive (see the module docstring).

    ``block_size`` queries are scored at a time (default: ``first_stage.BLOCK_CELLS`` worth).
    """
    from tqdm.auto import tqdm

    if num_negatives < 1 or skip_top < 0:
        raise ValueError(f"num_negatives must be >= 1 and skip_top >= 0, got {num_negatives}, {skip_top}")
    qids = list(data.positives)
    doc_ids = list(data.corpus)
    docs = [data.corpus[d] for d in doc_ids]
    position = {d: i for i, d in enumerate(doc_ids)}
    scorer = CorpusScorer(docs, method, dense_model)
    block_size = scorer.block_size(block_size)

    records = []
    for block in tqdm(
        scorer.blocks([data.queries[q] for q in qids], block_size),
        total=math.ceil(len(qids) / block_size),
        desc=f"mining ({method})",
        unit="block",
        disable=len(qids) <= block_size,
    ):
        # The guard reads the bi-encoder's cosine where there is one, else BM25's score.
        dense = "dense" in block.components
        guard = block.components["dense" if dense else "bm25"]
        for row, qid in enumerate(qids[block.start : block.start + len(block.ranking)]):
            pos_ids = data.positives[qid]
            # The first stage's own score of each written document, as a distillation target.
            scores = block.ranking[row] if teacher_scores else None
            floor = None
            if margin is not None:
                weakest = min(guard[row, position[d]] for d in pos_ids)
                floor = weakest - margin if dense else (1 - margin) * weakest
            # Look at the best few candidates first; widen only when filters take too many.
            k = len(pos_ids) + skip_top + num_negatives
            while True:
                order = best_first(block.ranking[row], k)
                negatives = _negatives(
                    data, qid, doc_ids, docs, order, guard[row], floor, skip_top, num_negatives, scores
                )
                if len(negatives) == num_negatives or k >= len(doc_ids):
                    break
                k *= 4
            records.append(
                QueryRecord(
                    data.queries[qid],
                    tuple(Doc(d, data.corpus[d], _score(scores, position[d])) for d in pos_ids),
                    negatives,
                    source_chunk=pos_ids[0] if len(pos_ids) == 1 else None,
                    meta={"query_id": qid, "mined_by": method},
                )
            )
    return records


def _negatives(
    data: MiningInput,
    qid: str,
    doc_ids: list[str],
    docs: list[str],
    order: np.ndarray,
    guard: np.ndarray,
    floor: float | None,
    skip_top: int,
    num_negatives: int,
    scores: np.ndarray | None = None,
) -> tuple[Doc, ...]:
    """The query's negatives from its ranking: positives (by id or text) out, window, guard."""
    pos_ids = set(data.positives[qid])
    pos_texts = {data.corpus[d] for d in pos_ids}
    negatives: list[Doc] = []
    skipped = 0
    for i in order:
        if doc_ids[i] in pos_ids or docs[i] in pos_texts:
            continue
        if skipped < skip_top:
            skipped += 1
            continue
        if floor is not None and guard[i] >= floor:
            continue
        negatives.append(Doc(doc_ids[i], docs[i], _score(scores, i)))
        if len(negatives) == num_negatives:
            break
    return tuple(negatives)


def _score(scores: np.ndarray | None, index: int) -> float | None:
    return None if scores is None else round(float(scores[index]), 6)
