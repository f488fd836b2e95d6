"""Retriever postprocessors for RAG frameworks, imported as ``rerankit.integrations.*``.

- ``rerankit.integrations.langchain.RerankitCompressor`` (``pip install "rerankit[langchain]"``)
- ``rerankit.integrations.llamaindex.RerankitRerank`` (``pip install "rerankit[llamaindex]"``)

Both rank in-process (a ``Reranker`` or a model path) or through a rerankit server
(``base_url``), with the same scores either way: ``sigmoid(logit)``, as ``/v2/rerank`` answers.
"""
