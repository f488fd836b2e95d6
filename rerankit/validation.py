"""Validation: the fixed, full candidate set of each validation query, never sampled.

Each validation query is ranked over every one of its positives and given negatives. The
same set scores the first stage (BM25 over the candidates), the untrained model (baseline)
and every evaluation during training, so the numbers are comparable.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankit.config import LongDocumentsConfig
from rerankit.data import QueryRecord
from rerankit.errors import RerankitError
from rerankit.fusion import fit_fusion
from rerankit.prompts import PromptTemplate
from rerankit.ranking_metrics import per_query_metrics, ranking_metrics
from rerankit.score_injection import ScoreInjection
from rerankit.windows import score_documents


@dataclass(frozen=True)
class ValidationSet:
    queries: tuple[str, ...]
    candidates: tuple[tuple[tuple[str, str], ...], ...]  # per query: (doc_id, text)
    relevant: tuple[frozenset[str], ...]  # per query: positive doc_ids
    # per query: each candidate's first-stage "score" from the data (None where not given)
    first_stage: tuple[tuple[float | None, ...], ...] = ()
    # per query: positives that are not among its candidates (a first stage missed them); they
    # count as relevant documents no ranking of the candidates can reach
    missed: tuple[int, ...] = ()
    # per query: its task instruction for a decoder's template (None: the default); () for none
    instructions: tuple[str | None, ...] = ()

    @classmethod
    def from_records(cls, records: Sequence[QueryRecord]) -> ValidationSet:
        """Each query's positives and negatives in a fixed shuffled order (seeded by the query's
        text): metrics break tied scores by input order, and positives listed first would win
        every tie."""
        candidates = [_shuffled(r.query, r.positives + r.negatives) for r in records]
        return cls(
            tuple(r.query for r in records),
            tuple(tuple((d.doc_id, d.text) for d in docs) for docs in candidates),
            tuple(frozenset(d.doc_id for d in r.positives) for r in records),
            tuple(tuple(d.score for d in docs) for docs in candidates),
            instructions=tuple(r.instruction for r in records) if any(r.instruction for r in records) else (),
        )

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def num_pairs(self) -> int:
        return sum(len(c) for c in self.candidates)

    def flat_pairs(self, score_injection: ScoreInjection | None = None) -> tuple[list[str], list[str]]:
        """Every (query, candidate) pair; with ``score_injection`` each query carries its
        candidate's first-stage level."""
        if score_injection is None:
            queries = [q for q, docs in zip(self.queries, self.candidates) for _ in docs]
        else:
            queries = [
                injected
                for q, scores in zip(self.queries, self.first_stage)
                for injected in score_injection.queries(q, scores)
            ]
        docs = [text for docs in self.candidates for _, text in docs]
        return queries, docs

    def flat_instructions(self) -> list[str | None] | None:
        """Each pair's instruction, in ``flat_pairs`` order; None when no query has one."""
        if not self.instructions:
            return None
        return [i for i, docs in zip(self.instructions, self.candidates) for _ in docs]

    def flat_labels(self) -> list[int]:
        """1 for a positive, 0 for a negative, in ``flat_pairs`` order."""
        return [int(d in rel) for docs, rel in zip(self.candidates, self.relevant) for d, _ in docs]

    def subset(self, indices: Sequence[int]) -> ValidationSet:
        """The queries at ``indices``, with everything that belongs to them."""
        pick = lambda values: tuple(values[i] for i in indices) if values else ()
        return ValidationSet(
            pick(self.queries),
            pick(self.candidates),
            pick(self.relevant),
            pick(self.first_stage),
            pick(self.missed),
            pick(self.instructions),
        )

    def at_depth(self, depth: int) -> ValidationSet:
        """Each query's first ``depth`` candidates (a deployed set lists them in the first
        stage's order); a positive left out counts as missed."""
        kept = [c[:depth] for c in self.candidates]
        relevant = [frozenset(r & {d for d, _ in k}) for r, k in zip(self.relevant, kept)]
        missed = self.missed or (0,) * len(kept)
        return ValidationSet(
            self.queries,
            tuple(kept),
            tuple(relevant),
            tuple(s[:depth] for s in self.first_stage) if self.first_stage else (),
            tuple(m + len(r) - len(n) for m, r, n in zip(missed, self.relevant, relevant)),
            self.instructions,
        )

    def split_scores(self, flat: Sequence[float]) -> list[np.ndarray]:
        flat = np.asarray(flat, dtype=np.float64)
        bounds = np.cumsum([0] + [len(c) for c in self.candidates])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def metrics(self, scores: Sequence[np.ndarray], recall_at: int = 10) -> dict[str, float]:
        """Metrics of per-query scores (one array per query, candidates' order)."""
        return ranking_metrics(*self._judged(scores), recall_at)

    def per_query(self, scores: Sequence[np.ndarray], metric: str = "ndcg@10") -> np.ndarray:
        """``metric`` of each query, in the set's order (a paired comparison's unit)."""
        values = per_query_metrics(*self._judged(scores))[metric]
        return np.array([values[str(i)] for i in range(len(self.candidates))])

    def _judged(self, scores: Sequence[np.ndarray]) -> tuple[dict, dict]:
        """The qrels and the run of ``scores``, the missed positives judged but never ranked."""
        qrels, run = {}, {}
        missed = self.missed or (0,) * len(self.candidates)
        for i, (docs, rel, s, lost) in enumerate(zip(self.candidates, self.relevant, scores, missed)):
            qid = str(i)
            qrels[qid] = {d: int(d in rel) for d, _ in docs} | {
                f"rerankit:missed:{j}": 1 for j in range(lost)
            }
            run[qid] = {d: float(x) for (d, _), x in zip(docs, s)}
        return qrels, run


