"""OpenVINO and ONNX Runtime backends: the same scores as torch fp32, the export's graphs and
their accuracy gate, and the server on a graph backend."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
pytest.importorskip("nncf")

from conftest import tiny_config

from rerankit import Reranker
from rerankit.errors import ConfigError, ModelLoadError, RerankitError

pytestmark = pytest.mark.smoke

GRAPH_BACKENDS = ["openvino", "onnx"]
QUERY = "tell me about apple"
DOCS = [
    "apple apple orchard fruit",
    "the stock market fell",
    "apple pie recipe with cinnamon and a long crust " * 5,
    "banana",
    "apples grow on trees in the orchard near the river",
]


def pairs():
    return [(QUERY, d) for d in DOCS]


@pytest.fixture(scope="module", params=GRAPH_BACKENDS)
def graph_reranker(request, tiny_bert_run):
    """The tiny run converted at load to each graph backend (fp32)."""
    return Reranker.load(tiny_bert_run[0].output_dir, device="cpu", backend=request.param)


def test_graph_backend_scores_match_torch_fp32_and_ignore_neighbours(graph_reranker, fp32_reranker):
    from rerankit.runtimes import GraphModel

    assert isinstance(graph_reranker.model, GraphModel)
    raw = np.array(graph_reranker.score(pairs(), raw=True))
    np.testing.assert_allclose(raw, fp32_reranker.score(pairs(), raw=True), atol=1e-4)
    # same calibration, same order
    np.testing.assert_allclose(graph_reranker.score(pairs()), fp32_reranker.score(pairs()), atol=1e-5)
    assert graph_reranker.rerank(QUERY, DOCS).indices == fp32_reranker.rerank(QUERY, DOCS).indices
    alone = [graph_reranker.score([p], raw=True)[0] for p in pairs()]
    np.testing.assert_allclose(alone, raw, atol=1e-5)
    np.testing.assert_allclose(graph_reranker.score(pairs()[::-1], raw=True)[::-1], raw, atol=1e-5)
    assert graph_reranker.neighbour_independent


def _openvino_reranker(tiny_bert_run):
    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", backend="openvino")
    if reranker.model.streams < 2:
        pytest.skip("OpenVINO made one stream on this CPU: nothing runs in parallel")
    return reranker


def test_openvino_streams_score_many_batches_at_once_as_one_at_a_time(tiny_bert_run, fp32_reranker):
    """fp32: several batches in flight, and one batch split over the streams, score each pair
    as torch does one pair at a time."""
    reranker = _openvino_reranker(tiny_bert_run)
    many = [(f"{QUERY} {i}", DOCS[i % len(DOCS)] + f" number {i}") for i in range(40)]
    alone = np.array([fp32_reranker.score([p], raw=True)[0] for p in many])
    reranker.max_tokens = 64  # a few pairs per batch: many batches, run over the streams at once
    in_flight = []
    original = reranker.model._run_parallel

    def counting(batches, out):
        def counted():
            for rows, inputs in batches:
                in_flight.append(len(rows))
                yield rows, inputs

        original(counted(), out)

    object.__setattr__(reranker.model, "_run_parallel", counting)
    np.testing.assert_allclose(reranker.score(many, raw=True), alone, atol=1e-4)
    assert len(in_flight) > reranker.model.streams and sum(in_flight) == len(many)
    reranker.max_tokens = 1 << 20  # one batch: its rows split over the streams
    in_flight.clear()
    np.testing.assert_allclose(reranker.score(many, raw=True), alone, atol=1e-4)
    assert len(in_flight) == reranker.model.streams


def test_an_error_in_a_parallel_batch_reaches_the_caller(tiny_bert_run):
    reranker = _openvino_reranker(tiny_bert_run)
    bad = {"input_ids": np.zeros((2, 4), dtype=np.int64)}  # no attention_mask: OpenVINO refuses it

    with pytest.raises(RuntimeError):
        reranker.model._run_parallel(iter([([0, 1], bad)]), np.empty(2, dtype=np.float32))
    # a bad batch behind others, on a later request, fails the call too
    good = {name: np.ones((2, 4), dtype=np.int64) for name in reranker.model.input_names}
    batches = [([2 * i, 2 * i + 1], bad if i == 3 else good) for i in range(6)]
    with pytest.raises(RuntimeError):
        reranker.model._run_parallel(iter(batches), np.empty(12, dtype=np.float32))
    # the requests are free again: the next call scores
    assert len(reranker.score(pairs(), raw=True)) == len(DOCS)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_packaged_backbone_converts_exactly(backend, tmp_path):
    """all-MiniLM-L6-v2 with a seeded one-label head: the graph gives torch's fp32 logits."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.loading import resolve_model_path

    base = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path)
    reference = Reranker.load(tmp_path, device="cpu", dtype="float32", backend="torch")
    graph = Reranker.load(tmp_path, device="cpu", backend=backend)
    np.testing.assert_allclose(graph.score(pairs(), raw=True), reference.score(pairs(), raw=True), atol=1e-4)


