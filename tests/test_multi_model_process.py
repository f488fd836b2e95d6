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


def test_two_models_one_server_and_a_reload_under_load(tiny_bert_run, tmp_path):
    cohere = pytest.importorskip("cohere")
    source = tiny_bert_run[0].output_dir
    a = reweighted_run(source, tmp_path / "a", 1.0)
    b = reweighted_run(source, tmp_path / "b", -3.0)
    want_a, want_b = scores(a), scores(b)
    with serving("--model", f"a={a}", "--model", f"b={b}", "--dtype", "float32") as base:
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

        # b's folder now holds another run; 4 clients keep sending to a and b while b reloads
        reweighted_run(source, b, 2.0)
        want_new_b = scores(b)
        stop, answers, failures = threading.Event(), [], []

        def keep_sending(worker: int) -> None:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http:
                while not stop.is_set():
                    name, sent = "ab"[worker % 2], time.monotonic()
                    response = http.post(
                        "/v2/rerank", json={"model": name, "query": QUERY, "documents": DOCS}
                    )
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
