"""Several named models in one app: routing by name, /v1/models, per-model health and metrics,
reload, and the --models file."""

import threading
import time

import pytest

pytest.importorskip("litestar")

from conftest import metric_value, reweighted_run, wait_ready  # noqa: E402
from litestar.testing import TestClient  # noqa: E402

from rerankit import Reranker  # noqa: E402
from rerankit.errors import ConfigError  # noqa: E402
from rerankit.server import ServerSettings, create_app  # noqa: E402
from rerankit.server.model_specs import ModelSpec, parse_model_options, read_models_file  # noqa: E402

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc of the old quartz", "apple story with apple", "the river is old", "many people see the apple"]


@pytest.fixture(scope="module")
def two_runs(tiny_bert_run, tmp_path_factory):
    """Two run folders of the same base that score differently: (a, b)."""
    folder = tmp_path_factory.mktemp("two-runs")
    source = tiny_bert_run[0].output_dir
    return reweighted_run(source, folder / "a", 1.0), reweighted_run(source, folder / "b", -3.0)


def load(path):
    return Reranker.load(path, device="cpu", dtype="float32")


def scores_of(response) -> dict[int, float]:
    assert response.status_code == 200, response.text
    return {r["index"]: r["relevance_score"] for r in response.json()["results"]}


def want(path, docs=DOCS) -> dict[int, float]:
    return dict(enumerate(load(path).score([(QUERY, d) for d in docs])))


@pytest.fixture
def two_model_client(two_runs):
    a, b = two_runs
    specs = (ModelSpec(name="a", path=str(a)), ModelSpec(name="b", path=str(b)))
    settings = ServerSettings(models=specs, dtype="float32", api_key="k3y")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = "Bearer k3y"
        wait_ready(client, 60)
        yield client


def test_each_model_answers_with_its_own_scores(two_model_client, two_runs):
    a, b = two_runs
    client = two_model_client
    body = {"query": QUERY, "documents": DOCS}
    got_a = scores_of(client.post("/v2/rerank", json={**body, "model": "a"}))
    got_b = scores_of(client.post("/v1/rerank", json={**body, "model": "b"}))
    assert got_a == pytest.approx(want(a), abs=1e-5)
    assert got_b == pytest.approx(want(b), abs=1e-5)
    assert got_a != pytest.approx(got_b, abs=1e-3)  # the two really differ
    # no model named: the first; TEI's body picks by query parameter
    assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(got_a, abs=1e-6)
    tei = client.post("/rerank?model=b", json={"query": QUERY, "texts": DOCS})
    assert {i["index"]: i["score"] for i in tei.json()} == pytest.approx(got_b, abs=1e-6)
    tei_default = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert {i["index"]: i["score"] for i in tei_default.json()} == pytest.approx(got_a, abs=1e-6)
    cohere_on_rerank = client.post("/rerank", json={**body, "model": "b"})
    assert scores_of(cohere_on_rerank) == pytest.approx(got_b, abs=1e-6)
    assert cohere_on_rerank.json()["meta"]["model"] == "b"


def test_an_unknown_name_is_a_404_naming_the_served_models(two_model_client):
    for response in (
        two_model_client.post("/v2/rerank", json={"model": "c", "query": QUERY, "documents": DOCS}),
        two_model_client.post("/rerank?model=c", json={"query": QUERY, "texts": DOCS}),
        two_model_client.post("/v1/models/c/reload"),
    ):
        assert response.status_code == 404
        assert response.json()["detail"] == "model 'c' is not served here; served models: a, b"


def test_models_are_listed_in_the_openai_shape(two_model_client, two_runs):
    listing = two_model_client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["a", "b"]
    entry = listing["data"][0]
    assert entry["object"] == "model" and entry["status"] == "ready"
    assert entry["runtime"] == "torch" and entry["precision"] == "float32"
    assert entry["max_length"] == 48 and entry["base_model"].endswith("tiny-bert0")
    reranker = load(two_runs[0])
    assert entry["calibration"] is (reranker.calibration is not None) and entry["ensemble"] is False
    assert entry["neighbour_independent"] is True  # fp32 torch
    assert two_model_client.get("/v1/models", headers={"Authorization": "Bearer no"}).status_code == 401