@pytest.fixture(scope="module")
def graph_export(tiny_bert_run, tmp_path_factory):
    """The tiny run exported with fp32 and int8 graphs of both backends."""
    from rerankit.export import export

    out = tmp_path_factory.mktemp("graphs") / "export"
    # the tiny model's int8 rounding is coarse: a wide gate, so every graph is written and measured
    export(tiny_bert_run[0].output_dir, out, formats=GRAPH_BACKENDS, quantize="int8", tolerance=0.05)
    return out


def test_export_writes_measured_graphs_and_loads_them(graph_export):
    from rerankit.runtimes import GRAPH_FILES, openvino_bf16_here

    gate = json.loads((graph_export / "rerankit_export.json").read_text())["accuracy_gate"]
    assert gate["validation"]["queries"] == 16 and gate["tolerance"] == 0.05
    assert gate["method"].startswith("paired bootstrap") and gate["confidence"] == 0.95
    runtimes = {(r["backend"], r["precision"]): r for r in gate["runtimes"]}
    # bf16: the OpenVINO fp32 graph compiled for bf16, measured where the CPU has bf16 units
    expected = {key: f for key, f in GRAPH_FILES.items() if key[1] != "bf16" or openvino_bf16_here()}
    assert set(runtimes) == {("torch", "fp32"), *expected}
    for key, relative in expected.items():
        record = runtimes[key]
        assert (graph_export / relative).is_file() and record["file"] == relative
        assert record["gate"] == "passed" and record["ndcg@10_loss_upper_bound"] <= 0.05
        assert record["pairs_per_second"] > 0 and 0 <= record["identical_top10"] <= 1
    for key in [("openvino", "fp32"), ("onnx", "fp32")]:
        assert runtimes[key]["max_abs_logit_delta"] < 1e-3
        assert runtimes[key]["identical_top10"] == 1.0

    # the export's own torch model (its head carries the folded calibration)
    reference = Reranker.load(graph_export, device="cpu", backend="torch", dtype="float32")
    torch_scores = np.array(reference.score(pairs(), raw=True))
    for backend in GRAPH_BACKENDS:
        fp32 = Reranker.load(graph_export, backend=backend, dtype="float32")
        assert fp32.model.path == graph_export / GRAPH_FILES[(backend, "fp32")]
        np.testing.assert_allclose(fp32.score(pairs(), raw=True), torch_scores, atol=1e-4)
        int8 = Reranker.load(graph_export, backend=backend, dtype="int8")
        assert int8.model.precision == "int8"
        raw = np.array(int8.score(pairs(), raw=True))
        assert np.abs(raw - torch_scores).max() < 0.5  # int8 rounding, not another model
        # OpenVINO's int8 has calibrated static ranges; ONNX's dynamic int8 takes them per batch
        assert int8.neighbour_independent == (backend == "openvino")
        if backend == "openvino":
            alone = [int8.score([p], raw=True)[0] for p in pairs()]
            np.testing.assert_allclose(alone, raw, atol=1e-5)
            np.testing.assert_allclose(int8.score(pairs()[::-1], raw=True)[::-1], raw, atol=1e-5)
        fastest = max(
            (r for r in gate["runtimes"] if r["backend"] == backend), key=lambda r: r["pairs_per_second"]
        )
        assert Reranker.load(graph_export, backend=backend).model.path == graph_export / fastest["file"]
    # auto: of the graphs that passed, the fastest measured here at load; float32: of the fp32 ones
    for dtype, precisions in [(None, {"fp32", "bf16", "int8"}), ("float32", {"fp32"}), ("int8", {"int8"})]:
        loaded = Reranker.load(graph_export, device="cpu", dtype=dtype)
        info = loaded.backend_info
        measured = info["measured_pairs_per_second"]
        assert set(measured) == {" ".join(key) for key in expected if key[1] in precisions}
        assert f"{info['backend']} {info['precision']}" == max(measured, key=measured.get)
        assert "fastest on this machine" in info["reason"]
        assert loaded.model.path == graph_export / GRAPH_FILES[(info["backend"], info["precision"])]
        assert info["neighbour_independent"] == loaded.neighbour_independent
    assert (
        Reranker.load(graph_export, backend="torch").model.__class__.__name__
        == "BertForSequenceClassification"
    )


