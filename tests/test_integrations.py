"""LangChain and LlamaIndex adapters with the real frameworks, in-process and against a real server.

The tiny toy model ranks documents without "noise" words (zinc, quartz, ...) above those with
them; the first stages here (fake embeddings) put the clean document lower.
"""

import asyncio
import http.server
import json
import threading

import pytest

from rerankit import Reranker
from rerankit.errors import RerankitError

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
CLEAN = "apple story with many people"
NOISY = [
    "zinc quartz oxide story",
    "the quartz zinc old",
    "argon boron apple zinc",
    "cobalt helium river quartz",
    "ion oxide zinc the",
]


@pytest.fixture(scope="module")
def reranker(tiny_bert_run):
    return Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")


# --- LangChain ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lc_retriever():
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_texts(NOISY + [CLEAN], metadatas=[{"n": i} for i in range(6)])
    return store.as_retriever(search_kwargs={"k": 6})


def test_langchain_compressor_puts_the_relevant_document_on_top(reranker, lc_retriever):
    from rerankit.integrations.langchain import RerankitCompressor

    first_stage = lc_retriever.invoke(QUERY)
    assert first_stage[0].page_content != CLEAN  # the first stage had it lower
    compressor = RerankitCompressor(reranker, top_n=3)
    ranked = compressor.compress_documents(first_stage, QUERY)
    assert len(ranked) == 3 and ranked[0].page_content == CLEAN
    scores = [d.metadata["relevance_score"] for d in ranked]
    assert scores == sorted(scores, reverse=True)
    assert ranked[0].metadata["n"] == 5  # metadata kept, in a copy
    assert all("relevance_score" not in d.metadata for d in first_stage)
    again = asyncio.run(compressor.acompress_documents(first_stage, QUERY))
    assert [d.page_content for d in again] == [d.page_content for d in ranked]
    strict = RerankitCompressor(reranker, top_n=None, score_threshold=scores[0] - 1e-9)
    assert [d.page_content for d in strict.compress_documents(first_stage, QUERY)] == [CLEAN]


def test_langchain_lcel_chain(reranker, lc_retriever):
    from langchain_core.runnables import RunnablePassthrough

    from rerankit.integrations.langchain import RerankitCompressor

    chain = {"documents": lc_retriever, "query": RunnablePassthrough()} | RerankitCompressor(
        reranker, top_n=1
    ).as_runnable()
    assert [d.page_content for d in chain.invoke(QUERY)] == [CLEAN]
    assert [d.page_content for d in asyncio.run(chain.ainvoke(QUERY))] == [CLEAN]


def test_langchain_remote_ranks_like_in_process(reranker, lc_retriever, rerankit_server):
    from rerankit.integrations.langchain import RerankitCompressor

    docs = lc_retriever.invoke(QUERY)
    local = RerankitCompressor(reranker, top_n=4).compress_documents(docs, QUERY)
    remote = RerankitCompressor(base_url=rerankit_server, api_key="k3y", top_n=4)
    for result in (
        remote.compress_documents(docs, QUERY),
        asyncio.run(remote.acompress_documents(docs, QUERY)),
    ):
        assert [d.page_content for d in result] == [d.page_content for d in local]
        assert [d.metadata["relevance_score"] for d in result] == pytest.approx(
            [d.metadata["relevance_score"] for d in local], abs=1e-5
        )
    with pytest.raises(RerankitError, match="401"):
        RerankitCompressor(base_url=rerankit_server, top_n=2).compress_documents(docs, QUERY)


def test_exactly_one_source_is_required(reranker):
    from rerankit.integrations.langchain import RerankitCompressor

    with pytest.raises(ValueError, match="exactly one of reranker, model or base_url"):
        RerankitCompressor()
    with pytest.raises(ValueError, match="exactly one"):
        RerankitCompressor(reranker, base_url="http://127.0.0.1:1")


# --- LlamaIndex --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def li_index():
    """A vector index whose (deterministic) fake embedding ranks noisy documents first."""
    from conftest import NOISE
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding

    class NoiseCountEmbedding(BaseEmbedding):
        # text -> [noise words, 1]; the query -> [1, 0]: more noise, more "similar"
        def _get_text_embedding(self, text):
            return [float(sum(w in NOISE for w in text.split())), 1.0]

        def _get_query_embedding(self, query):
            return [1.0, 0.0]

        async def _aget_query_embedding(self, query):
            return [1.0, 0.0]

    docs = [Document(text=t, metadata={"n": i}) for i, t in enumerate(NOISY + [CLEAN])]
    return VectorStoreIndex.from_documents(docs, embed_model=NoiseCountEmbedding())


