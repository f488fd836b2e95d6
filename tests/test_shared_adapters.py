"""LoRA runs of one base served from one copy of it: each run scores as Reranker.load of its
folder, and a batch mixing adapters scores each row by its own."""

import json

import numpy as np
import pytest
from conftest import pooler_dense_only, reweighted_run

from rerankit import Reranker
from rerankit.errors import ModelLoadError
from rerankit.shared_adapters import SharedBase, adapter_base

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc of the old quartz", "apple story with apple", "the river is old", "many people see the apple"]


@pytest.fixture(scope="module")
def runs(tiny_bert_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter-runs")
    source = tiny_bert_run[0].output_dir
    return {"a": reweighted_run(source, folder / "a", 1.0), "b": reweighted_run(source, folder / "b", -3.0)}


@pytest.fixture(scope="module")
def shared(runs):
    return SharedBase.load(runs, device="cpu", dtype="float32")


def test_each_run_scores_as_its_own_merged_load(shared, runs):
    pairs = [(QUERY, d) for d in DOCS]
    views = {name: shared.reranker(name) for name in runs}
    for name, path in runs.items():
        merged = Reranker.load(path, device="cpu", dtype="float32")
        assert views[name].score(pairs) == pytest.approx(merged.score(pairs), abs=1e-5)
    assert views["a"].score(pairs) != pytest.approx(views["b"].score(pairs), abs=1e-3)
    # one copy of the base: both views hold the very same weights
    embedding = "word_embeddings.weight"
    pointers = {
        name: next(p.data_ptr() for n, p in view.model.named_parameters() if n.endswith(embedding))
        for name, view in views.items()
    }
    assert pointers["a"] == pointers["b"]


@pytest.mark.parametrize("layout", ["pooler kept whole", "pooler dense kept whole"])
def test_a_mixed_batch_scores_each_row_by_its_adapter(runs, tmp_path, layout):
    loaded = runs
    if layout == "pooler dense kept whole":
        loaded = {name: pooler_dense_only(path, tmp_path / name) for name, path in runs.items()}
    shared = SharedBase.load(loaded, device="cpu", dtype="float32")
    assert shared.mixable is (layout == "pooler dense kept whole")  # one pass, or one per adapter
    alone = {
        name: Reranker.load(path, device="cpu", dtype="float32").logits([QUERY] * len(DOCS), DOCS)
        for name, path in runs.items()
    }
    names = ["a", "b", "b", "a", "b", "a", "a", "b"]
    docs = DOCS + DOCS
    mixed = shared.score([QUERY] * len(docs), docs, names)
    want = np.array([alone[n][i % len(DOCS)] for i, n in enumerate(names)])
    assert mixed == pytest.approx(want, abs=1e-5)
    with pytest.raises(ValueError, match="adapters not loaded: c"):
        shared.score([QUERY], [DOCS[0]], ["c"])


def test_rerankers_of_one_base_score_together_each_with_its_own_settings(shared, runs):
    """``score_together``: one set of batches for both, each reranker's windows its own."""
    from rerankit.mixed_batches import score_together

    windows = {"mode": "windows", "window": 8, "stride": 2, "cut": "tokens", "aggregate": "mean"}
    a, b = shared.reranker("a"), shared.reranker("b", long_documents=windows)
    long_docs = [" ".join(DOCS * 3), DOCS[1]]
    calls = []
    real = shared.forward
    shared.forward = lambda inputs, names: calls.append(list(names)) or real(inputs, names)
    try:
        together = score_together([(a, [QUERY] * len(DOCS), DOCS, None), (b, [QUERY] * 2, long_docs, None)])
    finally:
        del shared.forward
    assert len(calls) == 1 and set(calls[0]) == {shared.adapters["a"], shared.adapters["b"]}
    for (logits, counts), (reranker, docs) in zip(together, [(a, DOCS), (b, long_docs)]):
        alone_logits, alone_counts = reranker.input_logits([QUERY] * len(docs), docs)
        assert logits == pytest.approx(alone_logits, abs=1e-5)
        assert counts.tolist() == alone_counts.tolist()
    assert together[1][1][0] > 1  # the long document was read in several windows
    with pytest.raises(ValueError, match="must all score through one SharedBase"):
        score_together(
            [
                (a, [QUERY], [DOCS[0]], None),
                (Reranker.load(runs["a"], device="cpu", dtype="float32"), [QUERY], [DOCS[0]], None),
            ]
        )


def test_runs_of_other_bases_or_no_adapter_are_refused(runs, tiny_bert_dir, tmp_path):
    other = reweighted_run(runs["a"], tmp_path / "other", 1.0)
    manifest = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**manifest, "base_model": "org/another-base"}))
    assert adapter_base(other) == ("org/another-base", manifest.get("base_revision"))
    with pytest.raises(ModelLoadError, match="do not share one base model"):
        SharedBase.load({"a": runs["a"], "o": other}, device="cpu", dtype="float32")
    assert adapter_base(tiny_bert_dir) is None
    with pytest.raises(ModelLoadError, match="not LoRA run folders, nothing to share: plain"):
        SharedBase.load({"a": runs["a"], "plain": tiny_bert_dir}, device="cpu", dtype="float32")