def test_accuracy_gate_refuses_a_broken_quantisation(tiny_bert_run, tmp_path, monkeypatch):
    """An "int8" graph that reverses the ranking (its head negated) fails the gate: nothing is
    written unless forced, and a forced one loads only when asked."""
    import rerankit.graph_export as graph_export
    from rerankit.runtimes import convert

    def broken_quantize(fp32_graph, backend, out, calibration=()):
        import copy

        import torch

        model = copy.deepcopy(broken_quantize.model)
        with torch.no_grad():
            model.classifier.weight.neg_()
        return convert(model, broken_quantize.example, backend, out)

    real_convert = graph_export.convert

    def remember(model, example, backend, out):
        broken_quantize.model, broken_quantize.example = model, example
        return real_convert(model, example, backend, out)

    monkeypatch.setattr(graph_export, "convert", remember)
    monkeypatch.setattr(graph_export, "quantize_int8", broken_quantize)
    from rerankit.export import export

    run, out = tiny_bert_run[0].output_dir, tmp_path / "export"
    refused = r"accuracy gate: the NDCG@10 loss .*\(openvino int8: .* gate failed"
    with pytest.raises(RerankitError, match=refused):
        export(run, out, formats=["openvino"], quantize="int8")
    # nothing left behind but the destination's lock file (with the last holder's PID)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [".export.lock"]

    export(run, out, formats=["openvino"], quantize="int8", force=True)
    runtimes = json.loads((out / "rerankit_export.json").read_text())["accuracy_gate"]["runtimes"]
    failed = next(r for r in runtimes if r["precision"] == "int8")
    assert failed["gate"] == "failed" and failed["ndcg@10_delta"] < -0.01
    with pytest.raises(ModelLoadError, match="failed the accuracy gate.*allow_failed_gate"):
        Reranker.load(out, backend="openvino", dtype="int8")
    forced = Reranker.load(out, backend="openvino", dtype="int8", allow_failed_gate=True)
    assert forced.model.precision == "int8"
    # a failed graph is never what auto or the backend's default picks
    assert Reranker.load(out, backend="openvino").model.precision != "int8"
    assert getattr(Reranker.load(out, device="cpu").model, "precision", "fp32") != "int8"