def test_llamaindex_postprocessor_in_a_query_engine(reranker, li_index):
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.llms import MockLLM

    from rerankit.integrations.llamaindex import RerankitRerank

    events = []

    class Recorder(BaseEventHandler):
        def handle(self, event, **kwargs):
            events.append(event.class_name())

    get_dispatcher().add_event_handler(Recorder())
    retrieved = li_index.as_retriever(similarity_top_k=6).retrieve(QUERY)
    assert retrieved[-1].node.get_content() == CLEAN  # the first stage had it last
    postprocessor = RerankitRerank(reranker, top_n=2, keep_retrieval_score=True)
    engine = li_index.as_query_engine(similarity_top_k=6, node_postprocessors=[postprocessor], llm=MockLLM())
    response = engine.query(QUERY)
    nodes = response.source_nodes
    assert len(nodes) == 2 and nodes[0].node.get_content() == CLEAN
    assert nodes[0].score >= nodes[1].score
    assert "retrieval_score" in nodes[0].node.metadata
    assert "ReRankStartEvent" in events and "ReRankEndEvent" in events
    again = asyncio.run(postprocessor.apostprocess_nodes(retrieved, query_str=QUERY))
    assert [n.node.get_content() for n in again] == [n.node.get_content() for n in nodes]
    with pytest.raises(ValueError, match="needs the query"):
        postprocessor.postprocess_nodes(retrieved)


def test_llamaindex_keeps_the_retrieval_score_on_copies(reranker, li_index):
    """The caller's nodes keep their metadata; the returned ones carry the retriever's score."""
    import copy

    from rerankit.integrations.llamaindex import RerankitRerank

    retrieved = li_index.as_retriever(similarity_top_k=6).retrieve(QUERY)
    before = [copy.deepcopy(n.node.metadata) for n in retrieved]
    retrieval_scores = {n.node.node_id: n.score for n in retrieved}
    postprocessor = RerankitRerank(reranker, top_n=6, keep_retrieval_score=True)
    for ranked in (
        postprocessor.postprocess_nodes(retrieved, query_str=QUERY),
        asyncio.run(postprocessor.apostprocess_nodes(retrieved, query_str=QUERY)),
    ):
        assert [n.node.metadata for n in retrieved] == before
        assert all("retrieval_score" not in n.node.metadata for n in retrieved)
        assert {n.node.node_id: n.node.metadata["retrieval_score"] for n in ranked} == retrieval_scores
        assert ranked[0].node.get_content() == CLEAN and ranked[0].node.metadata["n"] == 5


def test_llamaindex_remote_ranks_like_in_process(reranker, li_index, rerankit_server):
    from rerankit.integrations.llamaindex import RerankitRerank

    retrieved = li_index.as_retriever(similarity_top_k=6).retrieve(QUERY)
    local = RerankitRerank(reranker, top_n=6).postprocess_nodes(retrieved, query_str=QUERY)
    remote = RerankitRerank(base_url=rerankit_server, api_key="k3y", top_n=6)
    result = remote.postprocess_nodes(retrieved, query_str=QUERY)
    assert [n.node.node_id for n in result] == [n.node.node_id for n in local]
    assert [n.score for n in result] == pytest.approx([n.score for n in local], abs=1e-5)


# --- retries -----------------------------------------------------------------------------


def test_remote_retries_429_then_succeeds():
    """A real HTTP server on loopback that answers 429 twice, then a Cohere-shaped result."""
    from rerankit.integrations.backend import RemoteBackend

    calls = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            calls.append(body)
            if len(calls) <= 2:
                self.send_response(429)
                self.send_header("Retry-After", "0")
                self.end_headers()
                return
            payload = json.dumps(
                {
                    "id": "x",
                    "meta": {},
                    "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        backend = RemoteBackend(f"http://127.0.0.1:{httpd.server_port}", max_retries=3, backoff=0.01)
        assert backend.rank("q", ["a", "b"], None) == [(1, 0.9), (0, 0.1)]
        assert len(calls) == 3 and calls[0]["documents"] == ["a", "b"]
        calls.clear()
        stingy = RemoteBackend(f"http://127.0.0.1:{httpd.server_port}", max_retries=1, backoff=0.01)
        with pytest.raises(RerankitError, match="429"):
            stingy.rank("q", ["a"], None)
    finally:
        httpd.shutdown()


def test_unreachable_server_is_a_clear_error():
    from conftest import free_port

    from rerankit.integrations.backend import RemoteBackend

    backend = RemoteBackend(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(RerankitError, match="unreachable after 2 tries"):
        backend.rank("q", ["a"], None)
