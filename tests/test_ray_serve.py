"""`rerankit serve --engine ray`: the same HTTP API as replicas on Ray Serve."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import free_port

from rerankit.cli import main
from rerankit.errors import ConfigError
from rerankit.server.ray_serve import REPLICA_HEADER, ReplicaOptions, with_replica_header

pytestmark = pytest.mark.timeout(300)

QUERY = "what is topic 3?"
DOCS = ["document about topic 3", "an unrelated note", "topic 3 and topic 4 together"]


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(min_replicas=1), "autoscaling needs both min_replicas and max_replicas"),
        (dict(min_replicas=3, max_replicas=2), "expected 0 <= min_replicas <= max_replicas, got 3 and 2"),
        (dict(replicas=0), "at least one replica is needed"),
        (
            dict(replicas=3, min_replicas=1, max_replicas=4),
            "a fixed number of replicas or an autoscaling range",
        ),
    ],
)
def test_replica_options_refuse_what_cannot_scale(options, message):
    with pytest.raises(ConfigError, match=message):
        ReplicaOptions(**options)


@pytest.mark.smoke
def test_replica_options_become_serve_deployment_options():
    assert ReplicaOptions(replicas=3).deployment_options(cluster_gpus=0) == {
        "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.0},
        "num_replicas": 3,
    }
    scaled = ReplicaOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=8).deployment_options(2)
    assert scaled == {
        "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 1.0},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    }


@pytest.mark.smoke
def test_cli_names_a_half_given_autoscaling_range(tiny_bert_dir):
    result = CliRunner().invoke(
        main, ["serve", "--model", str(tiny_bert_dir), "--engine", "ray", "--max-replicas", "3"]
    )
    assert result.exit_code == 2
    assert "error: autoscaling needs both min_replicas and max_replicas" in result.output


async def _ping(app) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
        return await client.get("/ping")


@pytest.mark.smoke
def test_every_response_names_its_replica(tiny_bert_dir):
    import asyncio

    from rerankit.server import ServerSettings, create_app

    app = with_replica_header(create_app(ServerSettings(model=str(tiny_bert_dir))), "r1")
    response = asyncio.run(_ping(app))
    assert response.status_code == 200 and response.headers[REPLICA_HEADER] == "r1"


@pytest.fixture(scope="module")
def two_replicas(tiny_bert_dir):
    """Two Ray Serve replicas of the tiny model on a local two-CPU Ray (API key "k3y")."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from rerankit.server import ServerSettings
    from rerankit.server.ray_serve import run_on_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    settings = ServerSettings(model=str(tiny_bert_dir), dtype="float32", api_key="k3y")
    try:
        run_on_ray(settings, ReplicaOptions(replicas=2), "127.0.0.1", port, blocking=False)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.smoke
def test_two_replicas_answer_the_cohere_sdk_with_identical_scores(two_replicas, tiny_bert_dir):
    cohere = pytest.importorskip("cohere")
    from rerankit import Reranker

    replicas: list[str] = []
    record = lambda response: replicas.append(response.headers[REPLICA_HEADER])
    http = httpx.Client(event_hooks={"response": [record]}, timeout=60)
    client = cohere.ClientV2(api_key="k3y", base_url=two_replicas, httpx_client=http)
    answers = []
    for _ in range(30):
        response = client.rerank(model="rerankit", query=QUERY, documents=DOCS)
        answers.append({r.index: r.relevance_score for r in response.results})
        if len(set(replicas)) == 2 and len(answers) >= 4:
            break
    assert len(set(replicas)) == 2, replicas
    expected = Reranker.load(tiny_bert_dir, device="cpu", dtype="float32").score([(QUERY, d) for d in DOCS])
    for answer in answers:
        np.testing.assert_allclose([answer[i] for i in range(len(DOCS))], expected, rtol=0, atol=1e-6)
    # the app's own checks hold behind Ray's proxy: a missing key, a bad body
    assert (
        httpx.post(f"{two_replicas}/v2/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 401
    )
    bad = httpx.post(
        f"{two_replicas}/v2/rerank", json={"query": QUERY}, headers={"Authorization": "Bearer k3y"}
    )
    assert bad.status_code == 400 and "documents" in bad.json()["detail"]


@pytest.mark.smoke
def test_a_stopped_replica_loses_no_later_request(two_replicas):
    """Kill one replica's actor: every request sent afterwards is answered (by the other, or
    by the replacement Serve starts)."""
    import ray

    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA::")
    ]
    ids = {name.rsplit("#", 1)[-1] for name in names}
    assert len(ids) == 2, names
    before = {_rerank(two_replicas).headers[REPLICA_HEADER] for _ in range(30)}
    assert before == ids  # the actors' names carry the ids the responses show
    victim = names[0].rsplit("#", 1)[-1]
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    answered = []
    for _ in range(20):
        response = _rerank(two_replicas)
        assert response.status_code == 200, response.text
        answered.append(response.headers[REPLICA_HEADER])
    assert victim not in answered


def _rerank(base: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v2/rerank",
        json={"query": QUERY, "documents": DOCS},
        headers={"Authorization": "Bearer k3y"},
        timeout=60,
    )