def _shuffled(query: str, docs: list) -> list:
    order = list(docs)
    random.Random(zlib.crc32(query.encode("utf-8"))).shuffle(order)
    return order


class Validator:
    """Scores a ValidationSet with a model and returns its metrics."""

    def __init__(
        self,
        vset: ValidationSet,
        tokenizer,
        max_length: int,
        recall_at: int = 10,
        batch_size: int = 64,
        long_documents: LongDocumentsConfig | None = None,
        prompt: PromptTemplate | None = None,
        score_injection: ScoreInjection | None = None,
        progress: bool = True,
    ) -> None:
        self.vset, self.tokenizer, self.prompt = vset, tokenizer, prompt
        # a bar per evaluation: on a CPU without bf16 units one takes minutes
        self.progress = progress
        self.score_injection = score_injection
        self.max_length, self.recall_at, self.batch_size = max_length, recall_at, batch_size
        self.long_documents = long_documents or LongDocumentsConfig()
        self.last_scores: np.ndarray | None = None  # of the latest ``evaluate``
        self._bm25: list[np.ndarray] | None = None

    def scores(self, model) -> np.ndarray:
        """The model's score of every candidate (truncated or by windows, as configured)."""
        from rerankit.scoring import score_pairs

        def score(queries, docs, instructions):
            return score_pairs(
                model,
                self.tokenizer,
                queries,
                docs,
                max_length=self.max_length,
                max_tokens=self.batch_size * self.max_length,
                max_batch=self.batch_size,
                prompt=self.prompt,
                instructions=instructions,
                progress=self.progress,
            )

        queries, docs = self.vset.flat_pairs(self.score_injection)
        instructions = self.vset.flat_instructions()
        return score_documents(
            score,
            self.tokenizer,
            queries,
            docs,
            self.max_length,
            self.long_documents,
            self.prompt,
            instructions,
        )[0]

    def evaluate(self, model) -> dict[str, float]:
        """Metrics of the model's scores; RerankitError when a score is NaN or infinite (a
        broken model must never be reported, kept or marked finished)."""
        scores = self.last_scores = self.scores(model)
        if not np.isfinite(scores).all():
            bad = int((~np.isfinite(scores)).sum())
            raise RerankitError(
                f"{bad} of {len(scores)} validation scores are NaN or infinite: the model is "
                "broken (a learning rate too high?); the run is not finished"
            )
        return self.vset.metrics(self.vset.split_scores(scores), self.recall_at)

    def bm25_scores(self) -> list[np.ndarray]:
        """BM25's scores of each query's candidates (an index over all of them), computed once:
        the first-stage row and the fusion both need them."""
        from rerankit.first_stage import bm25_candidate_scores

        if self._bm25 is None:
            self._bm25 = bm25_candidate_scores(self.vset.queries, self.vset.candidates)
        return self._bm25

    def first_stage_scores(self) -> list[np.ndarray]:
        """The first stage's scores of each query's candidates: its own, for a set ranked as
        deployed (every candidate carries one); else BM25 over the candidates."""
        if self.vset.first_stage and all(None not in s for s in self.vset.first_stage):
            return [np.asarray(s, dtype=np.float64) for s in self.vset.first_stage]
        return self.bm25_scores()

    def first_stage_metrics(self) -> dict[str, float]:
        """The first stage's metrics over the same candidates: what the model must beat."""
        return self.vset.metrics(self.first_stage_scores(), self.recall_at)

    def fusion_report(self, logits: np.ndarray, key: str, seed: int = 0) -> dict:
        """The fusion of the model's ``logits`` (every candidate) with the first stage that
        ranks these validation queries best by ``key`` and clearly beats the model alone
        (``fusion.fit_fusion``, its folds dealt by ``seed``), and what it measured."""
        fusion, summary = fit_fusion(
            self.vset.split_scores(logits),
            self.first_stage_scores(),
            lambda scores, queries: self.vset.subset(queries).metrics(scores, self.recall_at)[key],
            seed=seed,
        )
        return {**fusion.to_dict(), "metric": key, "value": summary["value"], **summary}
