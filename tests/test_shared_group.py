"""Served models on one shared base (``--merge never``): requests for different adapters are
scored in one round's batches, each by its own adapter, and a reload stays on the shared base,
deleting the replaced adapter once the requests on it are done."""

import threading
import time

import pytest

pytest.importorskip("litestar")

from conftest import metric_value, pooler_dense_only, reweighted_run, wait_ready  # noqa: E402
from litestar.testing import TestClient  # noqa: E402

from rerankit import Reranker  # noqa: E402
from rerankit.server import ServerSettings, create_app  # noqa: E402
from rerankit.server.model_specs import ModelSpec  # noqa: E402

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc of the old quartz", "apple story with apple", "the river is old", "many people see the apple"]
OTHER_DOCS = ["an apple a day", "quartz and zinc", "old apple trees by the river"]


@pytest.fixture(scope="module")
def runs(tiny_bert_run, tmp_path_factory):
    """Two runs of the tiny base that score differently, as {name: folder}."""
    folder = tmp_path_factory.mktemp("group-runs")
    source = tiny_bert_run[0].output_dir
    return {"a": reweighted_run(source, folder / "a", 1.0), "b": reweighted_run(source, folder / "b", -3.0)}


def want(path, docs) -> dict[int, float]:
    return dict(
        enumerate(Reranker.load(path, device="cpu", dtype="float32").score([(QUERY, d) for d in docs]))
    )


def scores_of(response) -> dict[int, float]:
    assert response.status_code == 200, response.text
    return {r["index"]: r["relevance_score"] for r in response.json()["results"]}


class Gate:
    """Wraps a SharedBase's forward: records each call's adapter names, and holds the first
    call after ``arm()`` until ``release()`` (the worker busy with one round meanwhile)."""

    def __init__(self, shared) -> None:
        self.calls: list[list[str]] = []
        self.entered, self._open = threading.Event(), threading.Event()
        self._armed = False
        real = shared.forward

        def forward(inputs, adapter_names):
            self.calls.append(list(adapter_names))
            if self._armed:
                self._armed = False
                self.entered.set()
                assert self._open.wait(30), "the gate was never released"
            return real(inputs, adapter_names)

        shared.forward = forward

    def arm(self) -> None:
        self._armed = True

    def release(self) -> None:
        self._open.set()


def post_in_thread(client, model: str, docs: list[str], answers: dict, key: str) -> threading.Thread:
    body = {"model": model, "query": QUERY, "documents": docs}
    thread = threading.Thread(target=lambda: answers.__setitem__(key, client.post("/v2/rerank", json=body)))
    thread.start()
    return thread


