"""`rerankit eval` on seed JSONL and on a BEIR folder, against BM25."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rerankit.cli import main
from rerankit.held_out import evaluate_beir

pytestmark = pytest.mark.smoke


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


def _same_results(bulk: dict, here: dict, where: str = "") -> None:
    """Every number within 1e-6, everything else equal."""
    assert bulk.keys() == here.keys(), where
    for key, value in here.items():
        if isinstance(value, dict):
            _same_results(bulk[key], value, f"{where}.{key}")
        elif isinstance(value, float):
            assert bulk[key] == pytest.approx(value, abs=1e-6), f"{where}.{key}"
        else:
            assert bulk[key] == value, f"{where}.{key}"


def test_bulk_scoring_gives_each_querys_scores_in_order(fp32_reranker, tmp_path):
    from conftest import toy_lines

    from rerankit.held_out_bulk import BulkScoring, Group

    lines = toy_lines(5, seed=3)
    groups = [
        Group(line["query_text"], [d["text"] for d in line["positives"] + line["negatives"]], [None] * 6)
        for line in lines
    ]
    work = tmp_path / "work"
    scored = BulkScoring(fp32_reranker, work, {"shard_size": 7, "progress": False}).scores(groups)
    assert len(scored) == len(groups)
    for group, got in zip(groups, scored):
        logits = fp32_reranker.logits([group.query] * 6, group.documents)
        np.testing.assert_allclose(got.cross_encoder, logits, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.final, logits, rtol=0, atol=1e-6)  # no ensemble: the logits
    assert not work.exists()  # removed once the scores are read back


def test_bulk_eval_of_a_beir_folder_gives_the_in_process_metrics(fp32_reranker, beir_folder, tmp_path):
    from rerankit.held_out_bulk import BulkScoring

    options = dict(top_k=5, recall_at=5, depths=(2, 5, 8))
    here = evaluate_beir(fp32_reranker, beir_folder, **options)
    shards = []
    bulk = BulkScoring(
        fp32_reranker, tmp_path / "work", dict(shard_size=8, progress=False, on_shard=shards.append)
    )
    _same_results(evaluate_beir(fp32_reranker, beir_folder, **options, bulk=bulk), here)
    assert sorted(shards) == list(range(12))  # 12 queries of 8 candidates, a query a shard


def test_bulk_eval_of_a_seed_file_gives_the_in_process_metrics(tiny_bert_run, fp32_reranker, tmp_path):
    from rerankit.held_out import evaluate_seed_file
    from rerankit.held_out_bulk import BulkScoring

    valid = tiny_bert_run[1]
    here = evaluate_seed_file(fp32_reranker, valid)
    bulk = BulkScoring(fp32_reranker, tmp_path / "work", dict(shard_size=20, progress=False))
    _same_results(evaluate_seed_file(fp32_reranker, valid, bulk=bulk), here)


def test_an_interrupted_bulk_eval_resumes_without_rescoring_finished_shards(
    fp32_reranker, beir_folder, tmp_path
):
    from rerankit.held_out_bulk import BulkScoring

    options = dict(top_k=5, recall_at=5, depths=(5,))
    work = tmp_path / "work"

    def stop_after_the_first(index):
        raise KeyboardInterrupt  # as Ctrl-C would, once the first shard is saved

    interrupted = BulkScoring(
        fp32_reranker, work, dict(shard_size=15, progress=False, on_shard=stop_after_the_first)
    )
    with pytest.raises(KeyboardInterrupt):
        evaluate_beir(fp32_reranker, beir_folder, **options, bulk=interrupted)
    assert [p.name for p in work.rglob("shard-*.npy")] == ["shard-000000.npy"]
    rescored = []
    resumed = BulkScoring(fp32_reranker, work, dict(shard_size=15, progress=False, on_shard=rescored.append))
    result = evaluate_beir(fp32_reranker, beir_folder, **options, bulk=resumed)
    assert rescored == [1, 2, 3]  # 12 queries of 5 candidates, 3 queries (15 pairs) a shard
    assert not work.exists()
    _same_results(result, evaluate_beir(fp32_reranker, beir_folder, **options))


def test_eval_cli_engine_local_writes_the_in_process_results(tiny_bert_run, tmp_path, monkeypatch):
    run, valid = tiny_bert_run
    base = ["eval", "--model", str(run.output_dir), "--data", str(valid), "--dtype", "float32"]
    here, bulk = tmp_path / "here.json", tmp_path / "bulk.json"
    cli = CliRunner().invoke(main, [*base, "--out", str(here)])
    assert cli.exit_code == 0, cli.output
    cli = CliRunner().invoke(main, [*base, "--out", str(bulk), "--engine", "local"])
    assert cli.exit_code == 0, cli.output
    _same_results(json.loads(bulk.read_text()), json.loads(here.read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bulk.json", "here.json"]  # work folder gone
    # without --out the work folder is .rerankit-eval-HASH in the current folder, gone once done
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    cli = CliRunner().invoke(main, [*base, "--engine", "local"])
    assert cli.exit_code == 0 and "reranked by" in cli.stdout, cli.output
    assert list((tmp_path / "cwd").iterdir()) == []
    # the Ray options without the Ray engine are a mistake, said before anything loads
    cli = CliRunner().invoke(main, [*base, "--engine", "local", "--workers", "2"])
    assert cli.exit_code == 2 and "--ray-address and --workers apply to --engine ray" in cli.output


def test_the_bulk_work_folder_sits_beside_out_or_is_named_by_what_it_scores(tmp_path):
    from rerankit.held_out_bulk import default_work_dir

    assert default_work_dir(tmp_path / "eval.json", {}) == tmp_path / ".eval.json.eval"
    one = default_work_dir(None, {"model": "outputs/run1", "data": "/data/a", "top_k": 30})
    assert one.name.startswith(".rerankit-eval-") and one.parent == Path(".")
    assert one == default_work_dir(None, {"top_k": 30, "data": "/data/a", "model": "outputs/run1"})
    assert one != default_work_dir(None, {"model": "outputs/run1", "data": "/data/a", "top_k": 100})
