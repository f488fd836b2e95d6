"""benchmarks/fusion_normalization.py: the probed fusions keep a document's score its own,
the first is the run's shipped fusion, and the test questions exclude the ones asked for."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rerankit.ensemble import Ensemble, equal_weights

pytestmark = pytest.mark.smoke

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = ("reranker", "bm25", "bm25_sentence", "cosine", "cosine_sentence")


def _load_probe():
    spec = importlib.util.spec_from_file_location(
        "fusion_normalization", ROOT / "benchmarks" / "fusion_normalization.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _signals(rng, n):
    """Pairs whose every signal leans towards the relevant ones, BM25 with a long upper tail."""
    labels = (rng.random(n) < 0.1).astype(int)
    columns = [rng.normal(size=n) + 2 * labels, rng.exponential(size=n) + labels]
    columns += [rng.exponential(size=n) + labels, rng.random(n) + 0.3 * labels, rng.random(n)]
    return np.stack(columns, 1), labels


def test_variants_are_fitted_maps_of_each_pair_and_the_first_is_the_shipped_fusion():
    probe = _load_probe()
    rng = np.random.default_rng(0)
    valid, labels = _signals(rng, 600)
    ensemble = Ensemble(SIGNALS, equal_weights(SIGNALS), tuple(valid.mean(0)), tuple(valid.std(0)))
    fused = probe.variants(ensemble, valid, labels)
    assert next(iter(fused)).startswith("shipped")
    assert len(fused) == 2 + len(SIGNALS) + len(probe.CLIPS) + 5

    test, test_labels = _signals(rng, 90)
    shipped = shipped_of(fused)(test)
    assert shipped == pytest.approx(ensemble.combine({s: test[:, i] for i, s in enumerate(SIGNALS)}))
    for name, variant in fused.items():
        whole = variant(test)
        assert whole.shape == (90,) and np.isfinite(whole).all(), name
        # a document's score does not depend on what else is scored with it
        assert variant(test[:7]) == pytest.approx(whole[:7]), name
        # every variant ranks a relevant pair above a non-relevant one more often than not
        relevant, other = whole[test_labels == 1], whole[test_labels == 0]
        assert (relevant[:, None] > other[None, :]).mean() > 0.6, name

    # rank-Gauss: a pair far past every validation pair gets the normal score of the top
    # quantile, where the z-score lets it count without bound
    extreme = valid[:3] * 0 + valid.max(0) * 10
    assert np.all(fused["normal scores (rank-Gauss), every signal"](extreme) < 4)
    assert np.all(shipped_of(fused)(extreme) > 20)


def shipped_of(fused):
    return next(iter(fused.values()))


def test_fresh_test_questions_leave_out_the_benchmark_sample(tmp_path):
    probe = _load_probe()
    docs = {f"d{i}": f"topic{i} word{i} filler text" for i in range(8)}
    queries = {f"q{i}": f"topic{i} word{i}" for i in range(8)}
    positives = {f"q{i}": [f"d{i}"] for i in range(8)}
    first, qids = probe.test_set((docs, queries, positives), 3, seed=1)
    assert len(first) == 3 and all(len(c) == 8 for c in first.candidates)
    # BM25 finds each query's own document first: a perfect first stage, nothing missed
    assert first.per_query(list(map(np.asarray, first.first_stage))) == pytest.approx([1.0] * 3)
    assert first.missed == (0, 0, 0)
    fresh, fresh_ids = probe.test_set((docs, queries, positives), 10, seed=2, exclude=set(qids))
    assert len(fresh) == 5 and not set(fresh_ids) & set(qids)


def test_markdown_shows_each_case_with_the_paired_gain():
    probe = _load_probe()
    row = {"variant": "shipped: z-score", "valid": 0.9, "test": 0.88, "fresh": 0.89, "gain": 0.0}
    case = {
        "label": "SQuAD seed 42",
        "domain": "squad",
        "slice": "full",
        "run": "outputs/run",
        "validation_queries": 60,
        "test_queries": {"test": 200, "fresh": 400},
        "bm25": {"test": 0.8352, "fresh": 0.84},
        "rows": [row | {"gain_error": 0.0}, row | {"variant": "tanh", "gain": 0.003, "gain_error": 0.002}],
    }
    result = {"date": "2026-12-08", "commit": "abc1234", "machine": "cpu", "fresh": True, "cases": [case]}
    text = probe.markdown(result)
    assert "| fusion | valid | test | fresh | gain ± error |" in text
    assert "| tanh | 0.9000 | 0.8800 | 0.8900 | +0.0030 ± 0.0020 |" in text
    assert "test: 200 questions, BM25 0.8352" in text
    json.dumps(result)
