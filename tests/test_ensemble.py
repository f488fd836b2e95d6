"""The self-ensemble and validation as deployed: a run ranks its validation queries over the
first stage's top-k of the corpus, fits the ensemble there with the model as it ships, and
every surface scores with it."""

import json

import numpy as np
import pytest
from conftest import tiny_config, toy_lines, wait_ready, write_jsonl

import rerankit
from rerankit import ModelLoadError, Reranker
from rerankit.ensemble import (
    SIGNALS,
    BM25Signal,
    CosineSignal,
    Ensemble,
    fit_ensemble,
    rank_gauss_map,
    weight_grid,
)

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc of the old quartz", "apple story with apple", "the river is old", "an apple and a river"]


def test_bm25_signal_is_bm25s_over_its_corpus_divided_by_the_querys_best():
    from rerankit.ensemble import bm25_tokens
    from rerankit.first_stage import BM25Index

    corpus = [" ".join(line["positives"][0]["text"].split()) for line in toy_lines(24, seed=5)]
    signal = BM25Signal.from_corpus(corpus)
    query = "tell me about apple and the river"
    best = sum(signal.idf(t) for t in bm25_tokens([query])[0] if t in signal.doc_freq)
    expected = BM25Index(corpus).scores([query])[0]
    np.testing.assert_allclose(signal.scores([query] * len(corpus), corpus) * best, expected, rtol=1e-5)
    assert signal.scores(["zzz unknown words"], [corpus[0]])[0] == 0.0


def test_bm25_keeps_recent_documents_term_counts_and_scores_them_as_new(monkeypatch):
    import rerankit.ensemble as ensemble

    monkeypatch.setattr(ensemble, "CACHE_ENTRIES", 2)
    signal = BM25Signal.from_corpus(DOCS)
    fresh = BM25Signal.from_corpus(DOCS).scores([QUERY] * 4, DOCS)
    tokenized = []
    real = ensemble.bm25_tokens
    monkeypatch.setattr(ensemble, "bm25_tokens", lambda texts: tokenized.append(list(texts)) or real(texts))
    # a repeated document is tokenized once; only the last CACHE_ENTRIES documents are kept
    np.testing.assert_allclose(signal.scores([QUERY] * 5, [*DOCS, DOCS[1]]), [*fresh, fresh[1]])
    assert tokenized[-1] == DOCS and len(signal._doc_terms) == 2
    np.testing.assert_allclose(signal.scores([QUERY, "the river"], [DOCS[3], DOCS[3]])[:1], fresh[3:])
    assert tokenized[-1] == [QUERY, "the river"]  # the queries; the document came from the cache
    np.testing.assert_allclose(signal.scores([QUERY] * 4, DOCS), fresh)


