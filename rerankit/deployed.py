"""Validation as deployed: each validation query ranked over what the first stage really returns.

A reranker never sees a query's mined positives and hard negatives side by side in production;
it sees the first stage's top-k of the whole corpus, with the retriever's own scores. Checkpoint
choice, calibration and the ensemble are fitted on that list here, so that what validation
measures is what a user gets.

The corpus is the one the reranker will search (``data.corpus``: JSONL ``{_id, text, title?}``
or ``{doc_id, text}``); without one, every distinct document of the training and validation
lines stands in for it (and the report says so). A positive the first stage misses stays a
relevant document of its query (it counts against every row alike) and the first stage's
recall@k says how many were missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rerankit.data import QueryRecord
from rerankit.ordering import best_first
from rerankit.validation import ValidationSet


@dataclass(frozen=True)
class DeployedCorpus:
    ids: tuple[str, ...]
    texts: tuple[str, ...]
    source: str  # the corpus file, or a sentence saying what stood in for it

    @classmethod
    def read(cls, path: str) -> DeployedCorpus:
        from rerankit.beir import read_corpus

        corpus = read_corpus(path)
        return cls(tuple(corpus), tuple(corpus.values()), path)

    @classmethod
    def from_records(cls, *splits: Sequence[QueryRecord]) -> DeployedCorpus:
        """Every distinct document of the lines (by id, first text wins)."""
        seen: dict[str, str] = {}
        for records in splits:
            for record in records:
                for doc in record.positives + record.negatives:
                    seen.setdefault(str(doc.doc_id), doc.text)
        return cls(
            tuple(seen),
            tuple(seen.values()),
            "no data.corpus: the training and validation documents stand in for it",
        )


def deployed_validation(
    records: Sequence[QueryRecord], corpus: DeployedCorpus, method: str = "bm25", depth: int = 30
) -> tuple[ValidationSet, dict]:
    """The validation queries ranked over the first stage's top ``depth`` of ``corpus``, and a
    summary (the first stage, the depth, its recall@depth, where the corpus came from)."""
    from rerankit.first_stage import CorpusScorer

    by_text = {text: doc_id for doc_id, text in zip(corpus.ids, corpus.texts)}
    scorer = CorpusScorer(list(corpus.texts), method)
    queries = [r.query for r in records]
    candidates, relevant, first_stage, missed = [], [], [], []
    found = total = 0
    for block in scorer.blocks(queries):
        for offset, row in enumerate(block.ranking):
            record = records[block.start + offset]
            top = best_first(row, depth)
            ids = [corpus.ids[i] for i in top]
            # a positive is known by its id in the corpus, or else by its exact text
            wanted = {by_text.get(p.text, str(p.doc_id)) for p in record.positives}
            hits = wanted & set(ids)
            candidates.append(tuple((corpus.ids[i], corpus.texts[i]) for i in top))
            relevant.append(frozenset(hits))
            first_stage.append(tuple(float(row[i]) for i in top))
            missed.append(len(wanted) - len(hits))
            found, total = found + len(hits), total + len(wanted)
    instructions = tuple(r.instruction for r in records) if any(r.instruction for r in records) else ()
    vset = ValidationSet(
        tuple(queries), tuple(candidates), tuple(relevant), tuple(first_stage), tuple(missed), instructions
    )
    summary = {
        "first_stage": method,
        "depth": depth,
        "corpus": corpus.source,
        "corpus_documents": len(corpus.ids),
        "queries": len(queries),
        "recall_at_depth": round(found / total, 4) if total else 0.0,
        "queries_without_a_positive_in_depth": sum(1 for r in relevant if not r),
    }
    return vset, summary
