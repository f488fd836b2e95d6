"""`rerankit eval` on seed JSONL and on a BEIR folder, against BM25."""

import json

import pytest
from click.testing import CliRunner

from rerankit.cli import main
from rerankit.held_out import evaluate_beir

pytestmark = pytest.mark.smoke


@pytest.fixture
def beir_folder(tmp_path):
    from conftest import toy_lines

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, line in enumerate(toy_lines(12, seed=5)):
        queries.append({"_id": f"q{i}", "text": line["query_text"]})
        for doc in line["positives"]:
            corpus.append({"_id": doc["doc_id"], "title": "", "text": doc["text"]})
            qrels.append(f"q{i}\t{doc['doc_id']}\t1")
        corpus += [{"_id": d["doc_id"], "title": "", "text": d["text"]} for d in line["negatives"]]
    queries.append({"_id": "unjudged", "text": "apple"})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels/test.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def test_eval_seed_file_prints_both_rows_and_writes_json(tiny_bert_run, tmp_path):
    result, valid = tiny_bert_run
    out = tmp_path / "eval.json"
    cli = CliRunner().invoke(
        main,
        [
            "eval",
            "--model",
            str(result.output_dir),
            "--data",
            str(valid),
            "--out",
            str(out),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert "bm25 over the candidates" in cli.stdout and "reranked by" in cli.stdout
    saved = json.loads(out.read_text())
    assert saved["queries"] == 16 and saved["kind"] == "seed"
    # the same candidates and the same model as validation measured: the numbers agree
    assert saved["reranked"]["ndcg@10"] == pytest.approx(
        result.metrics["shipped"]["final"]["ndcg@10"], abs=1e-6
    )
    assert saved["first_stage"]["ndcg@10"] == pytest.approx(result.metrics["first_stage"]["ndcg@10"])


def test_eval_beir_reranks_bm25_top_k(tiny_bert_run, beir_folder):
    from rerankit import Reranker

    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    result = evaluate_beir(reranker, beir_folder, top_k=5, recall_at=5)
    assert result["queries"] == 12  # the unjudged query is not evaluated
    for side in ("first_stage", "reranked"):
        assert set(result[side]) >= {"ndcg@10", "mrr@10", "map", "recall@5"}
    # reranking reorders the same top-5: recall@5 cannot change
    assert result["reranked"]["recall@5"] == pytest.approx(result["first_stage"]["recall@5"])


def test_eval_reports_each_rerank_depth(tiny_bert_run, beir_folder):
    from rerankit import Reranker

    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    result = evaluate_beir(reranker, beir_folder, top_k=5, recall_at=5, depths=(2, 5))
    assert set(result["depths"]) == {"2", "5"}
    at5 = result["depths"]["5"]
    # the depth the main rows use gives the main rows' numbers
    assert at5["first_stage"]["ndcg@10"] == pytest.approx(result["first_stage"]["ndcg@10"])
    assert at5["reranked"]["ndcg@10"] == pytest.approx(result["reranked"]["ndcg@10"])
    # reordering the first stage's top 2 keeps those 2 documents: recall cannot change
    at2 = result["depths"]["2"]
    assert at2["reranked"]["recall@5"] == pytest.approx(at2["first_stage"]["recall@5"])
    assert at2["first_stage"]["recall@5"] <= at5["first_stage"]["recall@5"]


def test_hybrid_first_stage_is_the_rrf_of_bm25_and_the_bi_encoder_over_the_corpus(beir_folder):
    import numpy as np

    from rerankit.first_stage import BM25Index, DenseIndex
    from rerankit.fusion import rrf
    from rerankit.held_out import _read_beir, first_stage_top_k

    corpus, queries, _ = _read_beir(beir_folder, "test")
    asked = [queries["q0"], queries["q3"]]
    hits = first_stage_top_k(corpus, asked, 5, "hybrid", block_size=1)
    texts = list(corpus.values())
    fused = rrf([BM25Index(texts).scores(asked), DenseIndex(texts).scores(asked)])
    for (ids, scores, components), row in zip(hits, fused):
        picked = np.argsort(-row, kind="stable")[:5]
        assert ids == [list(corpus)[i] for i in picked]
        # the first stage's own order is the corpus-wide fusion, not a re-fusion of the top 5
        assert scores == pytest.approx(row[picked])
        assert set(components) == {"bm25", "dense"} and len(components["dense"]) == 5
    dense_only = first_stage_top_k(corpus, asked, 5, "dense")
    assert set(dense_only[0].components) == {"dense"}
    assert list(dense_only[0].components["dense"]) == sorted(dense_only[0].components["dense"], reverse=True)


def test_eval_cli_with_a_hybrid_first_stage(tiny_bert_run, beir_folder, tmp_path):
    out = tmp_path / "eval.json"
    args = [
        "eval",
        "--model",
        str(tiny_bert_run[0].output_dir),
        "--data",
        str(beir_folder),
        "--top-k",
        "5",
        "--first-stage",
        "hybrid",
        "--dtype",
        "float32",
        "--out",
        str(out),
    ]
    cli = CliRunner().invoke(main, args)
    assert cli.exit_code == 0, cli.output
    assert "hybrid (bm25 + bi-encoder, RRF) top-5" in cli.stdout
    assert "fused: RRF(bm25, dense, reranker)" in cli.stdout
    saved = json.loads(out.read_text())
    assert saved["reranked"]["recall@10"] == pytest.approx(saved["first_stage"]["recall@10"])
    # a seed file has its own first stage (BM25 over its candidates): asking for another is an error
    cli = CliRunner().invoke(
        main,
        [
            "eval",
            "--model",
            str(tiny_bert_run[0].output_dir),
            "--data",
            str(tiny_bert_run[1]),
            "--first-stage",
            "dense",
        ],
    )
    assert cli.exit_code == 2 and "BEIR folder" in cli.output


def test_eval_bad_beir_file_names_it(tiny_bert_run, beir_folder):
    (beir_folder / "queries.jsonl").write_text('{"_id": "q0", "text": "a"}\nnot json\n')
    cli = CliRunner().invoke(
        main, ["eval", "--model", str(tiny_bert_run[0].output_dir), "--data", str(beir_folder)]
    )
    assert cli.exit_code == 2
    assert "queries.jsonl:2" in cli.output