@pytest.mark.parametrize("merge, shared_base", [("never", True), ("always", False), ("auto", False)])
def test_the_server_shares_the_base_as_merge_says(runs, merge, shared_base):
    """``auto`` on a CPU keeps merged copies of a small base (they score faster there)."""
    from conftest import wait_ready
    from litestar.testing import TestClient

    from rerankit.server import ServerSettings, create_app
    from rerankit.server.model_specs import ModelSpec

    specs = tuple(ModelSpec(name=name, path=str(path)) for name, path in runs.items())
    settings = ServerSettings(models=specs, dtype="float32", device="cpu", merge=merge)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, 60)
        listing = client.get("/v1/models").json()["data"]
        assert [m["shared_base"] for m in listing] == [shared_base, shared_base]
        for name, path in runs.items():
            body = {"model": name, "query": QUERY, "documents": DOCS}
            got = {
                r["index"]: r["relevance_score"]
                for r in client.post("/v2/rerank", json=body).json()["results"]
            }
            want = Reranker.load(path, device="cpu", dtype="float32").score([(QUERY, d) for d in DOCS])
            assert got == pytest.approx(dict(enumerate(want)), abs=1e-5)


def test_serve_loads_runs_of_one_base_onto_one_copy_with_merge_never(runs, tmp_path):
    from rerankit.server import ServerSettings
    from rerankit.server.model_specs import ModelSpec
    from rerankit.server.served_models import load_models

    specs = tuple(ModelSpec(name=name, path=str(path)) for name, path in runs.items())
    rerankers = load_models(ServerSettings(models=specs, dtype="float32", device="cpu", merge="never"))
    assert rerankers["a"].model.shared is rerankers["b"].model.shared
    broken = (*specs, ModelSpec(name="c", path=str(tmp_path / "gone")))
    with pytest.raises(ModelLoadError, match="^model c: .*gone"):
        load_models(ServerSettings(models=broken, dtype="float32", device="cpu", merge="never"))


def test_a_run_name_peft_would_refuse_as_an_adapter_name_loads(runs):
    """Adapters carry names of their own: a served name may hold a dot, which peft refuses."""
    shared = SharedBase.load({"support.v1": runs["a"]}, device="cpu", dtype="float32")
    assert shared.names == ["support.v1"] and "." not in shared.adapters["support.v1"]
    want = Reranker.load(runs["a"], device="cpu", dtype="float32").logits([QUERY] * len(DOCS), DOCS)
    assert shared.score([QUERY] * len(DOCS), DOCS, ["support.v1"] * len(DOCS)) == pytest.approx(
        want, abs=1e-5
    )