def test_bm25_statistics_round_trip_and_damage_is_refused(tmp_path):
    signal = BM25Signal.from_corpus(DOCS)
    signal.save(tmp_path / "stats.json")
    again = BM25Signal.load(tmp_path / "stats.json")
    np.testing.assert_allclose(again.scores([QUERY] * 4, DOCS), signal.scores([QUERY] * 4, DOCS))
    data = json.loads((tmp_path / "stats.json").read_text())
    damaged = [
        ({"avg_length": -1}, "avg_length must be a number from"),
        ({"b": 5}, "b must be a number from 0 to 1, got 5"),
        ({"b": float("inf")}, "b must be a number from 0 to 1, got inf"),
        ({"num_docs": 2.5}, "num_docs must be an integer"),
        ({"doc_freq": {"apple": 99}}, "doc_freq values must be integers from 1 to num_docs"),
    ]
    for change, message in damaged:
        (tmp_path / "bad.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(ValueError, match=message):
            BM25Signal.load(tmp_path / "bad.json")
    missing = {k: v for k, v in data.items() if k != "k1"}
    (tmp_path / "bad.json").write_text(json.dumps(missing))
    with pytest.raises(ValueError, match="k1 must be a number"):
        BM25Signal.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply|expected an object"):
        BM25Signal.load(tmp_path / "bad.json")


def test_cosine_signal_pools_like_sentence_transformers(tiny_sentence_bert_dir):
    from sentence_transformers import SentenceTransformer

    signal = CosineSignal.load(tiny_sentence_bert_dir)
    st = SentenceTransformer(str(tiny_sentence_bert_dir), device="cpu")
    q, d = st.encode([QUERY], normalize_embeddings=True), st.encode(DOCS, normalize_embeddings=True)
    np.testing.assert_allclose(signal.scores([QUERY] * 4, DOCS), (d @ q[0]), atol=1e-5)


def test_a_best_sentence_signal_scores_the_documents_best_sentence(tmp_path, monkeypatch):
    import rerankit.ensemble as ensemble
    from rerankit.ensemble import BestSentence, load_signals, with_sentence_signals

    answer = "An apple story with apple."
    filler = " ".join(f"The river {w} is old." for w in ("north", "south", "east", "west", "bend"))
    buried, diluted = f"{filler} {answer}", "The apple river and the old zinc quartz of the north."
    bm25 = BM25Signal.from_corpus([buried, diluted, *DOCS])
    whole = bm25.scores([QUERY] * 2, [buried, diluted])
    best = BestSentence(bm25).scores([QUERY] * 2, [buried, diluted])
    # the answering sentence scores as it would alone; the filler around it no longer dilutes it
    assert best[0] == pytest.approx(bm25.scores([QUERY], [answer])[0]) and best[0] > whole[0]
    assert whole[0] < whole[1] and best[0] > best[1]
    assert BestSentence(bm25).scores([], []).shape == (0,)
    # a run that weighs only BM25's best sentence loads BM25's statistics and no encoder
    bm25.save(tmp_path / "bm25_stats.json")
    signals = load_signals(("bm25_sentence",), tmp_path, tmp_path / "no-encoder")
    assert set(signals) == {"bm25", "bm25_sentence"}
    np.testing.assert_allclose(signals["bm25_sentence"].scores([QUERY] * 2, [buried, diluted]), best)
    with pytest.raises(OSError, match="the sentence encoder is missing"):
        load_signals(("cosine_sentence",), tmp_path, tmp_path / "no-encoder")
    # signals given by hand gain the best-sentence forms their whole-document signal allows
    built = with_sentence_signals({"bm25": bm25}, ("bm25_sentence", "cosine_sentence"))
    assert set(built) == {"bm25", "bm25_sentence"} and built["bm25_sentence"].signal is bm25
    # a long document's sentences past the cap are not scored
    monkeypatch.setattr(ensemble, "MAX_SENTENCES", 5)
    assert BestSentence(bm25).scores([QUERY], [buried])[0] < best[0]


def test_no_cosine_signal_for_a_backbone_that_is_no_sentence_embedder(tiny_bert_dir):
    assert CosineSignal.load(tiny_bert_dir) is None


ONE_SIGNAL = {"signals": ["reranker"], "weights": [1.0], "means": [0.0], "stds": [1.0]}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"signals": ["bm25"], "weights": [1.0], "means": [0.0], "stds": [1.0]}, "must include 'reranker'"),
        (
            {"signals": ["reranker", "bm25"], "weights": [0.7, 0.7], "means": [0, 0], "stds": [1, 1]},
            "sum to 1",
        ),
        (
            {"signals": ["reranker", "bm25"], "weights": [0.5, 0.5], "means": [0, 0], "stds": [1, 0]},
            "above 0",
        ),
        ({"signals": ["reranker"], "weights": [1.0], "means": [float("nan")], "stds": [1.0]}, "finite"),
        ({"signals": ["reranker"], "weights": [1.0]}, "expected signals, weights, means and stds"),
        (ONE_SIGNAL | {"normalization": "minmax"}, "normalization must be one of"),
        (ONE_SIGNAL | {"normalization": "rank_gauss"}, "needs knots and normal_at for every signal"),
        (ONE_SIGNAL | {"normalization": "rank_gauss", "knots": [[0, 1]], "normal_at": [[0]]}, "same length"),
        (
            ONE_SIGNAL | {"normalization": "rank_gauss", "knots": [[1, 0]], "normal_at": [[0, 1]]},
            "must increase",
        ),
        (
            ONE_SIGNAL | {"normalization": "rank_gauss", "knots": [[0, 1]], "normal_at": [[1, 0]]},
            "not decrease",
        ),
        (ONE_SIGNAL | {"normalization": "rank_gauss", "knots": [[0, 1]], "normal_at": [[0, "x"]]}, "finite"),
        (ONE_SIGNAL | {"knots": [[0, 1]], "normal_at": [[0, 1]]}, "rank_gauss normalization only"),
    ],
)
def test_a_damaged_ensemble_record_is_refused(record, message):
    with pytest.raises(ValueError, match=message):
        Ensemble.from_dict(record)


def ndcg_of(qrels):
    """``fit_ensemble``'s quality: NDCG@10 of per-query scores against 0/1 label arrays."""
    from rerankit.ranking_metrics import ranking_metrics

    def quality(scores, queries):
        qrel = {str(q): {str(i): int(qrels[q][i]) for i in range(10)} for q in queries}
        run = {str(q): {str(i): float(s[i]) for i in range(10)} for q, s in zip(queries, scores)}
        return ranking_metrics(qrel, run)["ndcg@10"]

    return quality


def test_the_fit_finds_the_informative_signal_and_reports_each_strategy():
    rng = np.random.default_rng(0)
    features, qrels = [], []
    for _ in range(40):
        labels = np.zeros(10)
        labels[rng.integers(10)] = 1
        features.append({"reranker": rng.normal(size=10), "bm25": labels + rng.normal(scale=0.3, size=10)})
        qrels.append(labels)

    quality = ndcg_of(qrels)

    ensemble, report = fit_ensemble(features, quality, ("reranker", "bm25"))
    assert set(report["strategies"]) == {"equal", "grid", "shrunk"} and report["folds"] == 5
    assert report["chosen"] in ("grid", "shrunk") and ensemble.weights[1] > 0.5
    chosen = report["strategies"][report["chosen"]]
    assert chosen["gain_over_equal"] > chosen["standard_error"] > 0
    assert all(0 <= s["cross_validated"] <= 1 for s in report["strategies"].values())
    assert len(weight_grid(3)) == 55 and all(w[0] > 0 for w in weight_grid(3))

    # a best-sentence signal shares its family's weight equally with the whole-document one
    for f in features:
        f["bm25_sentence"] = f["bm25"] + rng.normal(scale=0.3, size=10)
    ensemble, report = fit_ensemble(features, quality, ("reranker", "bm25", "bm25_sentence"))
    assert ensemble.weights[1] == pytest.approx(ensemble.weights[2]) and ensemble.weights[1] > 0.25
    assert all(s["weights"][1] == s["weights"][2] for s in report["strategies"].values())

    # signals that carry nothing keep equal weights, exactly: the report rounds the weights it
    # shows (0.1667), the ensemble keeps the fit's own
    noise = [{s: rng.normal(size=10) for s in SIGNALS} for _ in features]
    ensemble, report = fit_ensemble(noise, quality, SIGNALS)
    assert report["chosen"] == "equal" and report["strategies"]["equal"]["weights"][1] == 0.1667
    assert ensemble.weights == pytest.approx((1 / 3, 1 / 6, 1 / 6, 1 / 6, 1 / 6), abs=1e-12)


