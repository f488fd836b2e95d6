"""Bulk scoring (rerankit.bulk, `rerankit score`): scores as Reranker.score gives them, in input
order, resumed after an interruption without rescoring saved shards, written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rerankit import pairs_file
from rerankit.bulk import score_file
from rerankit.cli import main
from rerankit.errors import DataError, RerankitError

pytestmark = pytest.mark.timeout(300)


def _pairs(n: int = 23) -> list[dict]:
    """Rows of a few queries, consecutive per query, some documents long, ids and scores set."""
    rows = []
    for i in range(n):
        query = f"what is topic {i // 5}?"
        document = f"document {i} about topic {i % 7} " + "and more words " * (i % 4)
        rows.append({"id": f"p{i}", "query": query, "document": document, "score": float(n - i)})
    return rows


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reranker(tiny_bert_dir):
    from rerankit import Reranker

    return Reranker.load(tiny_bert_dir, device="cpu", dtype="float32")


@pytest.mark.smoke
def test_jsonl_scores_equal_reranker_score_in_input_order(tiny_bert_dir, reranker, tmp_path):
    rows = _pairs()
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    result = score_file(
        tiny_bert_dir, source, out, shard_size=4, dtype="float32", device="cpu", progress=False
    )
    expected = reranker.score(
        [(r["query"], r["document"]) for r in rows], first_stage=[r["score"] for r in rows]
    )
    written = _read_jsonl(out)
    assert [w["id"] for w in written] == [r["id"] for r in rows]
    assert [w["first_stage_score"] for w in written] == [r["score"] for r in rows]
    np.testing.assert_allclose([w["score"] for w in written], expected, rtol=0, atol=1e-6)
    assert result.rows == len(rows) and result.shards > 1 and result.resumed_shards == 0
    assert not (tmp_path / ".scores.jsonl.parts").exists()  # the work folder goes once done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "scores.jsonl"]


@pytest.mark.smoke
def test_parquet_in_and_out_keeps_rows_without_ids(reranker, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"query": r["query"], "document": r["document"]} for r in _pairs(11)]
    source = tmp_path / "pairs.parquet"
    # small row groups: shards start inside them
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=3)
    out = tmp_path / "scores.parquet"
    score_file(reranker, source, out, shard_size=4, progress=False)
    table = pq.read_table(out)
    assert table.column_names == ["query", "document", "score"]
    assert table.column("document").to_pylist() == [r["document"] for r in rows]
    expected = reranker.score([(r["query"], r["document"]) for r in rows])
    np.testing.assert_allclose(table.column("score").to_pylist(), expected, rtol=0, atol=1e-6)
    # a Parquet shard read alone gives the rows the whole file gives
    plan = pairs_file.plan(source, 4)
    assert [p.document for p in pairs_file.read_shard(str(source), "parquet", plan.shards[1])] == [
        r["document"] for r in rows[plan.shards[1].start : plan.shards[1].start + plan.shards[1].rows]
    ]


@pytest.mark.smoke
def test_shards_never_cut_a_run_of_one_query(tmp_path):
    source = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(23))  # queries change every 5 rows
    plan = pairs_file.plan(source, 3)
    assert [(s.start, s.rows) for s in plan.shards] == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 3)]
    assert [s.line for s in plan.shards] == [1, 6, 11, 16, 21]


@pytest.mark.smoke
@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"query": "q", "document": "  "}',
            r"pairs.jsonl:2: empty or whitespace-only: nothing to score \(field 'document'\)",
        ),
        ('{"query": 3, "document": "d"}', r"pairs.jsonl:2: expected a string, got int \(field 'query'\)"),
        ('{"query": "q", "document": "d", "score": "high"}', r"pairs.jsonl:2: .*'high' \(field 'score'\)"),
        ('{"query": "q", "document": "d", "id": [1]}', r"pairs.jsonl:2: .*got list \(field 'id'\)"),
        ('{"query": "q", "document": ', r"pairs.jsonl:2: not valid JSON"),
    ],
)
def test_a_bad_line_is_named_before_anything_is_scored(tmp_path, line, message):
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"query": "q", "document": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        score_file("no-model-is-loaded", source, tmp_path / "scores.jsonl", progress=False)
    assert not (tmp_path / "scores.jsonl").exists()


@pytest.mark.smoke
def test_a_parquet_file_without_a_document_column_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"query": "q", "text": "d"}]), source)
    with pytest.raises(DataError, match=r"pairs.parquet: no column 'document' \(columns: query, text\)"):
        score_file("no-model-is-loaded", source, tmp_path / "scores.jsonl", progress=False)


@pytest.mark.smoke
def test_an_interrupted_run_resumes_without_rescoring_saved_shards(reranker, tmp_path):
    source = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    out = tmp_path / "scores.jsonl"

    def fail_after_two(index):
        if index == 1:
            raise KeyboardInterrupt  # as Ctrl-C would, after the second shard is saved

    with pytest.raises(KeyboardInterrupt):
        score_file(reranker, source, out, shard_size=4, progress=False, on_shard=fail_after_two)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / ".scores.jsonl.parts").glob("shard-*")) == [
        "shard-000000.npy",
        "shard-000001.npy",
    ]
    rescored = []
    result = score_file(reranker, source, out, shard_size=4, progress=False, on_shard=rescored.append)
    assert rescored == [2, 3, 4] and result.resumed_shards == 2
    whole = tmp_path / "whole.jsonl"
    score_file(reranker, source, whole, shard_size=4, progress=False)
    assert _read_jsonl(out) == _read_jsonl(whole)


@pytest.mark.smoke
def test_a_changed_input_does_not_resume_another_inputs_shards(reranker, tmp_path):
    rows = _pairs()
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "scores.jsonl"

    def stop(index):
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_file(reranker, source, out, shard_size=4, progress=False, on_shard=stop)
    rows[0]["document"] = "a different first document"
    _write_jsonl(source, rows)
    rescored = []
    result = score_file(reranker, source, out, shard_size=4, progress=False, on_shard=rescored.append)
    assert rescored == [0, 1, 2, 3, 4] and result.resumed_shards == 0
    assert _read_jsonl(out)[0]["score"] == pytest.approx(
        reranker.score([(rows[0]["query"], rows[0]["document"])])[0]
    )


@pytest.mark.smoke
def test_an_existing_output_is_kept_unless_overwrite(reranker, tmp_path):
    source = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(3))
    out = tmp_path / "scores.jsonl"
    out.write_text("mine\n")
    with pytest.raises(RerankitError, match="scores.jsonl exists: pass overwrite=True"):
        score_file(reranker, source, out, progress=False)
    assert out.read_text() == "mine\n"
    score_file(reranker, source, out, progress=False, overwrite=True)
    assert len(_read_jsonl(out)) == 3


@pytest.mark.smoke
def test_cli_score_writes_scores_and_names_a_bad_line(tiny_bert_dir, reranker, tmp_path):
    rows = _pairs(6)
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    args = ["score", "--model", str(tiny_bert_dir), "--input", str(source), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--dtype", "float32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "6 scores in 1 shards" in result.output
    expected = reranker.score([(r["query"], r["document"]) for r in rows])
    np.testing.assert_allclose([w["score"] for w in _read_jsonl(out)], expected, rtol=0, atol=1e-6)

    source.write_text('{"query": "q", "document": "d", "score": null}\n{"query": "q"}\n')
    result = CliRunner().invoke(main, [*args, "--overwrite", "--no-progress"])
    assert result.exit_code == 2
    assert (
        "pairs.jsonl:2: missing: every row needs a query and a document (field 'document')" in result.output
    )


@pytest.mark.slow
def test_kill_9_mid_run_resumes_from_the_saved_shards(tiny_bert_dir, reranker, tmp_path):
    """A real SIGKILL after the second shard is saved: no output, and the rerun scores only the rest."""
    source = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    out = tmp_path / "scores.jsonl"
    script = textwrap.dedent(
        f"""
        import os, signal
        from rerankit.bulk import score_file

        def kill_after_two(index):
            if index == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        score_file({str(tiny_bert_dir)!r}, {str(source)!r}, {str(out)!r}, shard_size=4, progress=False,
                   dtype="float32", device="cpu", on_shard=kill_after_two)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=240)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".scores.jsonl.*.tmp"))
    rescored = []
    result = score_file(
        tiny_bert_dir,
        source,
        out,
        shard_size=4,
        progress=False,
        dtype="float32",
        device="cpu",
        on_shard=rescored.append,
    )
    assert rescored == [2, 3, 4] and result.resumed_shards == 2
    rows = _pairs()
    expected = reranker.score(
        [(r["query"], r["document"]) for r in rows], first_stage=[r["score"] for r in rows]
    )
    np.testing.assert_allclose([w["score"] for w in _read_jsonl(out)], expected, rtol=0, atol=1e-6)


