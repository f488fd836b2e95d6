"""Request and response bodies (msgspec Structs), in the Cohere v2 and TEI shapes.

Every optional field accepts JSON ``null``. Cohere's ``documents`` may be strings or
``{"text": ...}`` objects.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec


class DocumentObject(msgspec.Struct, forbid_unknown_fields=False):
    text: str


class RerankRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Cohere ``POST /v2/rerank`` body."""

    query: str
    documents: list[Union[str, DocumentObject]]
    model: Union[str, None] = None
    top_n: Union[int, None] = None
    max_tokens_per_doc: Union[int, None] = None
    return_documents: Union[bool, None] = None
    # Not Cohere's: raw logits instead of sigmoid relevance scores.
    raw_scores: Union[bool, None] = None


class TEIRerankRequest(msgspec.Struct, forbid_unknown_fields=False):
    """text-embeddings-inference ``POST /rerank`` body.

    ``truncate`` and ``truncation_direction`` are accepted for compatibility; rerankit always
    truncates the document (never the query) to the model's length.
    """

    query: str
    texts: list[str]
    raw_scores: Union[bool, None] = None
    return_text: Union[bool, None] = None
    truncate: Union[bool, None] = None
    truncation_direction: Union[str, None] = None


class ResultDocument(msgspec.Struct):
    text: str


class RerankResultItem(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: Union[ResultDocument, None] = None


class RerankResponse(msgspec.Struct):
    id: str
    results: list[RerankResultItem]
    meta: dict[str, Any]


class TEIResultItem(msgspec.Struct, omit_defaults=True):
    index: int
    score: float
    text: Union[str, None] = None
