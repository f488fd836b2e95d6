"""LlamaIndex: a vector index (the packaged MiniLM bi-encoder) with rerankit as node postprocessor, offline.

    bash scripts/demo.sh                       # trains outputs/demo once
    python examples/llamaindex_rerank.py [--model outputs/demo] [--base-url http://127.0.0.1:8080]

The LLM is LlamaIndex's MockLLM (no model download); what matters here are the source nodes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.llms import MockLLM
from sentence_transformers import SentenceTransformer

from rerankit.integrations.llamaindex import RerankitRerank
from rerankit.loading import resolve_model_path

HERE = Path(__file__).resolve().parent
QUERY = "Which NFL team represented the AFC at Super Bowl 50?"
_MINILM = None


def _minilm() -> SentenceTransformer:
    global _MINILM
    if _MINILM is None:
        _MINILM = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    return _MINILM


class MiniLMEmbedding(BaseEmbedding):
    """The packaged all-MiniLM-L6-v2 as a LlamaIndex embedding (no download)."""

    def _get_text_embedding(self, text: str):
        return _minilm().encode(text, normalize_embeddings=True).tolist()

    def _get_query_embedding(self, query: str):
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str):
        return self._get_text_embedding(query)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(HERE.parent / "outputs/demo"))
    parser.add_argument("--base-url", default=None, help="Use a running `rerankit serve` instead.")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    docs = [Document(text=json.loads(line)["text"]) for line in (HERE / "data/sample_docs.jsonl").open()]
    index = VectorStoreIndex.from_documents(docs, embed_model=MiniLMEmbedding())
    source = {"base_url": args.base_url, "api_key": args.api_key} if args.base_url else {"model": args.model}
    engine = index.as_query_engine(
        similarity_top_k=len(docs), llm=MockLLM(), node_postprocessors=[RerankitRerank(top_n=3, **source)]
    )

    print(f"query: {QUERY}\n\nfirst stage (MiniLM bi-encoder):")
    for i, node in enumerate(index.as_retriever(similarity_top_k=3).retrieve(QUERY), 1):
        print(f"  {i}. {node.score:.3f}  {node.node.get_content()[:90]}...")
    print("\nreranked by rerankit:")
    for i, node in enumerate(engine.query(QUERY).source_nodes, 1):
        print(f"  {i}. {node.score:.3f}  {node.node.get_content()[:90]}...")


if __name__ == "__main__":
    main()
