"""`rerankit serve` as a real process on a loopback port: HTTP end to end, a bounded load test,
and a small request answered promptly while a huge windowed one runs."""

import concurrent.futures
import contextlib
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from conftest import free_port, metric_value

from rerankit import Reranker

pytestmark = pytest.mark.smoke


def test_real_process_answers_cohere_requests(rerankit_server, tiny_bert_run):
    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    docs = ["zinc quartz", "apple story", "the river"]
    headers = {"Authorization": "Bearer k3y"}
    response = httpx.post(
        f"{rerankit_server}/v2/rerank",
        headers=headers,
        timeout=30,
        json={"model": "rerankit", "query": "tell me about apple", "documents": docs},
    )
    assert response.status_code == 200
    want = reranker.score([("tell me about apple", d) for d in docs])
    got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    assert got == pytest.approx(dict(enumerate(want)), abs=1e-5)
    assert (
        httpx.post(f"{rerankit_server}/v2/rerank", json={"query": "q", "documents": ["d"]}).status_code == 401
    )


def test_bounded_concurrent_load_loses_nothing_and_answers_each_its_own(rerankit_server, tiny_bert_run):
    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    words = ["apple", "zinc", "river", "quartz", "castle", "oxide", "piano", "tiger"]
    requests = [
        (f"tell me about {words[i % 8]}", [f"{words[(i + j) % 8]} story {j} of {i}" for j in range(6)])
        for i in range(48)
    ]
    headers = {"Authorization": "Bearer k3y"}

    def send(item):
        query, docs = item
        r = httpx.post(
            f"{rerankit_server}/v2/rerank",
            headers=headers,
            timeout=60,
            json={"query": query, "documents": docs},
        )
        return r.status_code, {x["index"]: x["relevance_score"] for x in r.json()["results"]}

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, requests))
    assert time.monotonic() - start < 120
    assert [status for status, _ in answers] == [200] * len(requests)
    for (query, docs), (_, got) in zip(requests, answers):
        want = reranker.score([(query, d) for d in docs])
        assert got == pytest.approx(dict(enumerate(want)), abs=1e-5)
    # every request is counted by the server (merging itself is timing-dependent here; the
    # worker tests show it deterministically)
    metrics = httpx.get(f"{rerankit_server}/metrics", headers=headers).text
    ok = metric_value(metrics, "rerankit_requests_total", path="/v2/rerank", status_code="200")
    assert ok >= len(requests)


def test_the_cohere_sdk_works_unchanged_with_a_base_url(rerankit_server, tiny_bert_run):
    cohere = pytest.importorskip("cohere")
    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    docs = ["zinc quartz oxide", "apple story with apple", "the river", "quartz zinc"]
    want = np.array(reranker.score([("tell me about apple", d) for d in docs]))
    v2 = cohere.ClientV2(api_key="k3y", base_url=rerankit_server)
    response = v2.rerank(model="rerankit", query="tell me about apple", documents=docs, top_n=2)
    assert [r.index for r in response.results] == list(np.argsort(-want, kind="stable")[:2])
    assert response.results[0].relevance_score == pytest.approx(want.max(), abs=1e-5)
    v1 = cohere.Client(api_key="k3y", base_url=rerankit_server)
    response = v1.rerank(model="rerankit", query="tell me about apple", documents=docs, return_documents=True)
    assert [r.index for r in response.results] == list(np.argsort(-want, kind="stable"))
    assert response.results[0].document.text == docs[response.results[0].index]


def test_concurrent_truncation_and_bad_queries_change_no_other_score(rerankit_server, tiny_bert_run):
    """Requests that truncate documents (the request-side tokenizer), plain ones (the worker's),
    and over-long queries at once: every good answer equals its solo in-process score, every
    bad one is a 400 about its own query."""
    from rerankit.server.text_prep import RequestTokenizer

    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    cutter = RequestTokenizer(reranker.tokenizer, reranker.max_length)
    words = ["apple", "zinc", "river", "quartz", "castle", "oxide", "piano", "tiger"]
    long_doc = " ".join(words * 12)  # far past max_length: truncated in the worker
    requests = []
    for i in range(36):
        docs = [f"{words[(i + j) % 8]} story {j} " * (1 + j % 3) for j in range(5)] + [long_doc]
        body = {"query": f"tell me about {words[i % 8]}", "documents": docs}
        if i % 3 == 1:
            body["max_tokens_per_doc"] = 3 + i % 5
        if i % 6 == 5:
            body["query"] = "apple " * 60 + str(i)  # no room left for the document
        requests.append(body)

    def send(body):
        response = httpx.post(
            f"{rerankit_server}/v2/rerank",
            json=body,
            headers={"Authorization": "Bearer k3y"},
            timeout=120,
        )
        return response.status_code, response.json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(send, requests))
    for body, (status, answer) in zip(requests, answers):
        if body["query"].startswith("apple apple"):
            assert status == 400 and answer["detail"].startswith("query: query of")
            continue
        assert status == 200, answer
        docs = body["documents"]
        if "max_tokens_per_doc" in body:
            docs = cutter.truncate(docs, body["max_tokens_per_doc"])
        want = reranker.score([(body["query"], d) for d in docs])
        got = {r["index"]: r["relevance_score"] for r in answer["results"]}
        assert got == pytest.approx(dict(enumerate(want)), abs=1e-5)


