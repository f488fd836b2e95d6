"""The embedded default end to end: configs/train_qlora.yaml on the bundled data (minutes)."""

from pathlib import Path

import pytest

import rerankit

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_default_config_beats_the_untrained_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = rerankit.fit(ROOT / "configs/train_qlora.yaml", output_dir=tmp_path / "run")
    m = result.metrics
    assert m["valid_queries"] >= 100
    assert m["best"]["ndcg@10"] >= m["baseline"]["ndcg@10"] + 0.1
    assert m["best"]["mrr@10"] > m["baseline"]["mrr@10"]

    reranker = rerankit.Reranker.load(result.output_dir)
    docs = list((ROOT / "examples/data/sample_docs.jsonl").read_text().splitlines())
    import json

    texts = [json.loads(d)["text"] for d in docs]
    top = reranker.rerank("Which NFL team represented the AFC at Super Bowl 50?", texts, top_k=3)
    assert any("Denver Broncos" in r.text for r in top)