def test_export_validation_and_backend_errors_are_clear(tiny_bert_run, tmp_path):
    from rerankit.export import export

    run = tiny_bert_run[0].output_dir
    with pytest.raises(RerankitError, match="--quantize applies to a graph"):
        export(run, tmp_path / "a", quantize="int8")
    with pytest.raises(RerankitError, match="written from the fp32 model"):
        export(run, tmp_path / "b", formats=["onnx"], dtype="bfloat16")
    with pytest.raises(ConfigError, match="backend must be one of"):
        Reranker.load(run, backend="tensorrt")
    with pytest.raises(ConfigError, match="dtype 'int8' needs a graph backend"):
        Reranker.load(run, dtype="int8", backend="torch")
    with pytest.raises(ConfigError, match="runs fp32 or int8 graphs"):
        Reranker.load(run, dtype="bfloat16", backend="onnx")
    with pytest.raises(ModelLoadError, match="no int8 graph here passed"):
        Reranker.load(run, dtype="int8")  # a run folder has no graphs
    with pytest.raises(ConfigError, match="runs on the CPU"):
        Reranker.load(run, backend="openvino", device="cuda")


def test_server_on_a_graph_backend_answers_like_in_process(tiny_bert_run):
    from conftest import wait_ready
    from litestar.testing import TestClient

    from rerankit.server import ServerSettings, create_app

    settings = ServerSettings(model=str(tiny_bert_run[0].output_dir), backend="openvino")
    in_process = Reranker.load(settings.model, backend="openvino")
    with TestClient(create_app(settings)) as client:
        wait_ready(client, 120)
        body = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert [r["index"] for r in body["results"]] == in_process.rerank(QUERY, DOCS).indices
    expected = in_process.score(pairs())
    for r in body["results"]:
        assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-6)


def test_damaged_gate_records_are_refused_and_cannot_point_outside(graph_export, tmp_path):
    """The graph file comes from the export layout, never from the record; a damaged record is
    a clear error naming the field, even for the torch backend."""
    import shutil

    from rerankit.runtimes import GRAPH_FILES

    folder = tmp_path / "export"
    shutil.copytree(graph_export, folder)
    info_file = folder / "rerankit_export.json"
    info = json.loads(info_file.read_text())

    def load_with(runtimes, **options):
        info_file.write_text(
            json.dumps({**info, "accuracy_gate": {**info["accuracy_gate"], "runtimes": runtimes}})
        )
        return Reranker.load(folder, device="cpu", **options)

    good = info["accuracy_gate"]["runtimes"]
    hostile = [{**r, "file": "../../etc/passwd"} if r["file"] else r for r in good]
    loaded = load_with(hostile, backend="onnx", dtype="float32")
    assert loaded.model.path == folder / GRAPH_FILES[("onnx", "fp32")]
    for runtimes, field in [
        (5, "accuracy_gate.runtimes: expected a list"),
        (["x"], r"runtimes\[0\]: expected an object"),
        ([{**good[1], "backend": "tensorrt"}], r"runtimes\[0\]: unknown runtime 'tensorrt'"),
        ([{**good[1], "gate": None}], r"runtimes\[0\].gate: expected 'passed' or 'failed'"),
        ([{**good[1], "pairs_per_second": "fast"}], r"runtimes\[0\].pairs_per_second"),
    ]:
        with pytest.raises(ModelLoadError, match=field):
            load_with(runtimes, backend="torch")
    # a graph listed but deleted: auto runs the next fastest that is there
    fastest = max((r for r in good if r["file"]), key=lambda r: r["pairs_per_second"])
    (folder / fastest["file"]).unlink()
    chosen = load_with(good).model
    assert getattr(chosen, "path", None) != folder / fastest["file"]


def test_cli_backend_errors_are_one_line(tiny_bert_run):
    from click.testing import CliRunner

    from rerankit.cli import main

    run = str(tiny_bert_run[0].output_dir)
    result = CliRunner().invoke(
        main,
        [
            "rerank",
            "--model",
            run,
            "--query",
            "q",
            "--docs",
            __file__,
            "--backend",
            "torch",
            "--dtype",
            "int8",
        ],
    )
    assert result.exit_code == 2 and "dtype 'int8' needs a graph backend" in result.output
    assert "Traceback" not in result.output


