"""Calibrated relevance scores and the fusion with the first stage learned on validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config

from rerankit import Reranker
from rerankit.calibration import Calibration, expected_calibration_error, fit_calibration
from rerankit.export import export
from rerankit.fusion import LearnedFusion, fit_fusion, rrf
from rerankit.held_out import evaluate_seed_file
from rerankit.scoring import sigmoid
from rerankit.selection import beats_noise, gain_and_error

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple number 3"
DOCS = [
    "the apple story is old",
    "zinc oxide and quartz",
    "a big river near the castle",
    "apple and apple near the old people",
    "cobalt ion argon",
]
FIRST_STAGE = [0.2, 3.0, 1.5, 0.1, 2.2]


def test_platt_scaling_recovers_a_shifted_scale_and_lowers_ece():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, 20_000)
    labels = rng.random(20_000) < sigmoid(2 * logits - 7)
    calibration = fit_calibration(logits, labels)
    assert calibration.scale == pytest.approx(2, abs=0.1) and calibration.bias == pytest.approx(-7, abs=0.3)
    before = expected_calibration_error(sigmoid(logits), labels)
    after = expected_calibration_error(calibration.probabilities(logits), labels)
    assert after < 0.02 < 0.1 < before
    assert fit_calibration([1.0, 2.0], [1, 1]) is None  # one class: nothing to fit


def test_ece_counts_each_bin_by_its_size():
    assert expected_calibration_error([0.9] * 10, [0] * 10) == pytest.approx(0.9)
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)


def _fusion_case(first_stage_noise: float | None, queries: int = 60, seed: int = 1):
    """Relevance labels, a noisy reranker, and a first stage with its own independent noise (or
    scores unrelated to relevance), over 10 candidates per query."""
    rng = np.random.default_rng(seed)
    relevant = [rng.random(10) < 0.3 for _ in range(queries)]
    reranker = [r + rng.normal(0, 0.8, 10) for r in relevant]
    if first_stage_noise is None:
        first = [rng.normal(0, 1, 10) for _ in relevant]
    else:
        first = [r + rng.normal(0, first_stage_noise, 10) for r in relevant]

    def quality(scores, queries):  # precision of the top document
        return float(np.mean([relevant[q][np.argmax(s)] for q, s in zip(queries, scores)]))

    return reranker, first, quality


def test_fit_fusion_keeps_the_grid_best_when_the_first_stage_clearly_adds():
    reranker, first, quality = _fusion_case(first_stage_noise=0.8)
    everyone = range(len(reranker))
    fusion, summary = fit_fusion(reranker, first, quality)
    assert summary["kept"] == "fitted" and summary["gain_over_reranker"] > summary["standard_error"] > 0
    assert summary["fitted"]["value"] == max(max(v.values()) for v in summary["grid"].values())
    assert fusion == LearnedFusion(summary["fitted"]["method"], summary["fitted"]["weight"])
    assert fusion.weight < 1
    assert summary["value"] == quality([fusion.combine(r, f) for r, f in zip(reranker, first)], everyone)
    assert summary["value"] > max(quality(reranker, everyone), quality(first, everyone))
    assert summary["untuned_rrf"] == quality([rrf([f, r]) for r, f in zip(reranker, first)], everyone)


def test_fit_fusion_keeps_the_reranker_alone_when_the_grid_gains_only_in_sample():
    # a first stage that knows nothing, on 40 queries where one weight happens to fit them
    reranker, first, quality = _fusion_case(first_stage_noise=None, queries=40, seed=9)
    fusion, summary = fit_fusion(reranker, first, quality)
    lucky = LearnedFusion(summary["fitted"]["method"], summary["fitted"]["weight"])
    in_sample = np.array(
        [
            quality([lucky.combine(r, f)], [q]) - quality([r], [q])
            for q, (r, f) in enumerate(zip(reranker, first))
        ]
    )
    gain, error = gain_and_error(in_sample)
    assert beats_noise(gain, error, len(in_sample))  # judged on the queries it was fitted on, it wins...
    # ...but refitted without each fold's queries it does not, so the reranker alone is kept
    assert summary["kept"] == "reranker alone" and summary["gain_over_reranker"] <= summary["standard_error"]
    assert fusion == LearnedFusion("zscore", 1.0)
    for r, f in zip(reranker, first):
        np.testing.assert_array_equal(np.argsort(-fusion.combine(r, f)), np.argsort(-r))
    assert summary["value"] == quality(reranker, range(len(reranker)))


def test_the_fusion_report_says_what_was_kept_and_why(tiny_bert_run):
    from rerankit.report import fusion_lines, verdict

    result, _ = tiny_bert_run
    metrics = dict(result.metrics)
    fusion = metrics["fusion"]
    lines = "\n".join(fusion_lines(metrics))
    assert f"{fusion['gain_over_reranker']:+.4f} ± {fusion['standard_error']:.4f}" in lines
    assert f"{fusion['folds']} folds" in lines
    kept_alone = {**fusion, "kept": "reranker alone", "method": "zscore", "weight": 1.0}
    alone = "\n".join(fusion_lines({**metrics, "fusion": kept_alone}))
    assert "within noise, so the reranker alone is kept" in alone
    assert f"grid's best: {fusion['fitted']['method']}" in alone
    assert "no fusion clearly gains" in verdict({**metrics, "fusion": kept_alone})
    one_query = "\n".join(fusion_lines({**metrics, "fusion": {**kept_alone, "queries": 1}}))
    assert "fewer than two validation queries" in one_query
    # a run written before the held-out check: its table, no verdict
    old = {
        k: v for k, v in fusion.items() if k not in ("gain_over_reranker", "standard_error", "fitted", "kept")
    }
    assert "folds" not in "\n".join(fusion_lines({**metrics, "fusion": old}))


def test_the_run_carries_calibration_and_fusion_fitted_on_validation(tiny_bert_run):
    result, _ = tiny_bert_run
    manifest = json.loads((result.output_dir / "run.json").read_text())
    calibration, fusion = result.metrics["calibration"], result.metrics["fusion"]
    assert calibration["pairs"] == result.metrics["valid_pairs"]
    assert calibration["ece_after"] < calibration["ece_before"]
    assert manifest["calibration"] == calibration["calibration"]
    assert (
        manifest["fusion"] == LearnedFusion(fusion["method"], fusion["weight"], fusion["fitted_on"]).to_dict()
    )
    assert (
        fusion["fitted_on"]
        == "bm25 (over the validation candidates), validation queries, the cross-encoder's score"
    )
    report = (result.output_dir / "report.md").read_text()
    assert "## Fusion with the first stage" in report and "## Calibration" in report
    assert f"{fusion['value']:.4f}" in report
    reranker = Reranker.load(result.output_dir, device="cpu", dtype="float32")
    assert reranker.fusion == LearnedFusion.from_dict(manifest["fusion"])
    logits = reranker.logits([QUERY] * len(DOCS), DOCS)
    expected = Calibration.from_dict(manifest["calibration"]).probabilities(logits)
    np.testing.assert_allclose(reranker.score([(QUERY, d) for d in DOCS]), expected, rtol=1e-12)
    assert not np.allclose(expected, sigmoid(logits))


def test_fusion_sees_only_the_validation_queries(tiny_bert_dir, toy_data, tmp_path, monkeypatch):
    import rerankit.validation

    seen = []

    def spy(reranker_logits, first_stage, quality, **options):
        seen.append(len(reranker_logits))
        return fit_fusion(reranker_logits, first_stage, quality, **options)

    monkeypatch.setattr(rerankit.validation, "fit_fusion", spy)
    train, valid = toy_data
    result = rerankit.fit(tiny_config(tiny_bert_dir, train, valid, tmp_path / "run", training={"epochs": 1}))
    assert seen == [result.metrics["valid_queries"]] == [16]

    def never(*args):
        raise AssertionError("evaluation must not refit the fusion")

    monkeypatch.setattr(rerankit.validation, "fit_fusion", never)
    reranker = Reranker.load(result.output_dir)  # as validation measured it: the default precision
    evaluated = evaluate_seed_file(reranker, valid)  # held-out data: the stored fusion only
    assert evaluated["fused_name"].startswith("fused: learned")
    assert evaluated["fused"]["ndcg@10"] == pytest.approx(result.metrics["fusion"]["value"], abs=1e-6)


def test_rerank_with_a_first_stage_uses_the_learned_fusion(fp32_reranker):
    ranked = fp32_reranker.rerank(QUERY, DOCS, first_stage=FIRST_STAGE)
    logits = fp32_reranker.logits([QUERY] * len(DOCS), DOCS)
    fused = fp32_reranker.fusion.combine(logits, np.array(FIRST_STAGE))
    assert ranked.indices == list(np.argsort(-fused, kind="stable"))
    assert [r.fused_score for r in ranked] == pytest.approx(sorted(fused, reverse=True))
    # Two first stages: reciprocal-rank fusion (the learned one is for one first stage).
    both = fp32_reranker.rerank(QUERY, DOCS, first_stage=[FIRST_STAGE, FIRST_STAGE[::-1]])
    assert [r.fused_score for r in both] == pytest.approx(
        sorted(rrf([np.array(FIRST_STAGE), np.array(FIRST_STAGE[::-1]), logits]), reverse=True)
    )


def test_export_folds_the_calibration_and_keeps_the_fusion(tiny_bert_run, tmp_path):
    from sentence_transformers import CrossEncoder

    run = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    out = export(tiny_bert_run[0].output_dir, tmp_path / "export")
    info = json.loads((out / "rerankit_export.json").read_text())
    assert info["calibration"]["folded"] is True and info["fusion"] == run.fusion.to_dict()
    exported = Reranker.load(out, device="cpu", dtype="float32")
    assert exported.calibration is None and exported.fusion == run.fusion
    pairs = [(QUERY, d) for d in DOCS]
    np.testing.assert_allclose(exported.score(pairs), run.score(pairs), atol=1e-6)
    # Any tool's sigmoid of the exported logit is the calibrated probability.
    np.testing.assert_allclose(
        CrossEncoder(str(out), device="cpu").predict(pairs), run.score(pairs), atol=1e-5
    )
    ranked, again = (
        run.rerank(QUERY, DOCS, first_stage=FIRST_STAGE),
        exported.rerank(QUERY, DOCS, first_stage=FIRST_STAGE),
    )
    assert ranked.indices == again.indices


def test_server_extension_field_fuses_like_the_reranker(make_client, fp32_reranker):
    client = make_client()
    expected = fp32_reranker.rerank(QUERY, DOCS, first_stage=FIRST_STAGE)
    body = {"query": QUERY, "documents": DOCS, "first_stage_scores": FIRST_STAGE}
    answer = client.post("/v2/rerank", json=body).json()
    assert [r["index"] for r in answer["results"]] == expected.indices
    assert [r["relevance_score"] for r in answer["results"]] == pytest.approx([r.score for r in expected])
    assert [r["fused_score"] for r in answer["results"]] == pytest.approx([r.fused_score for r in expected])
    plain = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert all("fused_score" not in r for r in plain["results"])  # Cohere clients see Cohere's shape
    short = client.post("/v2/rerank", json={**body, "first_stage_scores": FIRST_STAGE[:2]})
    assert short.status_code == 400 and short.json()["detail"].startswith("first_stage_scores: expected 5")


def test_adapters_fuse_with_the_retrievers_scores(fp32_reranker, rerankit_server):
    import asyncio

    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerankit.integrations.langchain import RerankitCompressor
    from rerankit.integrations.llamaindex import RerankitRerank

    expected = [DOCS[i] for i in fp32_reranker.rerank(QUERY, DOCS, first_stage=FIRST_STAGE).indices]
    documents = [Document(page_content=d, metadata={"score": s}) for d, s in zip(DOCS, FIRST_STAGE)]
    nodes = [NodeWithScore(node=TextNode(text=d), score=s) for d, s in zip(DOCS, FIRST_STAGE)]
    for where in ({"reranker": fp32_reranker}, {"base_url": rerankit_server, "api_key": "k3y"}):
        compressor = RerankitCompressor(**where, top_n=None, first_stage_key="score")
        assert [d.page_content for d in compressor.compress_documents(documents, QUERY)] == expected
        again = asyncio.run(compressor.acompress_documents(documents, QUERY))
        assert [d.page_content for d in again] == expected
        postprocessor = RerankitRerank(**where, top_n=len(DOCS), fuse_retrieval_score=True)
        ranked = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
        assert [n.node.get_content() for n in ranked] == expected
    with pytest.raises(ValueError, match=r"document 1: metadata\['score'\] is None"):
        RerankitCompressor(reranker=fp32_reranker, first_stage_key="score").compress_documents(
            [documents[0], Document(page_content="x")], QUERY
        )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("fusion", {"method": "evil", "weight": 0.5}, "fusion: fusion: expected a method"),
        ("fusion", "rrf", "fusion: expected an object"),
        ("calibration", {"scale": "x", "bias": 0}, "calibration: scale must be a number"),
        (
            "prompt",
            {"name": "p", "prefix": "", "body": "{query}", "suffix": ""},
            "prompt: prompt body must end",
        ),
    ],
)
def test_a_damaged_manifest_field_is_named(tiny_bert_run, tmp_path, key, value, message):
    import shutil

    from rerankit.errors import ModelLoadError

    run = tmp_path / "run"
    shutil.copytree(tiny_bert_run[0].output_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    manifest = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**manifest, key: value}))
    with pytest.raises(ModelLoadError, match=rf"run\.json: {message}"):
        Reranker.load(run, device="cpu", dtype="float32")
