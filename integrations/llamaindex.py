"""LlamaIndex: ``RerankitRerank``, a ``llama_index.core`` node postprocessor.

    from rerankit.integrations.llamaindex import RerankitRerank
    engine = index.as_query_engine(similarity_top_k=20,
                                   node_postprocessors=[RerankitRerank(model="outputs/run1", top_n=5)])

Sets ``NodeWithScore.score`` to the relevance score, sorts, keeps ``top_n``, optionally keeps
the retriever's score in ``metadata["retrieval_score"]`` of a copy of the node (the caller's
nodes are not changed), and emits LlamaIndex's ``ReRankStartEvent``/``ReRankEndEvent``.
Depends on ``llama-index-core`` only.
"""

from __future__ import annotations

from typing import Any

from rerankit.errors import require

require("llama_index.core", "llamaindex")

from llama_index.core.bridge.pydantic import Field, PrivateAttr  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

from rerankit.integrations.backend import (  # noqa: E402
    DEFAULT_DEADLINE,
    DEFAULT_MAX_REPLY_BYTES,
    backend_for,
)

dispatcher = get_dispatcher(__name__)


class RerankitRerank(BaseNodePostprocessor):
    """Reranks retrieved nodes with a rerankit model, in-process or over HTTP."""

    top_n: int = Field(default=3, description="Nodes kept after reranking.")
    model: str | None = Field(
        default=None,
        description="Run folder, export or HF id; with base_url, the served model's name.",
    )
    base_url: str | None = Field(default=None, description="A rerankit server instead.")
    api_key: str | None = Field(default=None)
    keep_retrieval_score: bool = Field(default=False)
    fuse_retrieval_score: bool = Field(
        default=False,
        description="Order by the reranker's fusion with each node's retrieval score (learned on "
        "the run's validation set, else RRF); the node's score stays the reranker's.",
    )
    instruction: str | None = Field(
        default=None,
        description="The task in words for a decoder reranker's prompt (Qwen3-Reranker's <Instruct>); "
        "None: the model's default. An encoder ignores it.",
    )
    timeout: float = Field(default=30.0, description="Seconds per network phase (connect, each read).")
    max_retries: int = Field(default=3)
    deadline: float = Field(
        default=DEFAULT_DEADLINE, description="Seconds for a whole remote call, retries included."
    )
    max_reply_bytes: int = Field(default=DEFAULT_MAX_REPLY_BYTES, description="A larger reply is refused.")
    dtype: str = Field(default="auto")
    _backend: Any = PrivateAttr()

    def __init__(self, reranker: Any = None, **data: Any) -> None:
        super().__init__(**data)
        self._backend = backend_for(self, reranker)

    @classmethod
    def class_name(cls) -> str:
        return "RerankitRerank"

    def _start(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[str]]:
        """Emit the rerank start event; return the query and the nodes' texts to score."""
        if query_bundle is None:
            raise ValueError("RerankitRerank needs the query: pass query_str or query_bundle")
        dispatcher.event(
            ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=self.top_n, model_name=self._backend.name)
        )
        return (query_bundle.query_str, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes])

    def _retrieval_scores(self, nodes: list[NodeWithScore]) -> list[float] | None:
        """The nodes' retrieval scores when fused with (``fuse_retrieval_score``)."""
        if not self.fuse_retrieval_score:
            return None
        missing = [i for i, n in enumerate(nodes) if n.score is None]
        if missing:
            raise ValueError(
                f"node {missing[0]} has no retrieval score to fuse with (fuse_retrieval_score=True)"
            )
        return [float(n.score) for n in nodes]

    def _finish(self, nodes: list[NodeWithScore], ranked) -> list[NodeWithScore]:
        """The ranked nodes with their new scores; emits the rerank end event."""
        out = []
        for index, score in ranked:
            node = nodes[index].node
            if self.keep_retrieval_score:  # on a copy: the caller's node stays as it was
                metadata = {**node.metadata, "retrieval_score": nodes[index].score}
                node = node.model_copy(update={"metadata": metadata})
            out.append(NodeWithScore(node=node, score=score))
        dispatcher.event(ReRankEndEvent(nodes=out))
        return out

    @dispatcher.span
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._start(nodes, query_bundle)
        return self._finish(
            nodes,
            self._backend.rank(query, texts, self.top_n, self._retrieval_scores(nodes), self.instruction),
        )

    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._start(nodes, query_bundle)
        ranked = await self._backend.arank(
            query, texts, self.top_n, self._retrieval_scores(nodes), self.instruction
        )
        return self._finish(nodes, ranked)