@pytest.mark.smoke
def test_gate_bound_passes_noise_and_gains_and_refuses_a_real_loss():
    """The one-sided paired bootstrap: a gain or a change within noise passes, a loss that the
    queries show beyond noise fails, whatever the point estimate's sign says alone."""
    from rerankit.graph_export import DEFAULT_TOLERANCE, loss_upper_bound

    rng = np.random.default_rng(0)
    reference = rng.uniform(0.3, 1.0, 200)
    noise = reference + rng.normal(0, 0.01, 200)  # a graph that moves each query a little, both ways
    gain = reference + np.where(rng.random(200) < 0.2, 0.1, 0.0)  # better on a fifth of the queries
    damaged = reference - np.where(rng.random(200) < 0.3, 0.2, 0.0)  # worse on almost a third
    assert loss_upper_bound(reference, noise) <= DEFAULT_TOLERANCE
    assert loss_upper_bound(reference, gain) < 0  # better beyond doubt: never refused
    assert loss_upper_bound(reference, damaged) > DEFAULT_TOLERANCE
    assert loss_upper_bound(reference, reference) == 0.0 and loss_upper_bound([], []) == 0.0
    # a mean loss just under the tolerance, but on few queries: the bound says it cannot tell
    few = reference[:10] - np.array([0.09, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert np.mean(reference[:10] - few) < DEFAULT_TOLERANCE < loss_upper_bound(reference[:10], few)


@pytest.mark.smoke
def test_a_run_folder_carries_gated_graphs_and_serves_the_fastest(tiny_bert_dir, toy_data, tmp_path):
    """graphs: auto writes the merged model's graphs into the run folder with their gate in
    run.json; Reranker.load(run) then runs the fastest that passed, without torch weights, and
    its fp32 graph scores as the torch model does."""
    import rerankit
    from rerankit.runtimes import GRAPH_FILES, openvino_bf16_here

    run = rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, tmp_path / "run", graphs="auto")).output_dir
    gate = json.loads((run / "run.json").read_text())["accuracy_gate"]
    written = {r["precision"] for r in gate["runtimes"] if r["backend"] == "openvino"}
    assert written == {"fp32", "int8"} | ({"bf16"} if openvino_bf16_here() else set())
    assert gate["validation"]["queries"] == 16 and "loss_upper_bound" in str(gate["runtimes"])
    assert (run / "graphs" / GRAPH_FILES[("openvino", "int8")]).is_file()
    assert (run / "graphs" / "config.json").is_file() and not (run / "graphs.staging").exists()
    # what ships beside the model was fitted on the graph this machine serves the run with
    shipped_on = json.loads((run / "metrics.json").read_text())["shipped"]["runtime"]
    assert shipped_on["backend"] == "openvino" and "openvino" in (run / "report.md").read_text()

    served = Reranker.load(run)
    info = served.backend_info
    assert info["backend"] == "openvino" and served.model.path.is_relative_to(run / "graphs")
    passing = {f"openvino {r['precision']}" for r in gate["runtimes"][1:] if r["gate"] == "passed"}
    if len(passing) > 1:
        assert set(info["measured_pairs_per_second"]) == passing
    torch_fp32 = Reranker.load(run, backend="torch", dtype="float32")
    assert torch_fp32.backend_info["backend"] == "torch"
    graph_fp32 = Reranker.load(run, dtype="float32")
    assert graph_fp32.backend_info["precision"] == "fp32" and graph_fp32.neighbour_independent
    # the run's int8 graph loads by name, as an export's does (a failed one with allow_failed_gate)
    int8 = Reranker.load(run, dtype="int8", backend="openvino", allow_failed_gate=True)
    assert int8.backend_info["precision"] == "int8" and int8.model.path.name.endswith("_int8.xml")
    int8_gate = next(r["gate"] for r in gate["runtimes"] if r["precision"] == "int8")
    if int8_gate != "passed":
        with pytest.raises(ModelLoadError, match="allow_failed_gate"):
            Reranker.load(run, dtype="int8")
    np.testing.assert_allclose(graph_fp32.score(pairs()), torch_fp32.score(pairs()), atol=1e-4)
    ranked = [r.index for r in graph_fp32.rerank(QUERY, DOCS)]
    assert ranked == [r.index for r in torch_fp32.rerank(QUERY, DOCS)]
    # an export of such a run merges its torch weights, as for any run
    from rerankit.export import export

    exported = Reranker.load(export(run, tmp_path / "export"), backend="torch", dtype="float32")
    np.testing.assert_allclose(exported.score(pairs()), torch_fp32.score(pairs()), atol=1e-5)