def test_rank_gauss_maps_each_signal_to_normal_scores_of_its_validation_quantiles():
    rng = np.random.default_rng(1)
    skewed = rng.exponential(size=3000)  # BM25-like: a long upper tail
    knots, normal = rank_gauss_map(skewed)
    assert len(knots) == 201 and np.all(np.diff(knots) > 0) and np.all(np.diff(normal) >= 0)
    mapped = np.interp(skewed, knots, normal)
    assert abs(mapped.mean()) < 0.02 and mapped.std() == pytest.approx(1.0, abs=0.05)
    # bounded by the outermost validation pair: the tail no longer counts without limit
    assert normal[-1] == pytest.approx(3.59, abs=0.01) and np.interp(1e6, knots, normal) == normal[-1]
    # tied quantiles share one knot at their mean position; a constant signal maps to 0
    tied_knots, tied_normal = rank_gauss_map(np.r_[np.zeros(500), rng.random(500) + 1])
    assert (
        tied_knots[0] == 0 and len(tied_knots) == 102 and tied_normal[0] == pytest.approx(-0.682, abs=0.002)
    )
    assert rank_gauss_map(np.full(10, 2.0)) == ((2.0, 3.0), (0.0, 0.0))


def test_a_rank_gauss_fit_ranks_with_its_maps_and_round_trips():
    rng = np.random.default_rng(0)
    features, qrels = [], []
    for _ in range(40):
        labels = np.zeros(10)
        labels[rng.integers(10)] = 1
        # the informative signal is skewed: one huge value in a few lists drowns a z-score
        bm25 = labels + rng.normal(scale=0.3, size=10) + (rng.random(10) < 0.02) * 50
        features.append({"reranker": rng.normal(size=10), "bm25": bm25})
        qrels.append(labels)

    quality = ndcg_of(qrels)

    ensemble, report = fit_ensemble(features, quality, ("reranker", "bm25"), normalization="rank_gauss")
    assert report["normalization"] == "rank_gauss" and ensemble.normalization == "rank_gauss"
    assert ensemble.weights[1] > 0.5
    doc = {"reranker": np.array([0.3, -1.0]), "bm25": np.array([1e9, 0.9])}
    both = ensemble.combine(doc)
    # each document's score is its own, and a far-out value is bounded by the top knot
    assert ensemble.combine({k: v[:1] for k, v in doc.items()})[0] == both[0]
    assert both[0] <= ensemble.weights[0] * ensemble.scaled(0, np.array([0.3]))[0] + ensemble.weights[1] * 3.5
    again = Ensemble.from_dict(json.loads(json.dumps(ensemble.to_dict())))
    assert again == ensemble and np.array_equal(again.combine(doc), both)
    # a record written before the option reads as z-scores
    old = {k: v for k, v in ensemble.to_dict().items() if k not in ("normalization", "knots", "normal_at")}
    assert Ensemble.from_dict(old).normalization == "zscore"


@pytest.fixture(scope="module")
def ensemble_run(tiny_sentence_bert_dir, tmp_path_factory):
    """A run with the defaults: validation as deployed over a corpus, the ensemble on."""
    folder = tmp_path_factory.mktemp("ensemble-run")
    train_lines = toy_lines(48, seed=1)
    valid_lines = [dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(16, seed=2)]
    train = write_jsonl(folder / "train.jsonl", train_lines)
    valid = write_jsonl(folder / "valid.jsonl", valid_lines)
    docs = {
        d["doc_id"]: d["text"]
        for line in train_lines + valid_lines
        for d in line["positives"] + line["negatives"]
    }
    corpus = write_jsonl(folder / "corpus.jsonl", [{"_id": k, "text": v} for k, v in docs.items()])
    config = tiny_config(
        tiny_sentence_bert_dir,
        train,
        valid,
        folder / "run",
        data={"corpus": str(corpus)},
        evaluation={"candidates": "deployed", "depth": 8},
        ensemble="auto",
        training={"epochs": 2},
    )
    return rerankit.fit(config)


