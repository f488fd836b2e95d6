"""Request and response bodies (msgspec Structs), in the Cohere v2 and TEI shapes.

Every optional field accepts JSON ``null``. Cohere's ``documents`` may be strings or
``{"text": ...}`` objects.
"""

from __future__ import annotations

from typing import Any

import msgspec


class DocumentObject(msgspec.Struct, forbid_unknown_fields=False):
    text: str


class RerankRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Cohere ``POST /v2/rerank`` body."""

    query: str
    documents: list[str | DocumentObject]
    model: str | None = None
    top_n: int | None = None
    max_tokens_per_doc: int | None = None
    return_documents: bool | None = None
    # Not Cohere's: raw logits instead of sigmoid relevance scores.
    raw_scores: bool | None = None
    # Not Cohere's: the retriever's score of each document (higher is better). The order is then
    # the reranker's fusion with it (learned on the run's validation set, else RRF), and each
    # result carries ``fused_score``; ``relevance_score`` stays the reranker's.
    first_stage_scores: list[float] | None = None
    # Not Cohere's: the task in words for a decoder's prompt template (Qwen3-Reranker's
    # <Instruct>); null keeps the model's default. An encoder ignores it.
    instruction: str | None = None


class TEIRerankRequest(msgspec.Struct, forbid_unknown_fields=False):
    """text-embeddings-inference ``POST /rerank`` body.

    ``truncate`` and ``truncation_direction`` are accepted for compatibility; rerankit always
    truncates the document (never the query) to the model's length.
    """

    query: str
    texts: list[str]
    raw_scores: bool | None = None
    return_text: bool | None = None
    truncate: bool | None = None
    truncation_direction: str | None = None
    # Not TEI's: as in the Cohere body (rerankit's extensions).
    first_stage_scores: list[float] | None = None
    instruction: str | None = None


class ResultDocument(msgspec.Struct):
    text: str


class RerankResultItem(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: ResultDocument | None = None
    fused_score: float | None = None


class RerankResponse(msgspec.Struct):
    id: str
    results: list[RerankResultItem]
    meta: dict[str, Any]


class TEIResultItem(msgspec.Struct, omit_defaults=True):
    index: int
    score: float
    text: str | None = None