def test_freeing_a_graph_that_ran_over_streams_does_not_hang(tmp_path):
    """all-MiniLM-L6-v2's graph freed right after scoring over its streams, again and again:
    freeing joins OpenVINO's threads, so none of them may be waiting for the GIL (no Python
    callback runs on them). A hang shows as the timeout."""
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.loading import resolve_model_path
    from rerankit.runtimes import convert, example_batch, load_graph

    base = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    path = convert(
        model, example_batch(AutoTokenizer.from_pretrained(base), 64), "openvino", tmp_path / "m.xml"
    )
    if load_graph(path, "openvino").streams < 2:
        pytest.skip("OpenVINO made one stream on this CPU: nothing runs in parallel")
    script = f"""
import gc
import numpy as np
from rerankit.runtimes import load_graph
for _ in range(30):
    graph = load_graph({str(path)!r}, "openvino")
    ids = np.ones((6, 40), dtype=np.int64)
    features = {{"input_ids": ids, "attention_mask": ids, "token_type_ids": 0 * ids}}
    out = np.empty(12, dtype=np.float32)
    graph.score_batches(iter([(list(range(6)), features), (list(range(6, 12)), features)]), out)
    graph(features)
    del graph
    gc.collect()
print("done")
"""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip() == "done"


def _fake_bf16_graph(offset, shapes=None):
    """A batch-dependent OpenVINO graph whose row logit is the row's token sum plus
    ``offset(width, rows)``; ``shapes`` collects each batch's (rows, padded width)."""
    from pathlib import Path

    from rerankit.runtimes import GraphModel

    def run(inputs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if shapes is not None:
            shapes.append(ids.shape)
        own = (ids * mask).sum(axis=1).astype(np.float32)
        return (own + offset(ids.shape[1], len(ids)))[:, None]

    return GraphModel(
        "openvino", "bf16", Path("fake.xml"), ("input_ids", "attention_mask"), run, batch_dependent=True
    )


def test_padding_alignment_is_adopted_only_where_scores_stop_moving(tiny_bert_dir, monkeypatch):
    from transformers import AutoTokenizer

    from rerankit.runtimes import align_padding
    from rerankit.scoring import score_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    rounds_at = lambda block: lambda width, rows: np.float32(0.5 * (width % block != 0))
    aligned = align_padding(_fake_bf16_graph(rounds_at(16)), tokenizer, 64)
    assert aligned.pad_multiple == 16 and not aligned.batch_dependent
    # the smallest multiple that holds, and only one the window is a multiple of
    assert align_padding(_fake_bf16_graph(rounds_at(32)), tokenizer, 64).pad_multiple == 32
    assert align_padding(_fake_bf16_graph(rounds_at(16)), tokenizer, 40).pad_multiple is None
    # where no multiple divides the window the graph stays batch-dependent, even one that looks
    # steady on the probes: a few probe widths cannot vouch for every unpadded width
    kept = align_padding(_fake_bf16_graph(lambda width, rows: 0.0), tokenizer, 40)
    assert kept.batch_dependent and kept.pad_multiple is None
    # scores that move with every width, or with the other rows, stay batch-dependent
    for offset in (lambda width, rows: 1e-3 * width, lambda width, rows: 1e-3 * rows):
        kept = align_padding(_fake_bf16_graph(offset), tokenizer, 48)
        assert kept.batch_dependent and kept.pad_multiple is None
    # (padding every batch to the whole window is a width that cannot move)
    assert align_padding(_fake_bf16_graph(lambda width, rows: 1e-3 * width), tokenizer, 64).pad_multiple == 64
    fp32 = dataclasses.replace(_fake_bf16_graph(rounds_at(16)), batch_dependent=False)
    assert align_padding(fp32, tokenizer, 64) is fp32
    # a probe that cannot run warns and leaves the graph as it was: no pad token, a prompt whose
    # question fills the window
    unpadded = AutoTokenizer.from_pretrained(tiny_bert_dir)
    unpadded.pad_token = None
    graph = _fake_bf16_graph(rounds_at(16))
    with pytest.warns(RuntimeWarning, match="padding check .* could not run"):
        assert align_padding(graph, unpadded, 64) is graph
    import rerankit.encoding
    from rerankit.encoding import QueryTooLongError

    def fills_the_window(*args, **kwargs):
        raise QueryTooLongError("the query fills the window")

    monkeypatch.setattr(rerankit.encoding, "encode_pairs", fills_the_window)
    with pytest.warns(RuntimeWarning, match="fills the window"):
        assert align_padding(graph, tokenizer, 64) is graph
    monkeypatch.undo()

    # scoring pads every batch to the multiple, so a pair scores the same in any company, and
    # the token budget counts the padded width
    shapes: list[tuple[int, int]] = []
    graph = align_padding(_fake_bf16_graph(rounds_at(16), shapes), tokenizer, 64)
    shapes.clear()
    docs = [d + " apple" * i for i in range(4) for d in DOCS]
    together = score_pairs(graph, tokenizer, [QUERY] * len(docs), docs, max_length=64, max_tokens=96)
    alone = [score_pairs(graph, tokenizer, [QUERY], [d], max_length=64)[0] for d in docs]
    np.testing.assert_array_equal(together, alone)
    batched = shapes[: len(shapes) - len(docs)]
    assert len(batched) > 1 and all(width % 16 == 0 for _, width in shapes)
    assert all(rows * width <= 96 for rows, width in batched if rows > 1)


def test_openvino_bf16_scores_do_not_move_with_batch_neighbours(graph_export):
    """Where the CPU computes bf16 natively and its kernels round alike at every width that is
    a multiple of a block, a pair's bf16 score is bit for bit its own, alone or in a batch."""
    from rerankit.runtimes import GRAPH_FILES, openvino_bf16_here

    if not openvino_bf16_here():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX): OpenVINO would not run bf16")
    reranker = Reranker.load(graph_export, backend="openvino", dtype="bfloat16", allow_failed_gate=True)
    if reranker.model.pad_multiple is None:
        from pathlib import Path

        cpuinfo = Path("/proc/cpuinfo")
        # measured to hold on AMX (16 tokens): there it must be found
        assert not (cpuinfo.is_file() and "amx_bf16" in cpuinfo.read_text()), "no padding multiple on AMX"
        pytest.skip(
            "this CPU's bf16 kernels round differently at every padded width: batches stay as they were"
        )
    assert reranker.neighbour_independent and reranker.backend_info["pad_multiple"] in (16, 32, 64)
    assert str(reranker.model.path).endswith(GRAPH_FILES[("openvino", "bf16")])
    many = [(f"{QUERY} {i}", DOCS[i % len(DOCS)] + " more" * i) for i in range(24)]
    together = reranker.score(many, raw=True)
    alone = [reranker.score([p], raw=True)[0] for p in many]
    shuffled = reranker.score(many[::-1], raw=True)[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, shuffled)