@pytest.mark.smoke
def test_a_second_run_on_the_same_output_is_refused_while_one_runs(reranker, tmp_path):
    source = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(8))
    out = tmp_path / "scores.jsonl"
    refused = []

    def second_run(index):
        with pytest.raises(RerankitError, match="scores.jsonl is being scored by another rerankit process"):
            score_file(reranker, source, out, shard_size=4, progress=False)
        refused.append(index)

    score_file(reranker, source, out, shard_size=4, progress=False, on_shard=second_run)
    assert refused == [0, 1] and len(_read_jsonl(out)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "scores.jsonl"]


@pytest.mark.smoke
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_cross_encoder_score_is_the_logit_beside_the_score(reranker, tmp_path, suffix):
    rows = _pairs(9)
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / f"scores{suffix}"
    score_file(reranker, source, out, shard_size=4, progress=False, cross_encoder_score=True)
    if suffix == ".jsonl":
        written = _read_jsonl(out)
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table.column_names[-2:] == ["score", "cross_encoder_score"]
        written = table.to_pylist()
    logits = reranker.logits(
        [r["query"] for r in rows], [r["document"] for r in rows], first_stage=[r["score"] for r in rows]
    )
    np.testing.assert_allclose([w["cross_encoder_score"] for w in written], logits, rtol=0, atol=1e-6)
    # the score stays the probability, from the same pass
    np.testing.assert_allclose(
        [w["score"] for w in written], reranker.probabilities(logits), rtol=0, atol=1e-6
    )


@pytest.mark.smoke
def test_shards_without_the_cross_encoder_column_are_not_resumed_into_a_run_with_it(reranker, tmp_path):
    source = _write_jsonl(tmp_path / "pairs.jsonl", _pairs())
    out = tmp_path / "scores.jsonl"

    def stop(index):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_file(reranker, source, out, shard_size=4, progress=False, on_shard=stop)
    rescored = []
    score_file(
        reranker,
        source,
        out,
        shard_size=4,
        progress=False,
        cross_encoder_score=True,
        on_shard=rescored.append,
    )
    assert rescored == [0, 1, 2, 3, 4]  # the saved shard has no logits: scored again
    assert all("cross_encoder_score" in row for row in _read_jsonl(out))