def test_health_and_metrics_per_model(two_model_client):
    health = two_model_client.get("/health").json()
    assert health["models"] == {"a": {"status": "ready"}, "b": {"status": "ready"}}
    body = {"query": QUERY, "documents": DOCS, "model": "b"}
    before = metric_value(two_model_client.get("/metrics").text, "rerankit_model_requests_total", model="b")
    two_model_client.post("/v2/rerank", json=body)
    two_model_client.post("/v2/rerank", json={**body, "model": "nope"})
    text = two_model_client.get("/metrics").text
    assert metric_value(text, "rerankit_model_requests_total", model="b") == before + 1
    assert metric_value(text, "rerankit_model_ready", model="a") == 1
    assert metric_value(text, "rerankit_batch_pairs_count", model="b") >= 1
    assert 'model="nope"' not in text  # only served names label series


def test_one_model_that_does_not_load_fails_only_its_own_requests(two_runs, tmp_path):
    specs = (ModelSpec(name="a", path=str(two_runs[0])), ModelSpec(name="gone", path=str(tmp_path / "gone")))
    with TestClient(create_app(ServerSettings(models=specs, dtype="float32"))) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").json()["models"]["a"]["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["models"]["gone"]["status"] == "failed"
        assert "gone: no such folder" in health.json()["models"]["gone"]["detail"]
        ok = client.post("/v2/rerank", json={"model": "a", "query": QUERY, "documents": DOCS})
        assert scores_of(ok) == pytest.approx(want(two_runs[0]), abs=1e-5)
        down = client.post("/v2/rerank", json={"model": "gone", "query": QUERY, "documents": DOCS})
        assert down.status_code == 503 and "model not ready" in down.json()["detail"]


def test_a_bare_model_answers_to_any_name(make_client, fp32_reranker):
    client = make_client()
    for name in ("rerankit", "anything", None):
        response = client.post("/v2/rerank", json={"model": name, "query": QUERY, "documents": DOCS})
        assert response.status_code == 200
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["rerankit"]


def test_reload_swaps_in_the_folders_new_contents(two_runs, tmp_path):
    a, b = two_runs
    folder = reweighted_run(b, tmp_path / "served", 1.0)
    specs = (ModelSpec(name="m", path=str(folder)),)
    with TestClient(create_app(ServerSettings(models=specs, dtype="float32"))) as client:
        wait_ready(client, 60)
        body = {"model": "m", "query": QUERY, "documents": DOCS}
        assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(want(b), abs=1e-5)
        reweighted_run(a, folder, 1.0)  # the folder now holds run a
        old = client.app.state.models.get("m").current
        response = client.post("/v1/models/m/reload")
        assert response.status_code == 200 and response.json()["id"] == "m"
        deadline = time.monotonic() + 10
        while old.worker.alive:  # the replaced version's worker stops, nobody holds it
            assert time.monotonic() < deadline, "the old worker never stopped"
            time.sleep(0.02)
        assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(want(a), abs=1e-5)
        # a folder that no longer loads: 422 with the reason, the model in service stays
        (folder / "run.json").write_text("{not json")
        broken = client.post("/v1/models/m/reload")
        assert broken.status_code == 422
        assert broken.json()["detail"].startswith(
            "model 'm': reload failed, the previous version keeps serving"
        )
        assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(want(a), abs=1e-5)
        text = client.get("/metrics").text
        assert metric_value(text, "rerankit_model_reloads_total", model="m", outcome="ok") == 1
        assert metric_value(text, "rerankit_model_reloads_total", model="m", outcome="failed") == 1


