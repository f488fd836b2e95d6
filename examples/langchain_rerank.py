"""LangChain: a dense first stage (the packaged MiniLM bi-encoder) reranked by rerankit, offline.

bash scripts/demo.sh                       # trains outputs/demo once
python examples/langchain_rerank.py [--model outputs/demo] [--base-url http://127.0.0.1:8080]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from langchain_core.embeddings import Embeddings
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from sentence_transformers import SentenceTransformer

from rerankit.integrations.langchain import RerankitCompressor
from rerankit.loading import resolve_model_path

HERE = Path(__file__).resolve().parent
QUERY = "Which NFL team represented the AFC at Super Bowl 50?"


class MiniLMEmbeddings(Embeddings):
    """The packaged all-MiniLM-L6-v2 as a LangChain embedding (no download)."""

    def __init__(self) -> None:
        self.model = SentenceTransformer(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))

    def embed_documents(self, texts):
        return self.model.encode(list(texts), normalize_embeddings=True).tolist()

    def embed_query(self, text):
        return self.embed_documents([text])[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(HERE.parent / "outputs/demo"))
    parser.add_argument("--base-url", default=None, help="Use a running `rerankit serve` instead.")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in (HERE / "data/sample_docs.jsonl").open()]
    store = InMemoryVectorStore(MiniLMEmbeddings())
    store.add_texts(texts)
    retriever = store.as_retriever(search_kwargs={"k": len(texts)})
    source = {"base_url": args.base_url, "api_key": args.api_key} if args.base_url else {"model": args.model}
    compressor = RerankitCompressor(top_n=3, **source)
    chain = {"documents": retriever, "query": RunnablePassthrough()} | compressor.as_runnable()

    print(f"query: {QUERY}\n\nfirst stage (MiniLM bi-encoder):")
    for i, doc in enumerate(retriever.invoke(QUERY)[:3], 1):
        print(f"  {i}. {doc.page_content[:90]}...")
    print("\nreranked by rerankit:")
    for i, doc in enumerate(chain.invoke(QUERY), 1):
        print(f"  {i}. {doc.metadata['relevance_score']:.3f}  {doc.page_content[:90]}...")


if __name__ == "__main__":
    main()
