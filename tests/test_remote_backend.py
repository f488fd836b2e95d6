"""The remote backend against scripted HTTP servers on loopback: retries, Retry-After, one
reused connection, and malformed replies turned into clear errors."""

import asyncio
import email.utils
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
    (the last one repeats); records the client ports it saw."""

    def __init__(self, answers):
        self.answers, self.calls, self.ports = list(answers), 0, []
        script = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def do_POST(self):
                self.rfile.read(int(self.headers["content-length"]))
                script.ports.append(self.client_address[1])
                status, headers, body = script.answers[min(script.calls, len(script.answers) - 1)]
                script.calls += 1
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


def backend(url, **kwargs):
    from rerankit.integrations.backend import RemoteBackend

    return RemoteBackend(url, **{"max_retries": 3, "backoff": 0.01, **kwargs})


def test_one_connection_is_reused_across_calls():
    with Script([(200, {}, GOOD)]) as server:
        remote = backend(server.url)
        for _ in range(3):
            assert remote.rank("q", ["a", "b"], None) == [(1, 0.9), (0, 0.1)]
        assert len(set(server.ports)) == 1


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