def test_a_run_validates_as_deployed_and_ships_its_ensemble(ensemble_run):
    out, metrics = ensemble_run.output_dir, ensemble_run.metrics
    deployed = metrics["deployed"]
    assert deployed["depth"] == 8 and deployed["queries"] == 16 and 0 < deployed["recall_at_depth"] <= 1
    assert metrics["valid_pairs"] == 16 * 8
    manifest = json.loads((out / "run.json").read_text())
    signals = ["reranker", "bm25", "bm25_sentence", "cosine", "cosine_sentence"]
    assert manifest["ensemble"]["signals"] == signals
    assert (out / "ensemble" / "bm25_stats.json").is_file()
    needs = Ensemble.from_dict(manifest["ensemble"]).needs
    # the corpus's embeddings are kept exactly when a cosine carries weight
    embedded = bool({"cosine", "cosine_sentence"} & set(needs))
    assert (out / "ensemble" / "corpus_embeddings.npz").is_file() == embedded
    assert set(metrics["shipped"]["signals"]) == set(signals)
    # validation ranked the top 8: the depth table holds that depth, equal to the main rows
    depths = metrics["shipped"]["depths"]
    assert set(depths) == {"8"} and depths["8"]["final"] == pytest.approx(metrics["shipped"]["final"])
    report = (out / "report.md").read_text()
    assert "Validation as deployed: each query is ranked over the bm25 top 8" in report
    assert "## The model as it ships" in report and "held out, weights" in report
    assert "each signal on one scale by its z-score over the validation pairs" in report


def by_hand(reranker, out, base_dir, query, docs):
    """The ensemble's calibrated score, computed from its parts without Reranker's own path."""
    from rerankit.text_units import sentences

    fitted = reranker.ensemble
    bm25 = BM25Signal.load(out / "ensemble" / "bm25_stats.json")
    cosine = CosineSignal.load(base_dir)
    features = {
        "reranker": reranker.logits([query] * len(docs), docs),
        "bm25": bm25.scores([query] * len(docs), docs),
        "cosine": cosine.scores([query] * len(docs), docs),
        "bm25_sentence": [max(bm25.scores([query], [s])[0] for s in sentences(d)) for d in docs],
        "cosine_sentence": [max(cosine.scores([query], [s])[0] for s in sentences(d)) for d in docs],
    }
    record = json.loads((out / "run.json").read_text())["ensemble"]
    if record.get("normalization") == "rank_gauss":
        scaled = [
            np.interp(features[s], k, v)
            for s, k, v in zip(fitted.signals, record["knots"], record["normal_at"])
        ]
    else:
        scaled = [
            (np.asarray(features[s], dtype=np.float64) - m) / sd
            for s, m, sd in zip(fitted.signals, fitted.means, fitted.stds)
        ]
    total = sum(w * x for w, x in zip(record["weights"], scaled))
    return reranker.calibration.probabilities(total)


def test_every_surface_scores_with_the_ensemble(ensemble_run, tiny_sentence_bert_dir, tmp_path):
    from litestar.testing import TestClient

    from rerankit.export import export
    from rerankit.server import ServerSettings, create_app

    out = ensemble_run.output_dir
    # the last document has two sentences: its best-sentence scores differ from its whole ones
    docs = [*DOCS[:3], "The river is old. An apple story with apple."]
    reranker = Reranker.load(out, device="cpu", dtype="float32")
    expected = by_hand(reranker, out, tiny_sentence_bert_dir, QUERY, docs)
    ranked = reranker.rerank(QUERY, docs)
    np.testing.assert_allclose([r.score for r in sorted(ranked, key=lambda r: r.index)], expected, atol=1e-5)
    # a document's score is its own, whatever else is ranked beside it
    alone = [reranker.score([(QUERY, d)])[0] for d in docs]
    np.testing.assert_allclose(alone, expected, atol=1e-5)
    plain = Reranker.load(out, device="cpu", dtype="float32", ensemble="none")
    # the calibration and the fusion were fitted on the ensemble's score: they go with it
    assert plain.ensemble is None and plain.calibration is None and plain.fusion is None
    np.testing.assert_allclose(
        plain.score([(QUERY, d) for d in docs], raw=True), reranker.logits([QUERY] * 4, docs)
    )

    # every signal carries weight in this copy, so the export must bring each along
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
    manifest = json.loads((copy / "run.json").read_text())
    manifest["ensemble"]["weights"] = [0.2] * 5
    (copy / "run.json").write_text(json.dumps(manifest))
    weighted = Reranker.load(copy, device="cpu", dtype="float32")
    expected_copy = by_hand(weighted, copy, tiny_sentence_bert_dir, QUERY, docs)
    exported = Reranker.load(export(copy, tmp_path / "export"), device="cpu", dtype="float32")
    assert (tmp_path / "export" / "ensemble" / "encoder" / "modules.json").is_file()
    info = json.loads((tmp_path / "export" / "rerankit_export.json").read_text())
    assert info["ensemble"] == manifest["ensemble"]
    assert info["calibration"]["folded"] is False  # fitted on the ensemble's score, not the head's
    np.testing.assert_allclose(exported.score([(QUERY, d) for d in docs]), expected_copy, atol=1e-4)
    record = tmp_path / "export" / "rerankit_export.json"
    for folded, message in (("no", "expected true or false, got 'no'"), (True, "cannot be in the head")):
        damaged = json.loads(record.read_text())
        damaged["calibration"]["folded"] = folded
        record.write_text(json.dumps(damaged))
        with pytest.raises(ModelLoadError, match=f"calibration.folded: .*{message}"):
            Reranker.load(tmp_path / "export", device="cpu", dtype="float32")

    with TestClient(create_app(ServerSettings(model="in-memory"), reranker=reranker)) as client:
        wait_ready(client)
        answer = client.post("/v2/rerank", json={"query": QUERY, "documents": docs}).json()
    served = sorted(answer["results"], key=lambda r: r["index"])
    np.testing.assert_allclose([r["relevance_score"] for r in served], expected, atol=1e-5)


