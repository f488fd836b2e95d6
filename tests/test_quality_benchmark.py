"""benchmarks/quality.py: the article split, train-side-only mining and the test candidates."""

import importlib.util
import json
from pathlib import Path

import pytest

from rerankit.data import read_records

pytestmark = pytest.mark.smoke

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def squad_like(tmp_path):
    """Article 0 is a test article, 1 and 2 are train articles (as in SQuAD's BEIR ids)."""
    words = {"0": "volcano lava eruption", "1": "violin orchestra concert", "2": "glacier ice snow"}
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for art, topic in words.items():
        for para in range(4):
            corpus.append(
                {
                    "_id": f"{art}_{para}",
                    "title": f"Article {art}",
                    "text": f"{topic} paragraph {para} " + f"detail{art}{para} " * 3,
                }
            )
            qid = f"q{art}{para}"
            queries.append({"_id": qid, "text": f"{topic.split()[0]} detail{art}{para}"})
            qrels.append(f"{qid}\t{art}_{para}\t1")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (tmp_path / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    return tmp_path


def test_sides_are_disjoint_and_mining_stays_on_the_train_side(squad_like, tmp_path):
    bench = _load_benchmark()
    sides = bench.split_by_article(squad_like)
    train_docs, train_queries, _ = sides["train"]
    test_docs, test_queries, _ = sides["test"]
    assert {bench.article(d) for d in train_docs} == {"1", "2"}
    assert {bench.article(d) for d in test_docs} == {"0"}
    assert not set(train_queries) & set(test_queries)
    assert len(sides["all"][0]) == 12

    files = bench.prepare_training_files(sides["train"], None, 3, seed=1, work=tmp_path / "w")
    train, _ = read_records(files["train"])
    valid, _ = read_records(files["valid"])
    assert files["train_queries"] + files["valid_queries"] == 8
    assert not {r.query for r in train} & {r.query for r in valid}
    for record in train + valid:
        assert len(record.negatives) == 3
        assert {bench.article(d.doc_id) for d in record.negatives} <= {"1", "2"}

    test = bench.first_stage_candidates(sides["all"], None, top_k=5, seed=1)
    assert test["qids"] == sorted(test_queries)
    assert all(len(ids) == 5 for ids in test["hits"])
    # BM25 finds each test paragraph first (its unique detail word): a perfect first stage
    assert bench.metrics_of(test, test["bm25"])["ndcg@10"] == pytest.approx(1.0)
    # the reverse order puts the positive last of 5
    reverse = bench.metrics_of(test, [-s for s in test["bm25"]])
    assert reverse["mrr@10"] == pytest.approx(0.2)


def test_markdown_shows_every_row_against_bm25():
    bench = _load_benchmark()
    result = {
        "protocol": {
            "test_queries": 3,
            "top_k": 30,
            "test_corpus": 12,
            "train_queries": 5,
            "valid_queries": 1,
            "mined_negatives": 15,
            "epochs": 1,
            "seed": 42,
        },
        "machine": {"cores": 2},
        "total_s": 60.0,
        "rows": [
            {"name": "BM25", "ndcg@10": 0.8, "mrr@10": 0.7},
            {
                "name": "rerankit (QLoRA)",
                "ndcg@10": 0.9,
                "mrr@10": 0.85,
                "wall_s": 12.0,
                "peak_rss_mib": 2048.0,
                "valid_best": {"ndcg@10": 0.95},
            },
            {"name": "rerankit (QLoRA) ⊕ BM25 (RRF)", "fused": True, "ndcg@10": 0.93, "mrr@10": 0.9},
            {"name": "sentence-transformers peer", "ndcg@10": 0.91, "mrr@10": 0.8},
            {
                "name": "sentence-transformers peer ⊕ BM25 (RRF)",
                "fused": True,
                "ndcg@10": 0.95,
                "mrr@10": 0.9,
            },
        ],
    }
    table = bench.markdown(result)
    assert "| rerankit (QLoRA) | 0.9000 | +0.1000 | 0.8500 | 12 s | 2048 MiB | 0.9500 |" in table
    assert "| BM25 | 0.8000 | +0.0000 |" in table
    assert "Target: the reranker alone ≥ BM25: +0.1000, met." in table
    # the peer's fused row is not the peer; the unfused rows are what the targets compare
    assert "above the sentence-transformers peer: -0.0100 against its best run, NOT met" in table
    assert "a fused pipeline ≥ 0.90 NDCG@10: best 0.9300 (rerankit (QLoRA) ⊕ BM25 (RRF)), met." in table
    assert "seed 42; 2 CPU cores." in table  # a result from before the CPU was recorded
    # the CPU's flags and the training precision, which decide how comparable two runs are
    result["machine"] |= {"cpu": "EPYC; flags: avx2", "training_precision": "fp32"}
    assert "seed 42; 2 CPU cores (EPYC; flags: avx2), training in fp32." in bench.markdown(result)


def test_ablation_overrides_are_parsed_as_yaml_values():
    bench = _load_benchmark()
    name, overrides = bench.parse_ablation("lr 1e-3: training.learning_rate=1.0e-3 loss.name=listwise")
    assert name == "lr 1e-3"
    assert overrides == {"training.learning_rate": 1e-3, "loss.name": "listwise"}
