"""The remote backend against scripted HTTP servers on loopback: retries, Retry-After, one
reused connection, malformed or lying replies turned into clear errors, the deadline of a
whole call and the cap on a reply's size."""

import asyncio
import contextlib
import email.utils
import gc
import http.server
import json
import threading
import time

import pytest

from rerankit.errors import RerankitError

pytestmark = pytest.mark.smoke

GOOD = {
    "id": "x",
    "meta": {},
    "results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.1}],
}


class Script:
    """A loopback server answering each POST with the next (status, headers, body) of a list
    (the last one repeats), or a function given the connection to write raw bytes to; records
    the client ports it saw."""

    def __init__(self, answers):
        self.answers, self.calls, self.ports = list(answers), 0, []
        script = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                script.ports.append(self.client_address[1])
                answer = script.answers[min(script.calls, len(script.answers) - 1)]
                script.calls += 1
                if callable(answer):
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # the client hung up
                        answer(self.wfile)
                    return
                status, headers, body = answer
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def backend(url, **kwargs):
    from rerankit.integrations.backend import RemoteBackend

    return RemoteBackend(url, **{"max_retries": 3, "backoff": 0.01, **kwargs})


def test_one_connection_is_reused_across_calls():
    with Script([(200, {}, GOOD)]) as server:
        remote = backend(server.url)
        for _ in range(3):
            assert remote.rank("q", ["a", "b"], None) == [(1, 0.9), (0, 0.1)]
        assert len(set(server.ports)) == 1


def test_close_or_collection_ends_the_thread_of_the_sync_calls():
    def new_loop_thread(remote):
        before = set(threading.enumerate())
        remote.rank("q", ["a", "b"], None)
        (thread,) = {t for t in threading.enumerate() if t.name == "rerankit-remote"} - before
        return thread

    with Script([(200, {}, GOOD)]) as server:
        remote = backend(server.url)
        thread = new_loop_thread(remote)
        remote.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
        remote.close()  # twice is fine
        thread = new_loop_thread(remote)
        del remote
        gc.collect()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_retry_after_is_capped():
    with Script([(429, {"Retry-After": "3600"}, {"detail": "busy"}), (200, {}, GOOD)]) as server:
        start = time.monotonic()
        assert backend(server.url, max_retry_after=0.2).rank("q", ["a", "b"], None)[0] == (1, 0.9)
        assert 0.15 < time.monotonic() - start < 5
        assert server.calls == 2


def test_retry_after_as_an_http_date_is_honoured():
    from rerankit.integrations.backend import retry_after_seconds

    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(date, now=now) == pytest.approx(30, abs=1.5)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    soon = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s away
    with Script([(503, {"Retry-After": soon}, {"detail": "loading"}), (200, {}, GOOD)]) as server:
        start = time.monotonic()
        backend(server.url, max_retry_after=5).rank("q", ["a", "b"], None)
        assert time.monotonic() - start > 0.5  # waited for the date, not the 0.01 s backoff


@pytest.mark.parametrize(
    "answer, reason",
    [
        ((200, {}, b"<html>not json</html>"), "without a valid rerank body"),
        ((200, {}, {"id": "x"}), "without a valid rerank body"),
        ((200, {}, {"results": [{"index": -1, "relevance_score": 0.5}]}), "index -1, outside"),
        ((200, {}, {"results": [{"index": 2, "relevance_score": 0.5}]}), "index 2, outside"),
        ((200, {}, {"results": [{"index": 0, "relevance_score": "high"}]}), "not a number"),
        ((401, {}, {"detail": "missing or wrong API key"}), "401: missing or wrong API key"),
    ],
)
def test_malformed_or_refused_replies_are_clear_errors(answer, reason):
    with Script([answer]) as server:
        with pytest.raises(RerankitError, match=reason):
            backend(server.url).rank("q", ["a", "b"], None)
        assert server.calls == 1  # a malformed 200 or a 4xx is not retried


def test_async_path_retries_and_validates_the_same_way():
    with Script([(502, {}, b"bad gateway"), (200, {}, GOOD)]) as server:
        remote = backend(server.url)
        assert asyncio.run(remote.arank("q", ["a", "b"], None)) == [(1, 0.9), (0, 0.1)]
        assert asyncio.run(remote.arank("q", ["a", "b"], None)) == [(1, 0.9), (0, 0.1)]
    bad_index = {"results": [{"index": 5, "relevance_score": 0.5}]}
    with Script([(200, {}, bad_index)]) as server, pytest.raises(RerankitError, match="index 5"):
        asyncio.run(backend(server.url).arank("q", ["a", "b"], None))


# --- a reply must be a ranking of the documents sent --------------------------------------


def raw_json(text: str) -> bytes:
    """A body as the server wrote it: NaN, Infinity and huge integers survive only unparsed."""
    return text.encode()


