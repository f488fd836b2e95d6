"""Reranker.load / rerank / score and the merged export, on the tiny trained BERT run."""

import numpy as np
import pytest

from rerankit import Reranker
from rerankit.errors import ModelLoadError, RerankitError
from rerankit.export import export

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = [
    "zinc of the old quartz",
    "apple story with apple",
    "the river and the river is old",
    "many people see the apple near the apple",
    "zinc " * 60,
]


@pytest.fixture(scope="module")
def reranker(tiny_bert_run):
    return Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")


def test_rerank_orders_results_best_first(reranker):
    results = reranker.rerank(QUERY, DOCS)
    assert [r.rank for r in results] == list(range(len(DOCS)))
    assert sorted(r.index for r in results) == list(range(len(DOCS)))
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r.text == DOCS[r.index] for r in results)
    # the toy task taught it that "noise" words (zinc, quartz) mark negatives
    assert {results[-1].index, results[-2].index} == {0, 4}
    top = reranker.rerank(QUERY, DOCS, top_k=2)
    assert list(top) == list(results[:2]) and top.indices == results.indices[:2]
    assert reranker.rerank(QUERY, []) == () and reranker.score([]) == []


def test_rerank_fuses_with_first_stage_scores(reranker):
    from rerankit.fusion import rrf

    plain = reranker.rerank(QUERY, DOCS)
    own = np.array([r.score for r in sorted(plain, key=lambda r: r.index)])
    logits = reranker.logits([QUERY] * len(DOCS), DOCS)
    # a first stage that ranks the documents in the reverse of the reranker's order
    reverse = -own
    bm25_like = np.arange(len(DOCS), 0, -1, dtype=float)  # input order, best first
    for first_stage in (reverse, [reverse, bm25_like]):
        if isinstance(first_stage, np.ndarray):  # one first stage: the fusion learned on validation
            fused = reranker.fusion.combine(logits, first_stage)
        else:  # several: reciprocal-rank fusion of every ranking
            fused = rrf([*first_stage, logits])
        results = reranker.rerank(QUERY, DOCS, first_stage=first_stage, top_k=3)
        assert results.indices == list(np.argsort(-fused, kind="stable")[:3])
        assert [r.fused_score for r in results] == pytest.approx(sorted(fused, reverse=True)[:3])
        assert all(r.score == pytest.approx(own[r.index]) for r in results)  # the reranker's own
    # a first stage that agrees with the reranker changes nothing
    assert reranker.rerank(QUERY, DOCS, first_stage=own).indices == plain.indices
    assert all(r.fused_score is None for r in plain)


def test_rerank_rejects_first_stage_scores_that_do_not_fit(reranker):
    with pytest.raises(ValueError, match=r"first_stage: expected 5 scores \(one per document\), got 4"):
        reranker.rerank(QUERY, DOCS, first_stage=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"first_stage\[1\]: expected 5 scores"):
        reranker.rerank(QUERY, DOCS, first_stage=[[1, 2, 3, 4, 5], [1, 2]])
    with pytest.raises(ValueError, match=r"first_stage\[2\]: expected a finite number, got nan"):
        reranker.rerank(QUERY, DOCS, first_stage=[1, 2, float("nan"), 4, 5])


def test_scores_are_calibrated_sigmoids_of_raw_and_independent_of_neighbours(reranker):
    pairs = [(QUERY, d) for d in DOCS]
    raw = np.array(reranker.score(pairs, raw=True))
    scale, bias = reranker.calibration.scale, reranker.calibration.bias  # fitted on validation
    assert np.allclose(reranker.score(pairs), 1 / (1 + np.exp(-(scale * raw + bias))), atol=1e-7)
    alone = [reranker.score([p], raw=True)[0] for p in pairs]
    np.testing.assert_allclose(alone, raw, atol=1e-5)
    reversed_scores = reranker.score(pairs[::-1], raw=True)[::-1]
    np.testing.assert_allclose(reversed_scores, raw, atol=1e-5)


def test_document_is_truncated_never_the_query(reranker):
    from rerankit.encoding import encode_pairs

    batch = encode_pairs(reranker.tokenizer, [QUERY], ["apple " * 500], reranker.max_length)
    assert batch["input_ids"].shape[1] == reranker.max_length
    tokens = reranker.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[1:5] == ["tell", "me", "about", "apple"]
    with pytest.raises(ValueError, match="leaves no room for the document"):
        reranker.score([("apple " * 100, "short")])


def test_bf16_load_widens_logits_before_the_sigmoid_and_ranks_alike(tiny_bert_run, reranker):
    import torch

    half = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert set(half.rerank(QUERY, DOCS).indices[-2:]) == {0, 4}
    # Push every logit far into the sigmoid's flat end, where bf16 (8 significant bits) holds
    # nothing but 1.0: distinct logits must still give distinct scores below 1.
    with torch.no_grad():
        half.model.classifier.bias += 12.0
    pairs = [(QUERY, d) for d in DOCS]
    raw = half.logits([QUERY] * len(DOCS), DOCS)
    assert raw.dtype == np.float32 and raw.min() > 8
    scores = np.array(half.score(pairs))
    assert scores.max() < 1.0
    assert len(set(scores.tolist())) == len(set(raw.tolist()))
    expected = half.calibration.probabilities(raw.astype(np.float64))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


def test_export_loads_in_sentence_transformers_with_the_same_scores(tiny_bert_run, reranker, tmp_path):
    from sentence_transformers import CrossEncoder

    out = export(tiny_bert_run[0].output_dir, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not list(out.glob("adapter_*"))
    pairs = [(QUERY, d) for d in DOCS]
    ours = np.array(reranker.score(pairs))
    theirs = CrossEncoder(str(out), device="cpu").predict(pairs)
    assert np.max(np.abs(ours - theirs)) <= 1e-4
    again = Reranker.load(out, device="cpu", dtype="float32")
    np.testing.assert_allclose(again.score(pairs), ours, atol=1e-5)
    with pytest.raises(RerankitError, match="exists; pass --overwrite"):
        export(tiny_bert_run[0].output_dir, out)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="nothing-here: no such folder"):
        Reranker.load(tmp_path / "nothing-here")