def test_beside_an_openvino_cross_encoder_the_sentence_encoder_runs_openvino_too(
    ensemble_run, tiny_sentence_bert_dir, monkeypatch, caplog, tmp_path
):
    import shutil

    pytest.importorskip("openvino")
    out = tmp_path / "run"  # the run with every signal weighed, whatever its fit chose
    shutil.copytree(ensemble_run.output_dir, out)
    manifest = json.loads((out / "run.json").read_text())
    manifest["ensemble"]["weights"] = [0.2] * 5
    (out / "run.json").write_text(json.dumps(manifest))
    docs = [*DOCS[:3], "The river is old. An apple story with apple."]
    in_torch = Reranker.load(out, device="cpu", dtype="float32")
    assert in_torch.backend_info["ensemble_encoder"] == {
        "runtime": "torch float32",
        "neighbour_independent": True,
    }
    assert in_torch.neighbour_independent
    # an encoder whose embeddings move with their batch makes the whole score move with it, so
    # a server does not merge requests by default
    in_torch.signals["cosine"].neighbour_independent = False
    assert not in_torch.neighbour_independent
    graph = Reranker.load(out, backend="openvino")  # the cross-encoder converted to an fp32 graph
    assert graph.backend_info["backend"] == "openvino"
    assert graph.backend_info["ensemble_encoder"] == {
        "runtime": "openvino fp32",
        "neighbour_independent": True,
    }
    # the same embeddings as torch's, so the same ensemble scores
    cosine = graph.signals["cosine"]
    cosine.forget()
    reference = CosineSignal.load(tiny_sentence_bert_dir).embed(docs)
    np.testing.assert_allclose(cosine.embed(docs), reference, atol=1e-5)
    expected = by_hand(graph, out, tiny_sentence_bert_dir, QUERY, docs)
    np.testing.assert_allclose(graph.score([(QUERY, d) for d in docs]), expected, atol=1e-5)
    # an encoder the converter refuses stays in torch, and the log says why
    import rerankit.runtimes

    def refuse(*args, **kwargs):
        raise RuntimeError("no frontend for this module")

    monkeypatch.setattr(rerankit.runtimes, "openvino_module", refuse)
    with caplog.at_level("WARNING", logger="rerankit.inference"):
        kept = Reranker.load(out, backend="openvino")
    assert kept.backend_info["ensemble_encoder"]["runtime"].startswith("torch")
    assert "sentence encoder stays in torch: RuntimeError: no frontend for this module" in caplog.text
    np.testing.assert_allclose(kept.score([(QUERY, d) for d in docs]), expected, atol=1e-4)


def test_an_openvino_bf16_sentence_encoder_embeds_as_fp32_does(tiny_sentence_bert_dir):
    """bf16 embeddings close to fp32's; where a padding multiple keeps each text's rows its own
    on this CPU, a text's cached embedding is bit for bit the one it has alone, whichever
    request embedded it first."""
    pytest.importorskip("openvino")
    from rerankit.runtimes import openvino_bf16_here

    if not openvino_bf16_here():
        pytest.skip("this CPU has no bf16 units (AVX512-BF16 or AMX) for OpenVINO to compute bf16 on")
    texts = ["apple pie", "a river runs through the old town", " ".join(["long"] * 120)]
    reference = CosineSignal.load(tiny_sentence_bert_dir).embed(texts)
    cosine = CosineSignal.load(tiny_sentence_bert_dir)
    cosine.use_openvino("bf16")
    assert cosine.runtime == "openvino bf16" and isinstance(cosine.neighbour_independent, bool)
    assert ((cosine.embed(texts) * reference).sum(axis=1) > 0.999).all()
    if not cosine.neighbour_independent:
        pytest.skip("no padding multiple keeps a bf16 row its own on this CPU")
    alone = cosine.scores([QUERY], [texts[0]])
    cosine.forget()
    first_in_company = cosine.scores([QUERY] * 3, [texts[0], texts[2], texts[1]])[0]
    assert cosine.scores([QUERY], [texts[0]])[0] == alone[0] == first_in_company


