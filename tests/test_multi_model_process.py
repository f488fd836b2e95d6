"""`rerankit serve` holding two run folders as ``a`` and ``b``, as a real process: the Cohere SDK
gets each model's own scores, unknown names a 404, ``/v1/models`` both, and ``b`` reloads from
its changed folder while clients keep sending, without one failed request."""

import concurrent.futures
import contextlib
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from conftest import free_port, reweighted_run

from rerankit import Reranker

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc quartz oxide", "apple story with apple", "the river", "quartz zinc", "an apple"]
HEADERS = {"Authorization": "Bearer k3y"}


@contextlib.contextmanager
def serving(*options: str):
    """`rerankit serve` with ``options`` on a free loopback port: its base URL once healthy."""
    port = free_port()
    command = [sys.executable, "-m", "rerankit", "serve", "--port", str(port), "--api-key", "k3y", *options]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "server did not become healthy"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def scores(path) -> list[float]:
    reranker = Reranker.load(path, device="cpu", dtype="float32")
    return reranker.score([(QUERY, d) for d in DOCS])


def by_index(results) -> list[float]:
    return [score for _, score in sorted((r.index, r.relevance_score) for r in results)]


@pytest.fixture(scope="module")
def two_model_server(tiny_bert_run, tmp_path_factory):
    """`rerankit serve --model a=... --model b=...` on two runs of the tiny base that score
    differently: (base URL, folder a, folder b, a's scores, b's scores)."""
    folder = tmp_path_factory.mktemp("served-runs")
    source = tiny_bert_run[0].output_dir
    a = reweighted_run(source, folder / "a", 1.0)
    b = reweighted_run(source, folder / "b", -3.0)
    with serving("--model", f"a={a}", "--model", f"b={b}", "--dtype", "float32") as base:
        yield base, a, b, scores(a), scores(b)


def test_the_cohere_sdk_gets_each_models_own_scores(two_model_server):
    cohere = pytest.importorskip("cohere")
    base, _, _, want_a, want_b = two_model_server
    client = cohere.ClientV2(api_key="k3y", base_url=base)
    got_a = by_index(client.rerank(model="a", query=QUERY, documents=DOCS).results)
    got_b = by_index(client.rerank(model="b", query=QUERY, documents=DOCS).results)
    assert got_a == pytest.approx(want_a, abs=1e-5) and got_b == pytest.approx(want_b, abs=1e-5)
    assert got_a != pytest.approx(got_b, abs=1e-3)
    v1 = cohere.Client(api_key="k3y", base_url=base)
    assert by_index(v1.rerank(model="b", query=QUERY, documents=DOCS).results) == pytest.approx(
        want_b, abs=1e-5
    )
    unknown = httpx.post(
        f"{base}/v2/rerank", headers=HEADERS, json={"model": "c", "query": QUERY, "documents": DOCS}
    )
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "model 'c' is not served here; served models: a, b"
    listing = httpx.get(f"{base}/v1/models", headers=HEADERS).json()
    assert [m["id"] for m in listing["data"]] == ["a", "b"]


def test_the_adapters_remote_backend_names_the_model(two_model_server):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankit.errors import RerankitError
    from rerankit.integrations.langchain import RerankitCompressor
    from rerankit.integrations.llamaindex import RerankitRerank

    base, _, _, want_a, want_b = two_model_server
    docs = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)]
    for name, want in (("a", want_a), ("b", want_b), (None, want_a)):  # none named: the first
        compressor = RerankitCompressor(base_url=base, api_key="k3y", model=name, top_n=None)
        ranked_docs = compressor.compress_documents(docs, QUERY)
        got = {d.metadata["i"]: d.metadata["relevance_score"] for d in ranked_docs}
        assert got == pytest.approx(dict(enumerate(want)), abs=1e-5)
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(DOCS)]
    ranked = RerankitRerank(base_url=base, api_key="k3y", model="b", top_n=5).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert {int(n.node.node_id): n.score for n in ranked} == pytest.approx(dict(enumerate(want_b)), abs=1e-5)
    unknown = RerankitCompressor(base_url=base, api_key="k3y", model="c")
    served = "model 'c' is not served here; served models: a, b"
    with pytest.raises(RerankitError, match=f"answered 404: {served}"):
        unknown.compress_documents(docs, QUERY)


def test_b_reloads_from_its_changed_folder_while_clients_keep_sending(two_model_server, tiny_bert_run):
    cohere = pytest.importorskip("cohere")
    base, _, b, want_a, want_b = two_model_server
    source = tiny_bert_run[0].output_dir
    client = cohere.ClientV2(api_key="k3y", base_url=base)
    # b's folder now holds another run; 4 clients keep sending to a and b while b reloads
    reweighted_run(source, b, 2.0)
    want_new_b = scores(b)
    stop, answers, failures = threading.Event(), [], []

    def keep_sending(worker: int) -> None:
        with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http:
            while not stop.is_set():
                name, sent = "ab"[worker % 2], time.monotonic()
                response = http.post("/v2/rerank", json={"model": name, "query": QUERY, "documents": DOCS})
                if response.status_code != 200:
                    failures.append((response.status_code, response.text))
                    continue
                results = response.json()["results"]
                got = [s for _, s in sorted((r["index"], r["relevance_score"]) for r in results)]
                answers.append((name, sent, time.monotonic(), got))

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        senders = [pool.submit(keep_sending, i) for i in range(4)]
        time.sleep(1.0)
        started = time.monotonic()
        reload = httpx.post(f"{base}/v1/models/b/reload", headers=HEADERS, timeout=120)
        finished = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for sender in senders:
            sender.result()
    assert reload.status_code == 200, reload.text
    assert failures == []
    during = [got for name, _, answered, got in answers if started < answered < finished]
    assert during, "no request was answered while the reload ran"
    # every answer is one version's own scores: the old one's until the swap (requests in
    # flight then finish on it), the new one's for requests sent after the reload answered
    for name, sent, answered, got in answers:
        if name == "a":
            assert got == pytest.approx(want_a, abs=1e-5)
        elif answered < started:
            assert got == pytest.approx(want_b, abs=1e-5)
        elif sent > finished:
            assert got == pytest.approx(want_new_b, abs=1e-5)
        else:
            assert got in (pytest.approx(want_b, abs=1e-5), pytest.approx(want_new_b, abs=1e-5))
    after = by_index(client.rerank(model="b", query=QUERY, documents=DOCS).results)
    assert after == pytest.approx(want_new_b, abs=1e-5)
    assert reload.json()["id"] == "b" and reload.json()["status"] == "ready"
    assert httpx.post(f"{base}/v1/models/b/reload").status_code == 401  # behind the API key
