"""The HTTP service: every route, field and error through Litestar's TestClient."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("litestar")

from conftest import metric_value, wait_ready  # noqa: E402
from litestar.testing import TestClient  # noqa: E402

from rerankit.server import ServerSettings, create_app  # noqa: E402

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = [
    "zinc of the old quartz",
    "apple story with apple",
    "the river is old",
    "many people see the apple",
    "zinc quartz oxide",
]


@pytest.fixture
def reranker(fp32_reranker):
    return fp32_reranker


@pytest.fixture
def client(make_client):
    return make_client()


def expected(reranker, docs=DOCS):
    return np.array(reranker.score([(QUERY, d) for d in docs]))


def test_v2_rerank_ranks_like_the_reranker(client, reranker):
    response = client.post("/v2/rerank", json={"model": "x", "query": QUERY, "documents": DOCS})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] and body["meta"]["api_version"]["version"] == "2"
    results = body["results"]
    want = expected(reranker)
    assert [r["index"] for r in results] == list(np.argsort(-want, kind="stable"))
    for r in results:
        assert r["relevance_score"] == pytest.approx(want[r["index"]], abs=1e-6)
        assert "document" not in r


def test_v2_fields_nulls_objects_top_n_and_documents(client):
    body = {
        "model": None,
        "query": QUERY,
        "documents": [{"text": d} for d in DOCS],
        "top_n": None,
        "max_tokens_per_doc": None,
        "return_documents": None,
    }
    assert len(client.post("/v2/rerank", json=body).json()["results"]) == len(DOCS)
    body.update(top_n=2, return_documents=True)
    results = client.post("/v2/rerank", json=body).json()["results"]
    assert len(results) == 2 and results[0]["document"]["text"] == DOCS[results[0]["index"]]
    body.update(top_n=50)  # clamped to the list
    assert len(client.post("/v2/rerank", json=body).json()["results"]) == len(DOCS)
    mixed = {"query": QUERY, "documents": [DOCS[0], {"text": DOCS[1]}]}
    assert client.post("/v1/rerank", json=mixed).status_code == 200


def test_max_tokens_per_doc_truncates_documents(client, reranker):
    long_doc = "zinc quartz oxide " * 30 + "apple apple"
    body = {
        "query": QUERY,
        "documents": [long_doc, "apple"],
        "max_tokens_per_doc": 6,
        "return_documents": True,
    }
    results = client.post("/v2/rerank", json=body).json()["results"]
    truncated = "zinc quartz oxide zinc quartz oxide"
    by_index = {r["index"]: r for r in results}
    assert by_index[0]["document"]["text"] == long_doc  # the caller's text comes back
    assert by_index[0]["relevance_score"] == pytest.approx(reranker.score([(QUERY, truncated)])[0], abs=1e-6)


def test_rerank_takes_cohere_and_tei_bodies(client, reranker):
    cohere = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 1})
    assert cohere.status_code == 200 and len(cohere.json()["results"]) == 1
    tei = client.post(
        "/rerank",
        json={"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": None, "truncate": True},
    )
    assert tei.status_code == 200
    items = tei.json()
    want = expected(reranker)
    assert [i["index"] for i in items] == list(np.argsort(-want, kind="stable"))
    assert items[0]["text"] == DOCS[items[0]["index"]]
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    raw_want = reranker.score([(QUERY, d) for d in DOCS], raw=True)
    assert {i["index"]: i["score"] for i in raw} == pytest.approx(dict(enumerate(raw_want)), abs=1e-5)
    assert "text" not in raw[0]


@pytest.mark.parametrize(
    "path, body, status, key",
    [
        ("/v2/rerank", {"query": QUERY}, 400, "documents"),
        ("/v2/rerank", {"query": 3, "documents": DOCS}, 400, "query"),
        ("/v2/rerank", {"query": "  ", "documents": DOCS}, 400, "query"),
        ("/v2/rerank", {"query": QUERY, "documents": []}, 400, "documents"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 0}, 400, "top_n"),
        ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": "two"}, 400, "top_n"),
        ("/v2/rerank", {"query": QUERY, "documents": [1, 2]}, 400, "documents"),
        ("/rerank", {"query": QUERY, "texts": "not a list"}, 400, "texts"),
        ("/rerank", {"query": QUERY, "texts": []}, 400, "texts"),
        ("/rerank", {"documents": DOCS}, 400, "query"),
    ],
)
def test_bad_input_is_4xx_json_naming_the_field(client, path, body, status, key):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert key in error["detail"] or any(key in str(e.get("key", "")) for e in error.get("extra") or [])


def test_malformed_json_and_limits(make_client):
    client = make_client(max_documents=3, max_document_chars=50, max_body_bytes=2000)
    bad = client.post("/v2/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["status_code"] == 400
    many = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
    assert many.status_code == 400 and "at most 3 documents" in many.json()["detail"]
    long = client.post("/v2/rerank", json={"query": QUERY, "documents": ["a", "b" * 60]})
    assert long.status_code == 400 and "documents[1]" in long.json()["detail"]
    huge = client.post("/v2/rerank", json={"query": QUERY, "documents": ["x" * 3000]})
    assert huge.status_code == 413
    too_long_query = client.post("/v2/rerank", json={"query": "apple " * 200, "documents": ["a"]})
    assert too_long_query.status_code == 400 and "query" in too_long_query.json()["detail"]


def test_full_queue_answers_429_with_retry_after(reranker):
    """One request is being scored (held), one waits in the queue: a third that does not fit
    beside it gets 429; the held ones then finish."""
    release, armed = threading.Event(), threading.Event()

    class Held:
        def __getattr__(self, name):
            return getattr(reranker, name)

        def input_logits(self, queries, docs, **groups):
            if armed.is_set():  # the warm-up at start passes
                release.wait(30)
            return reranker.input_logits(queries, docs, **groups)

    held = Held()
    body = {"query": QUERY, "documents": DOCS[:3]}
    settings = ServerSettings(model="in-memory", max_queue_pairs=5, cross_batching=False)
    with TestClient(create_app(settings, reranker=held)) as client:
        wait_ready(client)
        armed.set()
        first = threading.Thread(target=client.post, args=("/v2/rerank",), kwargs={"json": body})
        second = threading.Thread(target=client.post, args=("/v2/rerank",), kwargs={"json": body})
        first.start()
        time.sleep(0.5)  # taken by the worker, held
        second.start()
        time.sleep(0.5)  # queued: 3 of 5 pairs
        response = client.post("/v2/rerank", json=body)
        release.set()
        first.join()
        second.join()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert "queue" in response.json()["detail"]


def test_api_key(make_client):
    client = make_client(api_key="s3cret")
    body = {"query": QUERY, "documents": DOCS}
    assert client.post("/v2/rerank", json=body).status_code == 401
    assert client.post("/rerank", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.post("/v2/rerank", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/ping").status_code == 200


def test_health_is_503_until_the_model_loads(tmp_path):
    settings = ServerSettings(model=str(tmp_path / "missing-model"))
    with TestClient(create_app(settings)) as client:
        assert client.get("/ping").status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = client.get("/health")
            assert response.status_code == 503
            if "missing-model: no such folder" in response.json()["detail"]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("load error never reported")
        rerank = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
        assert rerank.status_code == 503 and "model not ready" in rerank.json()["detail"]


def test_metrics_and_openapi(client):
    def count(status: str) -> float:  # HTTP counters are process-wide: compare differences
        return metric_value(
            client.get("/metrics").text,
            "rerankit_requests_total",
            path="/v2/rerank",
            status_code=status,
            method="POST",
        )

    ok, bad = count("200"), count("400")
    client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
    client.post("/v2/rerank", json={"query": QUERY, "documents": []})
    assert (count("200"), count("400")) == (ok + 1, bad + 1)
    text = client.get("/metrics").text
    assert "rerankit_batch_pairs_count" in text and "rerankit_queue_pairs" in text
    schema = client.get("/schema/openapi.json").json()
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/health"} <= set(schema["paths"])
