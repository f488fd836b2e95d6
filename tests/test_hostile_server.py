"""Hostile but fair input to the HTTP service: every answer is a 4xx with a JSON reason (never
a 500 or a stack trace), one client's request never fails or changes another's, and what the
API key protects stays protected."""

import asyncio
import threading
import time

import numpy as np
import pytest

pytest.importorskip("litestar")


pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc of the old quartz", "apple story with apple", "the river is old"]


@pytest.fixture
def reranker(fp32_reranker):
    return fp32_reranker


def post_raw(client, path, content: bytes):
    return client.post(path, content=content, headers={"content-type": "application/json"})


def assert_json_4xx(response, status=400, mentions=""):
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert mentions in body["detail"]
    assert "Traceback" not in response.text


# --- never a 500 ---------------------------------------------------------------------------


def test_invalid_utf8_body_is_a_400(make_client):
    client = make_client()
    assert_json_4xx(post_raw(client, "/v2/rerank", b'{"query": "\xff\xfe", "documents": ["a"]}'))
    assert_json_4xx(post_raw(client, "/rerank", b'{"query": "\xff", "texts": ["a"]}'))


@pytest.mark.parametrize("path", ["/v2/rerank", "/rerank"])
def test_deeply_nested_json_is_a_400(make_client, path):
    client = make_client()
    nested = b'{"query": "q", "documents": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_json_4xx(post_raw(client, path, nested))


@pytest.mark.parametrize("value", [2**64, -(2**70), 0])
def test_absurd_max_tokens_per_doc_is_a_400_naming_the_field(make_client, value):
    body = {"query": QUERY, "documents": DOCS, "max_tokens_per_doc": value}
    assert_json_4xx(make_client().post("/v2/rerank", json=body), mentions="max_tokens_per_doc")


def test_a_huge_top_n_is_clamped(make_client):
    body = {"query": QUERY, "documents": DOCS, "top_n": 2**64}
    response = make_client().post("/v2/rerank", json=body)
    assert response.status_code == 200 and len(response.json()["results"]) == len(DOCS)


def test_head_health_answers(make_client):
    response = make_client().head("/health")
    assert response.status_code == 200 and response.content == b""


# --- limits that tell the truth --------------------------------------------------------------


def test_more_documents_than_the_queue_can_hold_is_413_not_429(make_client):
    client = make_client(max_queue_pairs=10, max_documents=100)
    response = client.post("/v2/rerank", json={"query": QUERY, "documents": ["apple"] * 11})
    assert_json_4xx(response, 413, mentions="at most 10")


@pytest.fixture(scope="module")
def windowed(tiny_bert_run):
    """The tiny run in fp32, scoring long documents by windows."""
    from rerankit import Reranker

    return Reranker.load(
        tiny_bert_run[0].output_dir, device="cpu", dtype="float32", long_documents={"mode": "windows"}
    )


def serve_in_process(reranker, **settings):
    from litestar.testing import TestClient

    from rerankit.server import ServerSettings, create_app

    return TestClient(create_app(ServerSettings(model="in-memory", **settings), reranker=reranker))


LONG_DOC = " ".join(["zinc quartz oxide river castle piano"] * 30)


def test_a_request_costing_more_windows_than_allowed_is_413_naming_the_count(windowed):
    from conftest import wait_ready

    docs = [LONG_DOC, "apple story", LONG_DOC + " apple"]
    windows = windowed.window_logits([QUERY] * 3, docs)[1]
    assert windows[1] == 1 and windows[0] > 1  # a short document is one window, a long one more
    with serve_in_process(windowed, max_request_pairs=int(windows.sum()) - 1) as client:
        wait_ready(client)
        response = client.post("/v2/rerank", json={"query": QUERY, "documents": docs})
        assert_json_4xx(
            response,
            413,
            f"documents: {windows.sum()} document windows to score, at most {windows.sum() - 1}",
        )
        fits = client.post("/rerank", json={"query": QUERY, "texts": docs[:2]})
        assert fits.status_code == 200
        meta = client.post("/v2/rerank", json={"query": QUERY, "documents": docs[:2]}).json()["meta"]
        assert meta["windows_scored"] == windows[:2].sum()


def test_a_request_limit_below_one_is_refused():
    from rerankit.errors import ConfigError
    from rerankit.server import ServerSettings

    with pytest.raises(ConfigError, match="max_request_pairs: must be a finite number >= 1, got 0"):
        ServerSettings(model="x", max_request_pairs=0)


def test_waiting_windows_fill_the_queue_and_get_429(windowed):
    """One long document is scored (held) and another waits: the queue holds its windows, so
    a third long document that does not fit beside them gets 429, though only one document
    waits."""
    from conftest import wait_ready

    holding, entered, release = threading.Event(), threading.Event(), threading.Event()

    class Held:
        def __getattr__(self, name):
            return getattr(windowed, name)

        def input_logits(self, queries, docs, **groups):
            if holding.is_set():  # not the warm-up
                entered.set()
                release.wait(5)
            return windowed.input_logits(queries, docs, **groups)

    body = {"query": QUERY, "documents": [LONG_DOC]}
    windows = int(windowed.window_logits([QUERY], [LONG_DOC])[1][0])
    answers = []
    with serve_in_process(Held(), max_queue_pairs=windows + windows // 2, cross_batching=False) as client:
        wait_ready(client)
        holding.set()

        def post():
            answers.append(client.post("/v2/rerank", json=body))

        first, second = threading.Thread(target=post), threading.Thread(target=post)
        first.start()
        assert entered.wait(10)  # the worker holds the first
        second.start()
        deadline = time.monotonic() + 10
        while client.app.state.models.first.current.worker.queued_pairs < windows:  # the second waits
            assert time.monotonic() < deadline, "the second request's windows never reached the queue"
            time.sleep(0.01)
        third = client.post("/v2/rerank", json=body)
        release.set()
        first.join()
        second.join()
    assert_json_4xx(third, 429, "queue is full")
    assert third.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200, 200]