def test_a_second_reload_while_one_runs_is_a_409(two_runs, monkeypatch):
    from rerankit.server import served_models

    started, release = threading.Event(), threading.Event()
    real = served_models.load_reranker

    def slow_load(settings, reranker=None):
        if reranker is None:  # the reload's load (the first load gets the reranker given)
            started.set()
            release.wait(30)
        return real(settings, reranker)

    monkeypatch.setattr(served_models, "load_reranker", slow_load)
    specs = (ModelSpec(name="m", path=str(two_runs[0])),)
    preloaded = {"m": load(two_runs[0])}
    with TestClient(create_app(ServerSettings(models=specs, dtype="float32"), rerankers=preloaded)) as client:
        wait_ready(client, 60)
        first = []
        thread = threading.Thread(target=lambda: first.append(client.post("/v1/models/m/reload")))
        thread.start()
        assert started.wait(30)
        second = client.post("/v1/models/m/reload")
        # the event loop is free while the first reload loads: requests are answered meanwhile
        body = {"model": "m", "query": QUERY, "documents": DOCS}
        assert client.post("/v2/rerank", json=body).status_code == 200
        release.set()
        thread.join(60)
    assert (
        second.status_code == 409
        and second.json()["detail"] == "model 'm' is already loading; retry when it is done"
    )
    assert first[0].status_code == 200


def test_model_options_and_the_models_file(tmp_path, monkeypatch):
    assert parse_model_options(["outputs/run1"]) is None  # a bare path: one model, any name
    (tmp_path / "run=2").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_model_options(["run=2"]) is None  # an existing path, even with "="
    assert [s.name for s in parse_model_options(["run=3"])] == ["run"]
    with pytest.raises(ConfigError, match="give either model .one model. or models .named models."):
        ServerSettings(model="x", models=(ModelSpec(name="a", path="y"),))
    with pytest.raises(
        ConfigError, match="ServerSettings.merge: expected auto, always or never, got 'sometimes'"
    ):
        ServerSettings(model="x", merge="sometimes")
    specs = parse_model_options(["a=outputs/run1", "b=org/model"])
    assert [(s.name, s.path) for s in specs] == [("a", "outputs/run1"), ("b", "org/model")]
    with pytest.raises(ConfigError, match="with several models each needs a name"):
        parse_model_options(["a=outputs/run1", "outputs/run2"])
    with pytest.raises(ConfigError, match="--model: the name 'a' is given twice"):
        parse_model_options(["a=x", "a=y"])
    good = tmp_path / "models.yaml"
    good.write_text("models:\n  - {name: a, path: runs/a}\n  - {name: b, path: runs/b, dtype: float32}\n")
    specs = read_models_file(good)
    assert [s.name for s in specs] == ["a", "b"] and specs[1].overrides() == {"dtype": "float32"}
    cases = {
        "models:\n  - {name: a}\n": r"models\.0\.path: Field required",
        "models:\n  - {name: 'a b', path: x}\n": r"models\.0\.name: String should match pattern",
        "models:\n  - {name: a, path: x, colour: red}\n": r"models\.0\.colour: Extra inputs are not",
        "models:\n  - {name: a, path: x}\n  - {name: a, path: y}\n": r"models: the name 'a' is given twice",
        "models: []\n": r"models: List should have at least 1 item",
        "- a\n": "expected a mapping with a 'models' list",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=f"^{bad}: {message}"):
            read_models_file(bad)


def test_serve_refuses_bad_model_lists_naming_the_file_field_or_model(tmp_path, two_runs):
    from click.testing import CliRunner

    from rerankit.cli import main

    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - {name: a, path: x, dtype: float32, colour: red}\n")
    result = CliRunner().invoke(main, ["serve", "--models", str(bad)])
    assert result.exit_code == 2
    assert f"error: {bad}: models.0.colour: Extra inputs are not permitted" in result.output
    result = CliRunner().invoke(
        main,
        ["serve", "--model", f"a={two_runs[0]}", "--model", f"b={tmp_path / 'gone'}", "--dtype", "float32"],
    )
    assert result.exit_code == 2 and "error: model b: " in result.output and "gone" in result.output
    result = CliRunner().invoke(main, ["serve", "--model", str(two_runs[0]), "--models", str(bad)])
    assert (
        result.exit_code == 2
        and "give --model (once, or NAME=PATH repeated) or --models FILE" in result.output
    )