@pytest.mark.parametrize(
    "body, top_n, reason",
    [
        (
            {"results": [{"index": 0, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.8}]},
            None,
            "answered document 0 twice",
        ),
        (
            raw_json(
                '{"results": [{"index": 1, "relevance_score": NaN}, {"index": 0, "relevance_score": 1}]}'
            ),
            None,
            "relevance_score nan for document 1, not a finite number",
        ),
        (
            raw_json('{"results": [{"index": 1, "relevance_score": Infinity}]}'),
            1,
            "relevance_score inf for document 1, not a finite number",
        ),
        (
            raw_json('{"results": [{"index": 0, "relevance_score": -Infinity}]}'),
            1,
            "relevance_score -inf for document 0, not a finite number",
        ),
        (raw_json('{"results": [{"index": 0, "relevance_score": 1e400}]}'), 1, "relevance_score inf"),
        (
            raw_json('{"results": [{"index": 0, "relevance_score": 1' + "0" * 400 + "}]}"),
            1,
            r"relevance_score 1000000000000000000000000000000000000\.\.\. for document 0, not a finite",
        ),
        (
            {"results": [{"index": 1, "relevance_score": 0.9}]},
            None,
            r"answered 1 result where 2 were expected \(2 documents sent, top_n=None\)",
        ),
        (GOOD, 1, r"answered 2 results where 1 were expected \(2 documents sent, top_n=1\)"),
        ({"results": {"index": 0, "relevance_score": 0.9}}, None, "without a valid rerank body"),
    ],
    ids=[
        "duplicate",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "10**400",
        "a document missing",
        "more than top_n",
        "results not a list",
    ],
)
def test_a_reply_that_does_not_rank_each_document_once_with_a_finite_score_is_refused(body, top_n, reason):
    with Script([(200, {}, body)]) as server:
        remote = backend(server.url)
        with pytest.raises(RerankitError, match=reason):
            remote.rank("q", ["a", "b"], top_n)
        with pytest.raises(RerankitError, match=reason):
            asyncio.run(remote.arank("q", ["a", "b"], top_n))


def test_top_n_above_the_documents_sent_expects_all_of_them():
    with Script([(200, {}, GOOD)]) as server:
        assert backend(server.url).rank("q", ["a", "b"], 5) == [(1, 0.9), (0, 0.1)]


def test_langchain_refuses_duplicates_and_nan_instead_of_returning_them():
    from langchain_core.documents import Document

    from rerankit.integrations.langchain import RerankitCompressor

    docs = [Document(page_content=t) for t in ("a", "b", "c")]
    thrice = {"results": [{"index": 0, "relevance_score": 0.9}] * 3}
    with Script([(200, {}, thrice)]) as server, pytest.raises(RerankitError, match="document 0 twice"):
        RerankitCompressor(base_url=server.url, top_n=3).compress_documents(docs, "q")
    nan = raw_json('{"results": [{"index": 2, "relevance_score": NaN}]}')
    with Script([(200, {}, nan)]) as server:
        compressor = RerankitCompressor(base_url=server.url, top_n=1, score_threshold=0.5)
        with pytest.raises(RerankitError, match="relevance_score nan for document 2, not a finite number"):
            compressor.compress_documents(docs, "q")


# --- one deadline per call, one cap per reply ----------------------------------------------

OK_BODY = json.dumps(GOOD).encode()
OK_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(OK_BODY)


def drip(at_once: bytes, slowly: bytes, every: float = 0.1):
    """Writes ``at_once``, then ``slowly`` one byte at a time."""

    def send(wfile):
        wfile.write(at_once)
        for byte in slowly:
            wfile.write(bytes([byte]))
            wfile.flush()
            time.sleep(every)

    return send


@pytest.mark.parametrize(
    "answer", [drip(OK_HEAD, OK_BODY), drip(b"", OK_HEAD + OK_BODY)], ids=["body drips", "headers drip"]
)
def test_the_deadline_bounds_a_reply_that_drips(answer):
    """Each byte comes well within the read timeout, so only the deadline can end the call."""
    with Script([answer]) as server:
        remote = backend(server.url, timeout=2, deadline=1)
        for call in (
            lambda: remote.rank("q", ["a", "b"], None),
            lambda: asyncio.run(remote.arank("q", ["a", "b"], None)),
        ):
            start = time.monotonic()
            with pytest.raises(RerankitError, match="no complete answer within the 1 s deadline"):
                call()
            assert time.monotonic() - start < 1 + 2


def test_the_deadline_bounds_retries_and_their_waits():
    """A try that would start after the deadline is not made: the last answer is the error."""
    busy = (503, {"Retry-After": "1"}, {"detail": "loading"})
    with Script([busy]) as server:
        start = time.monotonic()
        with pytest.raises(RerankitError, match="answered 503 after 2 tries: loading"):
            backend(server.url, max_retries=10, deadline=1.5).rank("q", ["a", "b"], None)
        assert time.monotonic() - start < 1.5 + 2
        assert server.calls == 2


def endless(wfile):
    """A 200 without a length that never ends."""
    wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n")
    while True:
        wfile.write(b" " * 65536)


@pytest.mark.parametrize(
    "answer, reason",
    [
        (
            (200, {}, b" " * 5000),
            "announced a reply of 5000 bytes, over the max_reply_bytes limit of 1000 bytes",
        ),
        (endless, "sent a reply over the max_reply_bytes limit of 1000 bytes"),
    ],
    ids=["announced", "streamed"],
)
def test_a_reply_over_the_size_cap_is_refused(answer, reason):
    with Script([answer]) as server:
        remote = backend(server.url, max_reply_bytes=1000)
        with pytest.raises(RerankitError, match=reason):
            remote.rank("q", ["a", "b"], None)
        with pytest.raises(RerankitError, match=reason):
            asyncio.run(remote.arank("q", ["a", "b"], None))
        assert server.calls == 2  # refused, not retried


def test_llamaindex_takes_the_deadline_and_the_cap():
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankit.integrations.llamaindex import RerankitRerank

    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in ("a", "b")]
    with Script([drip(OK_HEAD, OK_BODY)]) as server:
        rerank = RerankitRerank(base_url=server.url, timeout=2, deadline=1, max_retries=0)
        with pytest.raises(RerankitError, match="within the 1 s deadline"):
            rerank.postprocess_nodes(nodes, query_str="q")
    with Script([(200, {}, GOOD)]) as server:
        rerank = RerankitRerank(base_url=server.url, max_reply_bytes=10)
        with pytest.raises(RerankitError, match="over the max_reply_bytes limit of 10 bytes"):
            rerank.postprocess_nodes(nodes, query_str="q")