def test_the_encoder_graph_pads_to_the_first_multiple_that_keeps_rows_their_own(
    tiny_sentence_bert_dir, monkeypatch
):
    """The search over padding multiples, on a fake runtime: each row is the encoder's own
    embedding of its text, moved with the batch's padded width unless it is a multiple of
    ``block`` (or, block None, with its row count); a runtime that embeds every text alike is no
    graph of this encoder."""
    import rerankit.runtimes

    cosine = CosineSignal.load(tiny_sentence_bert_dir)
    own: dict[tuple, np.ndarray] = {}  # each text's embedding, computed once: bit for bit its own
    block: dict = {"value": 16}
    widths: list[int] = []

    def embedding(ids: np.ndarray) -> np.ndarray:
        import torch

        if tuple(ids) not in own:
            with torch.inference_mode():
                hidden = cosine.model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0]
            own[tuple(ids)] = torch.nn.functional.normalize(hidden.mean(0), dim=-1).numpy()
        return own[tuple(ids)]

    def fake_runner(model, precision):
        def run(batches, out):
            for rows, inputs in batches:
                width = inputs["input_ids"].shape[1]
                widths.append(width)
                if block["value"] is None:
                    moved = 1e-6 * len(rows)
                elif block["value"] == "foreign":
                    out[rows] = own.setdefault(("foreign",), cosine._embed_with(None, ["foreign"])[0])
                    continue
                else:
                    moved = 1e-6 * width * (width % block["value"] != 0)
                for row, ids, mask in zip(rows, inputs["input_ids"], inputs["attention_mask"]):
                    out[row] = embedding(ids[mask.astype(bool)]) + moved

        return run

    monkeypatch.setattr(rerankit.runtimes, "rows_runner", fake_runner)
    from types import SimpleNamespace

    ports = [SimpleNamespace(get_any_name=lambda n=n: n) for n in ("input_ids", "attention_mask")]
    monkeypatch.setattr(CosineSignal, "openvino_model", lambda self: SimpleNamespace(inputs=ports))
    for value, expected in ((16, 16), (32, 32)):
        block["value"] = value
        cosine.use_openvino("bf16")
        assert cosine.neighbour_independent and cosine._graph[2] == expected
        widths.clear()
        cosine.embed(["a", "a longer text of some words", "a"])
        assert widths and all(width % expected == 0 for width in widths)
    # padding every batch to the whole window (64 tokens) is a width that cannot move
    block["value"] = 10_000
    cosine.use_openvino("bf16")
    assert cosine.neighbour_independent and cosine._graph[2] == 64
    # a window no multiple divides: unpadded batches, kept where the probes agree
    window = cosine.max_length
    cosine.max_length = 40
    block["value"] = 1  # rows that never move
    cosine.use_openvino("bf16")
    assert cosine.neighbour_independent and cosine._graph[2] == 1
    block["value"] = 16
    cosine.use_openvino("bf16")
    assert not cosine.neighbour_independent and cosine._graph[2] is None
    cosine.max_length = window
    block["value"] = None  # rows that move with the batch's other rows: no padding helps
    cosine.use_openvino("bf16")
    assert not cosine.neighbour_independent and cosine._graph[2] is None
    block["value"] = "foreign"
    with pytest.raises(ValueError, match="the converted graph: not this encoder's graph"):
        cosine.use_openvino("bf16")
    assert cosine._graph[2] is None  # the graph it had stays


@pytest.mark.parametrize("case", ["beside its graph", "cosine not weighed", "reranker in torch"])
def test_a_run_with_graphs_keeps_its_sentence_encoder_converted_once(
    tiny_sentence_bert_dir, tmp_path, monkeypatch, case
):
    """graphs: auto and OpenVINO installed, an ensemble that weighs the cosine (the tiny random
    encoder's cosine carries nothing, so the fit's weights are replaced by equal ones): the run
    keeps the encoder's graph, converted once, fitted the ensemble with the encoder in the
    runtime that serves it, and says so in its report. Beside a reranker fitted in torch the
    graph is written after the fit; an ensemble that does not weigh the cosine keeps none."""
    import dataclasses

    pytest.importorskip("openvino")
    import rerankit.inference
    import rerankit.shipped
    from rerankit.ensemble import ENCODER_GRAPH

    fit = rerankit.shipped.fit_ensemble

    def weighed(*args, **kwargs):
        fitted, report = fit(*args, **kwargs)
        if case == "cosine not weighed":
            weights = tuple(0.0 if s.startswith("cosine") else 1 / 3 for s in fitted.signals)
        else:
            weights = (1 / len(fitted.signals),) * len(fitted.signals)
        return dataclasses.replace(fitted, weights=weights), report

    monkeypatch.setattr(rerankit.shipped, "fit_ensemble", weighed)
    if case == "reranker in torch":  # as on a GPU, where the shipped reranker is no graph
        monkeypatch.setattr(rerankit.inference, "serves_openvino", lambda model: False)
    convert = CosineSignal.openvino_model
    conversions = []

    def counted(self):
        conversions.append(self)
        return convert(self)

    monkeypatch.setattr(CosineSignal, "openvino_model", counted)
    train = write_jsonl(tmp_path / "train.jsonl", toy_lines(32, seed=1))
    valid_lines = [dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(16, seed=2)]
    valid = write_jsonl(tmp_path / "valid.jsonl", valid_lines)
    config = tiny_config(
        tiny_sentence_bert_dir, train, valid, tmp_path / "run", ensemble="auto", graphs="auto"
    )
    fitted = rerankit.fit(config)
    monkeypatch.undo()
    run = fitted.output_dir
    assert len(conversions) == 1
    encoder = fitted.metrics["shipped"]["encoder"]
    if case == "cosine not weighed":
        shipped = json.loads((run / "run.json").read_text())["ensemble"]
        assert {w for s, w in zip(shipped["signals"], shipped["weights"]) if s.startswith("cosine")} == {0.0}
        assert (run / "ensemble").is_dir() and not any((run / "ensemble").glob("encoder_openvino*"))
        return
    assert (run / "ensemble" / ENCODER_GRAPH).is_file()
    assert encoder == "torch float32" if case == "reranker in torch" else encoder.startswith("openvino")
    assert f"its sentence encoder in {encoder}" in (run / "report.md").read_text()
    served = Reranker.load(run)
    assert served.backend_info["backend"] == "openvino"
    # the load picks its graph again by speed: the encoder's precision follows the one it picks
    assert served.backend_info["ensemble_encoder"]["runtime"].startswith("openvino")