def test_slow_clients_are_disconnected(rerankit_server):
    """Connections that never finish their headers (or body) are closed after the request read
    timeout (2 s here), and the server keeps answering others meanwhile."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(rerankit_server)
    slow = []
    for i in range(40):
        sock = socket.create_connection((url.hostname, url.port), timeout=10)
        if i % 2:
            sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers unfinished
        else:
            sock.sendall(  # body unfinished
                b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n"
                b"Content-Type: application/json\r\nContent-Length: 999\r\n\r\n{"
            )
        slow.append(sock)
    assert httpx.get(f"{rerankit_server}/ping", timeout=5).status_code == 200
    start = time.monotonic()
    for sock in slow:
        while sock.recv(4096):  # whatever the server says, it then closes the connection
            pass
        sock.close()
    assert time.monotonic() - start < 8


@contextlib.contextmanager
def serving(model_dir, *options: str):
    """`rerankit serve` on ``model_dir`` with ``options`` on a free loopback port: its base URL
    once healthy."""
    port = free_port()
    command = [sys.executable, "-m", "rerankit", "serve", "--model", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
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


def test_a_small_request_is_not_starved_by_a_huge_windowed_one(tiny_bert_run):
    """Long documents scored by windows, in rounds of at most 16 pairs: while a request of
    about three thousand windows is scored, a 1-document request sent meanwhile is answered
    within a few rounds, long before the large one; both get the scores they get alone."""
    words = ["apple", "zinc", "river", "quartz", "castle", "oxide", "piano", "tiger"]
    big_docs = [f"{i} " + " ".join(words[(i + j) % 8] for j in range(120)) for i in range(400)]
    query = "tell me about apple"
    options = ["--dtype", "float32", "--long-documents", "windows", "--max-pairs-per-round", "16"]
    with serving(tiny_bert_run[0].output_dir, *options) as base:

        def post(docs):
            response = httpx.post(f"{base}/v2/rerank", json={"query": query, "documents": docs}, timeout=120)
            return response, time.monotonic()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            big = pool.submit(post, big_docs)
            # the large request is admitted and being scored
            while metric_value(httpx.get(f"{base}/metrics").text, "rerankit_queue_pairs") == 0:
                assert not big.done(), "the large request finished before it was seen in the queue"
                time.sleep(0.01)
            sent = time.monotonic()
            small, small_done = post(["an apple story"])
            big_answer, big_done = big.result()
    assert small.status_code == 200 and big_answer.status_code == 200, (small.text, big_answer.text[:300])
    small_latency, big_left = small_done - sent, big_done - sent
    assert small_latency < 30 and small_latency * 4 < big_left, (small_latency, big_left)
    windowed = Reranker.load(
        tiny_bert_run[0].output_dir, device="cpu", dtype="float32", long_documents={"mode": "windows"}
    )
    sample = list(range(0, len(big_docs), 7))  # documents of many different chunks
    want, windows = windowed.window_logits(
        [query] * (len(sample) + 1), [big_docs[i] for i in sample] + ["an apple story"]
    )
    want = windowed.probabilities(want)
    got = {r["index"]: r["relevance_score"] for r in big_answer.json()["results"]}
    assert sorted(got) == list(range(len(big_docs)))
    assert [got[i] for i in sample] == pytest.approx(want[:-1].tolist(), abs=1e-5)
    assert small.json()["results"][0]["relevance_score"] == pytest.approx(want[-1], abs=1e-5)
    # the large documents are alike in length: as many windows each
    assert big_answer.json()["meta"]["windows_scored"] == windows[0] * len(big_docs) > 3000
