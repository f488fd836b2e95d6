"""LangChain: ``RerankitCompressor``, a ``langchain_core`` document compressor.

    from rerankit.integrations.langchain import RerankitCompressor
    compressor = RerankitCompressor(model="outputs/run1", top_n=5)              # in-process
    compressor = RerankitCompressor(base_url="http://127.0.0.1:8080", top_n=5)  # rerankit server
    compressor = RerankitCompressor(base_url="http://127.0.0.1:8080", model="legal")  # one of its models
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    chain = {"documents": base, "query": RunnablePassthrough()} | compressor.as_runnable()

Returns copies of the documents, best first, with ``metadata["relevance_score"]``; the
caller's documents are not changed. Depends on ``langchain-core`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerankit.errors import require

require("langchain_core", "langchain")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.runnables import Runnable, RunnableLambda  # noqa: E402
from pydantic import ConfigDict, PrivateAttr  # noqa: E402

from rerankit.integrations.backend import (  # noqa: E402
    DEFAULT_DEADLINE,
    DEFAULT_MAX_REPLY_BYTES,
    backend_for,
)


class RerankitCompressor(BaseDocumentCompressor):
    """Reranks retrieved documents with a rerankit model, in-process or over HTTP."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # Run folder, exported folder or HF id (in-process); with base_url, the name of the model
    # to use on a server that holds several.
    model: str | None = None
    base_url: str | None = None  # a rerankit server instead
    api_key: str | None = None
    top_n: int | None = 3  # None keeps every document
    score_threshold: float | None = None
    # Metadata key holding the retriever's score of each document: when set, the order is the
    # reranker's fusion with it (learned on the run's validation set, else RRF).
    first_stage_key: str | None = None
    # The task in words for a decoder reranker's prompt (Qwen3-Reranker's <Instruct>); None: the
    # model's default. An encoder ignores it.
    instruction: str | None = None
    timeout: float = 30.0  # seconds per network phase (connect, each read, ...)
    max_retries: int = 3
    deadline: float = DEFAULT_DEADLINE  # seconds for a whole remote call, retries included
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES  # a larger reply is refused
    dtype: str = "auto"
    _backend: Any = PrivateAttr()

    def __init__(self, reranker: Any = None, **data: Any) -> None:
        super().__init__(**data)
        self._backend = backend_for(self, reranker)

    def _select(self, documents: Sequence[Document], ranked) -> list[Document]:
        out = []
        for index, score in ranked:
            if self.score_threshold is not None and score < self.score_threshold:
                continue
            doc = documents[index]
            out.append(
                Document(
                    page_content=doc.page_content,
                    id=doc.id,
                    metadata={**doc.metadata, "relevance_score": score},
                )
            )
        return out

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        texts, first_stage = self._inputs(documents)
        return self._select(
            documents, self._backend.rank(query, texts, self.top_n, first_stage, self.instruction)
        )

    def _inputs(self, documents: Sequence[Document]) -> tuple[list[str], list[float] | None]:
        """The texts to score and, with ``first_stage_key``, each document's retriever score."""
        texts = [d.page_content for d in documents]
        if self.first_stage_key is None:
            return texts, None
        scores = []
        for i, doc in enumerate(documents):
            value = doc.metadata.get(self.first_stage_key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(
                    f"document {i}: metadata[{self.first_stage_key!r}] is {value!r}, not the "
                    "retriever's score (first_stage_key)"
                )
            scores.append(float(value))
        return texts, scores

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        texts, first_stage = self._inputs(documents)
        ranked = await self._backend.arank(query, texts, self.top_n, first_stage, self.instruction)
        return self._select(documents, ranked)

    def as_runnable(self) -> Runnable:
        """A Runnable taking ``{"documents": [...], "query": str}`` (sync and async)."""
        return RunnableLambda(
            lambda x: list(self.compress_documents(x["documents"], x["query"])),
            afunc=self._arun,
            name="RerankitCompressor",
        )

    async def _arun(self, x: dict) -> list[Document]:
        return list(await self.acompress_documents(x["documents"], x["query"]))
