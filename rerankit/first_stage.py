"""First stages a reranker must beat: BM25 through ``bm25s``, and a sentence-transformers
bi-encoder (the packaged all-MiniLM-L6-v2 by default).

``BM25Index`` and ``DenseIndex`` index a corpus once and score any number of queries against
it; ``CorpusScorer`` combines them (``bm25``, ``dense`` or an RRF ``hybrid``) a block of queries
at a time, so that mining and ``rerankit eval`` never hold the whole queries × corpus matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from rerankit.fusion import rrf
from rerankit.loading import resolve_model_path

DEFAULT_DENSE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _bm25_tokens(texts: Sequence[str], return_ids: bool = True):
    """bm25s's tokenization with English stopwords, the same for corpus and queries."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", show_progress=False, return_ids=return_ids)


class BM25Index:
    """BM25 (bm25s, English stopwords) over a list of texts."""

    def __init__(self, texts: Sequence[str]) -> None:
        import bm25s

        self.size = len(texts)
        self.retriever = bm25s.BM25()
        self.retriever.index(_bm25_tokens(texts), show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 score of every text for every query, shape (queries, texts)."""
        if not queries:
            return np.zeros((0, self.size), dtype=np.float32)
        return np.stack(
            [
                self.retriever.get_scores(t) if t else np.zeros(self.size, np.float32)
                for t in _bm25_tokens(queries, return_ids=False)
            ]
        )

    def top_k(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """bm25s's own top ``k`` per query: (text indices, scores), each (queries, k), best first."""
        k = min(k, self.size)
        return self.retriever.retrieve(_bm25_tokens(queries), k=k, show_progress=False)


class DenseIndex:
    """Normalized bi-encoder embeddings of a list of texts; scores are cosine similarities."""

    def __init__(self, texts: Sequence[str], model_name: str = DEFAULT_DENSE_MODEL) -> None:
        from rerankit.errors import require

        SentenceTransformer = require("sentence_transformers", "train").SentenceTransformer
        self.model = SentenceTransformer(resolve_model_path(model_name))
        self.embeddings = self.model.encode(
            list(texts), normalize_embeddings=True, show_progress_bar=True, batch_size=64
        )

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """Cosine similarity of every text to every query, shape (queries, texts)."""
        if not queries:
            return np.zeros((0, len(self.embeddings)), dtype=np.float32)
        query_emb = self.model.encode(list(queries), normalize_embeddings=True, show_progress_bar=False)
        return query_emb @ self.embeddings.T


# Score-matrix cells held at once per component: 16M float32 cells = 64 MiB.
BLOCK_CELLS = 1 << 24
METHODS = ("bm25", "dense", "hybrid")


@dataclass
class ScoredBlock:
    start: int  # index of the block's first query
    components: dict[str, np.ndarray]  # "bm25" and/or "dense": (block, corpus) scores
    ranking: np.ndarray  # what the first stage ranks by: one component, or their RRF


class CorpusScorer:
    """A first stage over a corpus indexed once: ``bm25``, ``dense`` or ``hybrid`` (the
    reciprocal-rank fusion of both over the whole corpus), scoring a block of queries at a time."""

    def __init__(self, texts: Sequence[str], method: str, dense_model: str = DEFAULT_DENSE_MODEL) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown first stage {method!r}; expected one of {', '.join(METHODS)}")
        self.size = len(texts)
        self.indexes: dict[str, BM25Index | DenseIndex] = {}
        if method in ("bm25", "hybrid"):
            self.indexes["bm25"] = BM25Index(texts)
        if method in ("dense", "hybrid"):
            self.indexes["dense"] = DenseIndex(texts, dense_model)

    def block_size(self, wanted: int | None = None) -> int:
        """``wanted``, or as many queries as keep a block within ``BLOCK_CELLS`` per component."""
        return wanted or max(1, BLOCK_CELLS // max(1, self.size))

    def blocks(self, queries: Sequence[str], block_size: int | None = None) -> Iterator[ScoredBlock]:
        size = self.block_size(block_size)
        for start in range(0, len(queries), size):
            block = list(queries[start : start + size])
            components = {name: index.scores(block) for name, index in self.indexes.items()}
            ranking = (
                rrf(list(components.values())) if len(components) > 1 else next(iter(components.values()))
            )
            yield ScoredBlock(start, components, ranking)


def bm25_candidate_scores(
    queries: Sequence[str], candidates: Sequence[Sequence[tuple[str, str]]]
) -> list[np.ndarray]:
    """BM25 score of each query's own candidates ``[(doc_id, text), ...]``.

    The index holds every distinct candidate document of all queries, so IDF reflects the
    whole candidate pool rather than one query's short list.
    """
    position: dict[str, int] = {}
    texts: list[str] = []
    for docs in candidates:
        for doc_id, text in docs:
            if doc_id not in position:
                position[doc_id] = len(texts)
                texts.append(text)
    scores = BM25Index(texts).scores(queries)
    return [
        np.asarray([row[position[d]] for d, _ in docs], dtype=np.float32)
        for row, docs in zip(scores, candidates)
    ]