def test_query_length_is_capped(make_client):
    client = make_client(max_query_chars=50)
    response = client.post("/v2/rerank", json={"query": "apple " * 20, "documents": DOCS})
    assert_json_4xx(response, mentions="query")


def test_empty_or_blank_documents_are_refused_by_index(make_client):
    response = make_client().post("/v2/rerank", json={"query": QUERY, "documents": ["a", " \n "]})
    assert_json_4xx(response, mentions="documents[1]")


# --- the API key ---------------------------------------------------------------------------


def test_api_key_protects_metrics_and_schema_and_says_how(make_client):
    client = make_client(api_key="s3cret")
    for path in ("/metrics", "/schema/openapi.json", "/schema"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/metrics", headers=ok).status_code == 200
    assert client.get("/schema/openapi.json", headers=ok).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/ping").status_code == 200


def test_made_up_paths_add_no_metric_series(make_client):
    client = make_client()
    before = len(client.get("/metrics").content)
    for i in range(100):
        assert client.get(f"/{'x' * 2000}{i}").status_code == 404
        assert client.post(f"/v2/rerank/{'y' * 2000}{i}", json={}).status_code in (404, 405)
    assert len(client.get("/metrics").content) < before + 5_000


# --- one client never affects another ---------------------------------------------------------


def test_an_over_long_query_fails_only_its_own_request(make_client, reranker):
    """Requests batched in one worker round: the bad one gets a 400 without the others' text,
    the good ones get their own scores."""
    client = make_client(batch_wait_ms=300)
    secret = "secret " * 100
    bodies = [{"query": secret + "apple", "documents": DOCS}] + [
        {"query": f"{QUERY} {i}", "documents": DOCS} for i in range(3)
    ]
    answers = [None] * len(bodies)

    def send(i):
        answers[i] = client.post("/v2/rerank", json=bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_json_4xx(answers[0], mentions="query")
    for body, answer in zip(bodies[1:], answers[1:]):
        assert answer.status_code == 200, answer.text
        assert "secret" not in answer.text
        want = reranker.score([(body["query"], d) for d in DOCS])
        got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        assert got == pytest.approx(dict(enumerate(want)), abs=1e-6)


def test_a_failing_round_rescores_the_other_jobs():
    """The worker: a job whose pairs make the scorer fail gets the error; the rest are
    rescored alone and get their scores."""
    from rerankit.server.worker import InferenceWorker

    def score(queries, docs):
        if any("boom" in q for q in queries):
            raise ValueError("cannot score")
        return np.array([float(len(d)) for d in docs])

    async def main():
        worker = InferenceWorker(score, batch_wait_ms=200)
        worker.start()
        try:
            jobs = [
                worker.score(["ok"], ["aa"]),
                worker.score(["boom"], ["b"]),
                worker.score(["ok"], ["cccc"]),
            ]
            return await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            worker.stop()

    good, bad, other = asyncio.run(main())
    assert good.tolist() == [2.0] and other.tolist() == [4.0]
    assert isinstance(bad, ValueError)


def test_concurrent_async_calls_on_one_in_process_reranker_score_like_solo(reranker):
    """LocalBackend.arank runs in threads: concurrent calls (long documents truncated by the
    shared tokenizer) each get exactly their solo scores."""
    from rerankit.integrations.backend import LocalBackend

    backend = LocalBackend(reranker)
    words = ["apple", "zinc", "river", "quartz", "castle", "oxide"]
    calls = [
        (f"tell me about {words[i % 6]}", [f"{w} story " * (1 + (i + j) % 40) for j, w in enumerate(words)])
        for i in range(24)
    ]
    solo = [dict(backend.rank(q, docs, None)) for q, docs in calls]

    async def together():
        return await asyncio.gather(*(backend.arank(q, docs, None) for q, docs in calls))

    for want, got in zip(solo, asyncio.run(together())):
        assert dict(got) == pytest.approx(want, abs=1e-6)


def test_cross_batching_is_on_by_default_only_in_fp32(tiny_bert_run, make_client):
    """bf16 scores move with batch neighbours, so by default a bf16 server never merges one
    client's pairs with another's; fp32 scores do not, so merging is safe there."""
    from rerankit import Reranker
    from rerankit.server import ServerSettings
    from rerankit.server.served_models import cross_batching as _cross_batching

    half = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="bfloat16")
    full = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    auto = ServerSettings(model="x")
    assert _cross_batching(auto, full) is True and _cross_batching(auto, half) is False
    assert _cross_batching(ServerSettings(model="x", cross_batching=True), half) is True
    assert make_client().app.state.models.first.current.worker.cross_batching is True  # the fp32 tiny model
