"""`rerankit mine`: exclusion of positives, the rank window, the guard, determinism, valid output."""

import json

import pytest
from click.testing import CliRunner

from rerankit import mining
from rerankit.cli import main
from rerankit.data import read_records

pytestmark = pytest.mark.smoke

CORPUS = {
    "d1": "the apple orchard grows red apple trees",
    "d2": "apple pie recipe with apple and sugar",
    "d3": "apple pie recipe with apple and sugar",  # same text as d2, another id
    "d4": "river boats on the river bank",
    "d5": "apple computers and the apple logo",
    "d6": "piano lessons for children",
    "d7": "the castle on the hill",
}


@pytest.fixture
def beir(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in CORPUS.items())
    )
    queries = [
        {"_id": "q1", "text": "apple pie recipe"},
        {"_id": "q2", "text": "river boats"},
        {"_id": "q3", "text": "not judged"},
    ]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t2\nq2\td4\t1\nq2\td6\t0\n")
    return tmp_path


def test_bm25_mining_excludes_positives_by_id_and_text(beir):
    data = mining.from_beir(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels.tsv")
    assert set(data.queries) == {"q1", "q2"}  # q3 has no qrels; q2's d6 is graded 0
    records = mining.mine(data, method="bm25", num_negatives=3)
    q1 = records[0]
    assert [d.doc_id for d in q1.positives] == ["d2"]
    negatives = [d.doc_id for d in q1.negatives]
    assert "d2" not in negatives and "d3" not in negatives  # same text as the positive
    assert negatives[:2] == ["d1", "d5"] or negatives[:2] == ["d5", "d1"]
    assert len(negatives) == 3 and q1.source_chunk == "d2"


def test_skip_top_window_and_guard(beir):
    data = mining.from_beir(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels.tsv")
    full = [d.doc_id for d in mining.mine(data, num_negatives=4)[0].negatives]
    skipped = [d.doc_id for d in mining.mine(data, num_negatives=3, skip_top=1)[0].negatives]
    assert skipped == full[1:4]
    guarded = mining.mine(data, num_negatives=4, margin=0.9)[0]
    # bm25 guard: anything above 10% of the positive's score is dropped
    assert len(guarded.negatives) < len(full)


def test_dense_and_hybrid_with_the_packaged_minilm(beir):
    data = mining.from_beir(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels.tsv")
    for method in ("dense", "hybrid"):
        records = mining.mine(data, method=method, num_negatives=2)
        assert all(len(r.negatives) == 2 for r in records)
        assert "d3" not in [d.doc_id for d in records[0].negatives]
        assert records == mining.mine(data, method=method, num_negatives=2)  # deterministic


def test_blocks_of_queries_mine_what_one_block_mines(beir, monkeypatch):
    """Scoring a query at a time (a big corpus) gives the same file as scoring all at once."""
    data = mining.from_beir(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels.tsv")
    from rerankit.first_stage import BM25Index

    calls = []
    scores = BM25Index.scores
    monkeypatch.setattr(
        BM25Index, "scores", lambda self, queries: calls.append(len(queries)) or scores(self, queries)
    )
    for method, margin in (("bm25", None), ("bm25", 0.9), ("hybrid", 0.05)):
        calls.clear()
        whole = mining.mine(data, method=method, num_negatives=3, skip_top=1, margin=margin)
        assert calls == [2]
        calls.clear()
        one_by_one = mining.mine(
            data, method=method, num_negatives=3, skip_top=1, margin=margin, block_size=1
        )
        assert calls == [1, 1] and one_by_one == whole


def test_cli_writes_lines_the_training_reader_accepts(beir, tmp_path):
    out = tmp_path / "mined.jsonl"
    args = [
        "mine",
        "--corpus",
        str(beir / "corpus.jsonl"),
        "--queries",
        str(beir / "queries.jsonl"),
        "--qrels",
        str(beir / "qrels.tsv"),
        "--num-negatives",
        "2",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records, report = read_records(out)
    assert len(records) == 2 and report.dropped_negatives_equal_to_positive == 0
    first = out.read_text()
    assert CliRunner().invoke(main, args).exit_code == 0 and out.read_text() == first

    # positive-only seed lines; the corpus is every document in the file
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"query_text": q, "positives": [{"doc_id": d, "text": CORPUS[d]}]}) + "\n"
            for q, d in [("apple pie", "d2"), ("river", "d4"), ("castle", "d7")]
        )
    )
    result = CliRunner().invoke(
        main, ["mine", "--input", str(pairs), "--num-negatives", "2", "--out", str(tmp_path / "m2.jsonl")]
    )
    assert result.exit_code == 0, result.output
    mined, _ = read_records(tmp_path / "m2.jsonl")
    assert [len(r.negatives) for r in mined] == [2, 2, 2]
    assert CliRunner().invoke(main, ["mine", "--out", str(out)]).exit_code == 2


def test_teacher_scores_are_the_first_stage_scores(beir, tmp_path):
    from rerankit.first_stage import BM25Index

    data = mining.from_beir(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels.tsv")
    plain = mining.mine(data, num_negatives=3)
    scored = mining.mine(data, num_negatives=3, teacher_scores=True)
    assert all(d.score is None for r in plain for d in r.positives + r.negatives)
    bm25 = BM25Index(list(CORPUS.values())).scores(["apple pie recipe"])[0]
    q1 = scored[0]
    assert [d.doc_id for d in q1.negatives] == [d.doc_id for d in plain[0].negatives]
    for doc in q1.positives + q1.negatives:
        assert doc.score == pytest.approx(bm25[list(CORPUS).index(doc.doc_id)], abs=1e-5)
    assert q1.positives[0].score > q1.negatives[-1].score
    out = tmp_path / "scored.jsonl"
    args = ["mine", "--corpus", str(beir / "corpus.jsonl"), "--queries", str(beir / "queries.jsonl")]
    result = CliRunner().invoke(
        main,
        [
            *args,
            "--qrels",
            str(beir / "qrels.tsv"),
            "--teacher-scores",
            "--num-negatives",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_records(out)[0] == scored


def test_teacher_model_scores_every_document_through_the_bulk_path(beir, tmp_path, tiny_bert_dir):
    from rerankit import Reranker

    out = tmp_path / "taught.jsonl"
    args = ["mine", "--corpus", str(beir / "corpus.jsonl"), "--queries", str(beir / "queries.jsonl")]
    args += ["--qrels", str(beir / "qrels.tsv"), "--num-negatives", "3", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--teacher-model", str(tiny_bert_dir)])
    assert result.exit_code == 0, result.output
    taught, _ = read_records(out)
    plain = mining.mine(
        mining.from_beir(beir / "corpus.jsonl", beir / "queries.jsonl", beir / "qrels.tsv"), num_negatives=3
    )
    assert [[d.doc_id for d in r.negatives] for r in taught] == [
        [d.doc_id for d in r.negatives] for r in plain
    ]
    teacher = Reranker.load(tiny_bert_dir)
    for record in taught:
        docs = record.positives + record.negatives
        expected = teacher.score([(record.query, d.text) for d in docs], raw=True)
        assert [d.score for d in docs] == pytest.approx(expected, abs=1e-5)
    assert not list(tmp_path.glob(".taught.jsonl*"))  # the work folder is gone