def test_signals_are_saved_into_a_run_folder_without_an_ensemble_folder_yet(tiny_sentence_bert_dir, tmp_path):
    """A fit whose ensemble weighs the cosine and not BM25 saves the corpus's embeddings alone."""
    from rerankit.ensemble import CORPUS_EMBEDDINGS
    from rerankit.shipped import Shipped, save_signals

    encoder = CosineSignal.load(tiny_sentence_bert_dir)
    encoder.pin(["An apple story.", "The river is old."])
    save_signals(tmp_path / "run", Shipped(None, {}, {}, {}, None, encoder))
    assert (tmp_path / "run" / "ensemble" / CORPUS_EMBEDDINGS).is_file()
    save_signals(tmp_path / "without", Shipped(None, {}, {}, {}, None, None))  # ensemble: none
    assert not (tmp_path / "without").exists()


def test_a_kept_encoder_graph_serves_and_a_foreign_one_is_converted_again(
    ensemble_run, tiny_sentence_bert_dir, monkeypatch, caplog, tmp_path
):
    """A run's ensemble folder keeps the encoder's OpenVINO graph (``fit_shipped``): a load
    reads it instead of converting; a graph of another encoder is refused, said in the log, and
    the encoder converted instead."""
    import shutil

    import torch

    pytest.importorskip("openvino")
    from rerankit.ensemble import ENCODER_GRAPH, write_encoder_graph

    out = tmp_path / "run"
    shutil.copytree(ensemble_run.output_dir, out)
    manifest = json.loads((out / "run.json").read_text())
    manifest["ensemble"]["weights"] = [0.2] * 5
    (out / "run.json").write_text(json.dumps(manifest))
    encoder = CosineSignal.load(tiny_sentence_bert_dir)
    graph_file = out / "ensemble" / ENCODER_GRAPH
    assert write_encoder_graph(encoder, graph_file)
    assert graph_file.is_file() and graph_file.with_suffix(".bin").is_file()
    assert not graph_file.parent.with_name(graph_file.parent.name + ".staging").exists()
    docs = [*DOCS[:3], "The river is old. An apple story with apple."]
    expected = by_hand(Reranker.load(out, backend="openvino"), out, tiny_sentence_bert_dir, QUERY, docs)

    import rerankit.runtimes

    def refuse(*args, **kwargs):
        raise RuntimeError("no conversion wanted")

    from rerankit.export import export

    exported = export(out, tmp_path / "export", formats=["openvino"])  # converts: not refused yet
    assert (exported / "ensemble" / ENCODER_GRAPH).is_file()
    with monkeypatch.context() as patch:
        patch.setattr(rerankit.runtimes, "openvino_module", refuse)
        kept = Reranker.load(out, backend="openvino")
        kept_export = Reranker.load(exported, backend="openvino", dtype="float32")
        # an encoder the converter refuses costs the export its encoder graph, said in the log
        with caplog.at_level("WARNING", logger="rerankit.ensemble"):
            without = export(out, tmp_path / "export-without", formats=["openvino"])
    assert "graph was not written: RuntimeError: no conversion wanted" in caplog.text
    assert (without / "openvino").is_dir() and not any((without / "ensemble").glob("encoder_openvino*"))
    for served in (kept, kept_export):
        assert served.backend_info["ensemble_encoder"]["runtime"] == "openvino fp32"
        np.testing.assert_allclose(served.score([(QUERY, d) for d in docs]), expected, atol=1e-5)

    other = CosineSignal.load(tiny_sentence_bert_dir)
    with torch.no_grad():
        for weight in other.model.parameters():
            weight.copy_(torch.randn_like(weight))
    other.write_openvino(graph_file)
    with caplog.at_level("WARNING", logger="rerankit.inference"):
        converted = Reranker.load(out, backend="openvino")
    assert "not this encoder's graph" in caplog.text and "converting the sentence encoder" in caplog.text
    assert converted.backend_info["ensemble_encoder"]["runtime"] == "openvino fp32"
    np.testing.assert_allclose(converted.score([(QUERY, d) for d in docs]), expected, atol=1e-5)