def wait_for(condition, seconds: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("layout", ["pooler kept whole", "pooler dense kept whole"])
def test_requests_for_different_adapters_are_scored_in_one_round(runs, tmp_path, layout):
    served = runs
    if layout == "pooler dense kept whole":  # a head peft mixes: one pass for both adapters
        served = {name: pooler_dense_only(path, tmp_path / name) for name, path in runs.items()}
    specs = tuple(ModelSpec(name=name, path=str(path)) for name, path in served.items())
    settings = ServerSettings(models=specs, dtype="float32", device="cpu", merge="never")
    with TestClient(create_app(settings)) as client:
        wait_ready(client, 60)
        models = client.app.state.models
        shared = models.get("a").current.reranker.model.shared
        assert models.get("b").current.reranker.model.shared is shared
        assert shared.mixable is (layout == "pooler dense kept whole")
        adapter = {name: models.get(name).current.reranker.model.name for name in ("a", "b")}
        passes = []  # the adapter names each real forward pass of the peft model mixed
        hook = shared.model.register_forward_pre_hook(
            lambda module, args, kwargs: passes.append(kwargs.get("adapter_names")), with_kwargs=True
        )
        gate, answers = Gate(shared), {}
        gate.arm()  # the worker holds a's first round while a's and b's next requests queue
        threads = [post_in_thread(client, "a", DOCS, answers, "first")]
        assert gate.entered.wait(30)
        threads += [
            post_in_thread(client, "a", OTHER_DOCS, answers, "a"),
            post_in_thread(client, "b", DOCS, answers, "b"),
        ]
        wait_for(lambda: all(models.get(n).current.queued_pairs > 0 for n in "ab"), what="both queued")
        time.sleep(0.1)  # a job goes on the worker's queue just after it is counted
        gate.release()
        for thread in threads:
            thread.join(60)
        hook.remove()
        # the queued requests of a and b: one round, one padded batch holding both adapters' rows
        mixed = [sorted(names) for names in gate.calls if set(names) == set(adapter.values())]
        assert mixed == [sorted([adapter["a"]] * len(OTHER_DOCS) + [adapter["b"]] * len(DOCS))]
        assert models.get("a").current.worker is models.get("b").current.worker  # one scoring loop
        if shared.mixable:  # in one forward pass, each row through its own adapter
            assert any(names is not None and set(names) == set(adapter.values()) for names in passes)
        else:  # one pass per adapter within the round
            assert passes.count(None) == len(gate.calls) + 1
        assert scores_of(answers["first"]) == pytest.approx(want(served["a"], DOCS), abs=1e-5)
        assert scores_of(answers["a"]) == pytest.approx(want(served["a"], OTHER_DOCS), abs=1e-5)
        assert scores_of(answers["b"]) == pytest.approx(want(served["b"], DOCS), abs=1e-5)
        # each model's metrics count its own pairs and requests of the shared rounds
        text = client.get("/metrics").text
        assert metric_value(text, "rerankit_batch_pairs_sum", model="a") == len(DOCS) + len(OTHER_DOCS)
        assert metric_value(text, "rerankit_batch_pairs_sum", model="b") == len(DOCS)
        assert metric_value(text, "rerankit_batch_requests_count", model="b") == 1
        assert metric_value(text, "rerankit_batch_requests_sum", model="a") == 2


def test_a_reload_on_a_shared_base_loads_beside_and_deletes_the_old_adapter_when_done(
    runs, tiny_bert_run, tmp_path
):
    source = tiny_bert_run[0].output_dir
    folder_b = reweighted_run(runs["b"], tmp_path / "b", 1.0)  # a copy of b to rewrite
    specs = (ModelSpec(name="a", path=str(runs["a"])), ModelSpec(name="b", path=str(folder_b)))
    settings = ServerSettings(models=specs, dtype="float32", device="cpu", merge="never")
    with TestClient(create_app(settings)) as client:
        wait_ready(client, 60)
        models = client.app.state.models
        shared = models.get("a").current.reranker.model.shared
        old = models.get("b").current
        old_adapter, adapter_a = old.reranker.model.name, shared.adapters["a"]
        assert set(shared.model.peft_config) == {adapter_a, old_adapter}
        want_old = want(folder_b, DOCS)
        # a request on b's version in service is held in flight while b reloads
        gate, answers = Gate(shared), {}
        gate.arm()
        thread = post_in_thread(client, "b", DOCS, answers, "in flight")
        assert gate.entered.wait(30)
        reweighted_run(source, folder_b, 2.0)  # b's folder now holds another run of the base
        reload = client.post("/v1/models/b/reload")
        assert reload.status_code == 200, reload.text
        assert reload.json()["shared_base"] is True
        fresh = models.get("b").current
        assert fresh is not old and fresh.reranker.model.shared is shared  # one copy of the base
        new_adapter = fresh.reranker.model.name
        assert shared.adapters == {"a": adapter_a, "b": new_adapter} and new_adapter != old_adapter
        assert old_adapter in shared.model.peft_config  # the request in flight still scores with it
        gate.release()
        thread.join(60)
        assert scores_of(answers["in flight"]) == pytest.approx(want_old, abs=1e-5)
        wait_for(lambda: old_adapter not in shared.model.peft_config, 10, "the old adapter's deletion")
        assert set(shared.model.peft_config) == {adapter_a, new_adapter}
        body = {"model": "b", "query": QUERY, "documents": DOCS}
        want_new = want(folder_b, DOCS)
        assert want_new != pytest.approx(want_old, abs=1e-3)
        assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(want_new, abs=1e-5)
        assert scores_of(client.post("/v2/rerank", json={**body, "model": "a"})) == pytest.approx(
            want(runs["a"], DOCS), abs=1e-5
        )
        # adapter weights that do not load: 422 with the reason, nothing left of them, b serves on
        for weights in folder_b.rglob("adapter_model.safetensors"):
            weights.write_bytes(b"not safetensors")
        broken = client.post("/v1/models/b/reload")
        assert broken.status_code == 422
        detail = broken.json()["detail"]
        assert detail.startswith("model 'b': reload failed, the previous version keeps serving: ")
        assert "cannot load the adapter of" in detail
        assert set(shared.model.peft_config) == {adapter_a, new_adapter}
        assert models.get("b").current is fresh
        assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(want_new, abs=1e-5)


def test_rerankers_given_on_one_shared_base_share_one_worker(runs):
    """As ``rerankit serve`` gives them: loaded (and checked) before the app starts."""
    from rerankit.server.served_models import load_models

    specs = tuple(ModelSpec(name=name, path=str(path)) for name, path in runs.items())
    settings = ServerSettings(models=specs, dtype="float32", device="cpu", merge="never")
    with TestClient(create_app(settings, rerankers=load_models(settings))) as client:
        wait_ready(client, 60)
        models = client.app.state.models
        assert models.get("a").current.worker is models.get("b").current.worker
        for name, path in runs.items():
            body = {"model": name, "query": QUERY, "documents": DOCS}
            assert scores_of(client.post("/v2/rerank", json=body)) == pytest.approx(
                want(path, DOCS), abs=1e-5
            )