def test_a_rank_gauss_run_ships_its_maps_and_serves_with_them(tiny_sentence_bert_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", toy_lines(32, seed=3))
    valid_lines = [dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(12, seed=4)]
    valid = write_jsonl(tmp_path / "valid.jsonl", valid_lines)
    config = tiny_config(
        tiny_sentence_bert_dir,
        train,
        valid,
        tmp_path / "run",
        evaluation={"candidates": "deployed", "depth": 8},
        ensemble="auto",
        ensemble_normalization="rank_gauss",
    )
    out = rerankit.fit(config).output_dir
    record = json.loads((out / "run.json").read_text())["ensemble"]
    assert record["normalization"] == "rank_gauss"
    assert len(record["knots"]) == len(record["normal_at"]) == len(record["signals"]) == 5
    # the maps were fitted on the 12 x 8 validation pairs: normal scores of their positions
    assert all(
        2 <= len(k) <= 96 and all(abs(v) < 2.7 for v in n)
        for k, n in zip(record["knots"], record["normal_at"])
    )
    docs = [*DOCS[:3], "The river is old. An apple story with apple."]
    reranker = Reranker.load(out, device="cpu", dtype="float32")
    assert reranker.ensemble.normalization == "rank_gauss"
    assert "on one scale by the normal scores of its validation quantiles" in (out / "report.md").read_text()
    expected = by_hand(reranker, out, tiny_sentence_bert_dir, QUERY, docs)
    np.testing.assert_allclose(reranker.score([(QUERY, d) for d in docs]), expected, atol=1e-5)
    np.testing.assert_allclose([reranker.score([(QUERY, d)])[0] for d in docs], expected, atol=1e-5)


def test_a_run_whose_ensemble_signals_are_gone_says_so(ensemble_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ensemble_run.output_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "ensemble" / "bm25_stats.json").unlink()
    with pytest.raises(ModelLoadError, match=r"the ensemble's signals cannot be read .*ensemble='none'"):
        Reranker.load(copy, device="cpu", dtype="float32")
    assert Reranker.load(copy, device="cpu", dtype="float32", ensemble="none").ensemble is None


def test_the_cli_turns_the_ensemble_off(ensemble_run, tmp_path):
    from click.testing import CliRunner

    from rerankit.cli import main

    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n")
    args = ["rerank", "--model", str(ensemble_run.output_dir), "--query", QUERY, "--docs", str(docs)]
    args += ["--dtype", "float32", "--json", "--raw"]
    on = CliRunner().invoke(main, args)
    off = CliRunner().invoke(main, [*args, "--ensemble", "none"])
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    logits = Reranker.load(ensemble_run.output_dir, device="cpu", dtype="float32").logits([QUERY] * 4, DOCS)
    by_index = {r["index"]: r["score"] for r in json.loads(off.stdout)}
    np.testing.assert_allclose([by_index[i] for i in range(4)], logits, atol=1e-5)
    assert json.loads(on.stdout) != json.loads(off.stdout)


def test_the_corpus_embeddings_are_kept_and_read_back(tiny_sentence_bert_dir, tmp_path):
    """Pinned corpus embeddings give the scores a fresh encoder pass gives, cost no pass, and a
    file that does not fit the encoder is refused."""
    corpus = ["apple story with apple", "the river is old", "zinc of the old quartz"]
    fresh = CosineSignal.load(tiny_sentence_bert_dir)
    expected = fresh.scores([QUERY] * 3, corpus)
    fresh.pin(corpus)
    fresh.save_pinned(tmp_path / "corpus.npz")
    again = CosineSignal.load(tiny_sentence_bert_dir)
    again.load_pinned(tmp_path / "corpus.npz")
    assert again.pinned == 3

    def no_pass(texts):  # only the query is new: one text embedded
        assert list(texts) == [QUERY], texts
        return CosineSignal.embed(again, texts)

    again.embed = no_pass
    np.testing.assert_allclose(again.scores([QUERY] * 3, corpus), expected, atol=1e-6)
    np.savez(tmp_path / "bad.npz", keys=np.array([b"x" * 16], dtype="S16"), embeddings=np.ones((1, 5)))
    with pytest.raises(ValueError, match="rows must be 64 finite numbers"):
        again.load_pinned(tmp_path / "bad.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a corpus-embeddings file"):
        again.load_pinned(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad.npz", other=np.ones(2))
    with pytest.raises(ValueError, match="not a corpus-embeddings file"):
        again.load_pinned(tmp_path / "bad.npz")


def test_bulk_eval_keeps_the_cross_encoder_logits_beside_the_ensembles_score(ensemble_run, tmp_path):
    from conftest import write_beir

    from rerankit.held_out import evaluate_beir
    from rerankit.held_out_bulk import BulkScoring, Group

    reranker = Reranker.load(ensemble_run.output_dir, device="cpu", dtype="float32")
    lines = toy_lines(4, seed=9)
    groups = [
        Group(line["query_text"], [d["text"] for d in line["positives"] + line["negatives"]], [None] * 6)
        for line in lines
    ]
    scored = BulkScoring(reranker, tmp_path / "work", {"shard_size": 6, "progress": False}).scores(groups)
    for group, got in zip(groups, scored):
        queries = [group.query] * len(group.documents)
        logits = reranker.logits(queries, group.documents)
        final = reranker.final_scores(logits, reranker.signal_scores(queries, group.documents))
        np.testing.assert_allclose(got.cross_encoder, logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.final, final, rtol=0, atol=1e-5)
        assert np.abs(got.final - got.cross_encoder).max() > 1e-3  # the ensemble moved them
    # so the depth table's two rows come out as in process
    folder = write_beir(tmp_path / "beir", toy_lines(8, seed=9))
    here = evaluate_beir(reranker, folder, top_k=5, depths=(3, 5))
    bulk = BulkScoring(reranker, tmp_path / "work", {"progress": False})
    through_bulk = evaluate_beir(reranker, folder, top_k=5, depths=(3, 5), bulk=bulk)
    for depth, rows in here["depths"].items():
        for row, metrics in rows.items():
            assert through_bulk["depths"][depth][row] == pytest.approx(metrics, abs=1e-6), (depth, row)
