"""Score injection: the first stage's score written into the model's input, at training, in
validation and at every inference surface, the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_config, toy_lines, wait_ready, write_jsonl

import rerankit
from rerankit import Reranker
from rerankit.collator import GroupCollator
from rerankit.data import read_records
from rerankit.errors import RerankitError
from rerankit.sampling import Group, NegativeSampler
from rerankit.score_injection import SCALE, ScoreInjection, levels
from rerankit.validation import ValidationSet

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple number 3"
DOCS = ["the apple story is old", "zinc oxide and quartz", "apple and apple near the old people"]


def scored(lines: list[dict]) -> list[dict]:
    """Toy lines whose documents carry a first-stage score: positives above negatives."""
    for row in lines:
        for i, doc in enumerate(row["positives"]):
            doc["score"] = 12.0 - i
        for i, doc in enumerate(row["negatives"]):
            doc["score"] = 6.0 - i
    return lines


def test_levels_divide_by_the_best_score_and_ignore_the_list_depth():
    assert levels([10.0, 5.0, 0.0]) == [100, 50, 0]
    assert levels([10.0, 5.0], reference=[10.0, 5.0, 4.0, 1.0]) == levels([10.0, 5.0]) == [100, 50]
    assert levels([-1.0, 1.0, 0.0]) == [0, 100, 50]  # a negative score: shifted to start at 0
    assert levels([3.0, None], reference=[6.0, 3.0]) == [50, 0]  # unscored (random negative): 0
    assert levels([0.0, 0.0]) == [SCALE, SCALE] and levels([None]) == [0]
    assert levels([-1e308, 1e308, 0.0]) == [0, 100, 50]  # no overflow on hostile magnitudes
    injection = ScoreInjection("[SEP]")
    assert injection.queries("q", [2.0, 1.0]) == ["q [SEP] 100", "q [SEP] 50"]
    assert ScoreInjection.from_dict(injection.to_dict()) == injection
    with pytest.raises(ValueError, match="scale 10"):
        ScoreInjection.from_dict({"marker": "|", "scale": 10})


def test_training_groups_carry_levels_against_their_whole_line(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    records, _ = read_records(write_jsonl(tmp_path / "t.jsonl", scored(toy_lines(4, positives=1))))
    sampler = NegativeSampler(records, num_negatives=3, hard_ratio=2 / 3, seed=1)
    group = sampler.group(0, epoch=0)
    line = records[0].positives + records[0].negatives
    by_id = dict(zip((d.doc_id for d in line), levels([d.score for d in line])))
    # Hard negatives get their level within the line; the random one (last) reads 0.
    assert list(group.levels) == [by_id[d] for d in group.doc_ids[:-1]] + [0]
    assert group.levels[0] == SCALE  # the positive is the line's best

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    injection = ScoreInjection.for_tokenizer(tokenizer)
    batch = GroupCollator(tokenizer, 48, score_injection=injection)([group])
    first = tokenizer.decode(batch["input_ids"][0])
    # The tiny vocabulary has single digits only: the level 100 reads as [UNK].
    assert first.split(" [SEP] ")[1] == "[UNK]" and first.count("[SEP]") == 3
    plain = GroupCollator(tokenizer, 48)([group])
    assert plain["input_ids"].shape[1] < batch["input_ids"].shape[1]
    bare = Group(group.query, group.docs, group.labels, group.doc_ids)
    with pytest.raises(ValueError, match="has no first-stage score"):
        GroupCollator(tokenizer, 48, score_injection=injection)([bare])


def test_validation_pairs_read_each_candidates_level(tmp_path):
    records, _ = read_records(write_jsonl(tmp_path / "v.jsonl", scored(toy_lines(2, positives=1))))
    vset = ValidationSet.from_records(records)
    queries, docs = vset.flat_pairs(ScoreInjection("|"))
    given = records[0].positives + records[0].negatives
    expected = dict(zip([d.text for d in given], (100, 50, 42)))
    first = [(q, d) for q, d in zip(queries, docs) if d in expected and q.startswith(records[0].query)]
    assert sorted(first) == sorted((f"{records[0].query} | {expected[d]}", d) for d in expected)
    assert vset.flat_pairs()[0][0] == records[0].query and len(docs) == len(queries)


@pytest.fixture(scope="module")
def injection_run(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("injection-run")
    train = write_jsonl(folder / "train.jsonl", scored(toy_lines(48, seed=1)))
    valid = write_jsonl(
        folder / "valid.jsonl",
        scored([dict(row, query_text="valid " + row["query_text"]) for row in toy_lines(16, seed=2)]),
    )
    config = tiny_config(
        tiny_bert_dir, train, valid, folder / "run", model={"score_injection": True}, training={"epochs": 1}
    )
    return rerankit.fit(config), valid


def test_fit_refuses_documents_without_a_score_before_touching_the_run(tiny_bert_dir, toy_data, tmp_path):
    train, valid = toy_data
    out = tmp_path / "run"
    config = tiny_config(tiny_bert_dir, train, valid, out, model={"score_injection": True})
    refusal = rf"{train}: model.score_injection \(train split\) needs .*: document 'q0p0' of query"
    with pytest.raises(RerankitError, match=refusal):
        rerankit.fit(config)
    assert not out.exists()


def test_an_injection_run_ranks_with_the_first_stage_it_reads(injection_run):
    result, valid = injection_run
    manifest = json.loads((result.output_dir / "run.json").read_text())
    assert manifest["score_injection"] == {"marker": "[SEP]", "scale": SCALE}
    assert (
        "- score injection: each document's first-stage level"
        in (result.output_dir / "report.md").read_text()
    )
    reranker = Reranker.load(result.output_dir, device="cpu", dtype="float32")
    assert reranker.score_injection == ScoreInjection("[SEP]")
    blind = "first_stage: this model reads each document's first-stage score"
    with pytest.raises(ValueError, match=blind):
        reranker.rerank(QUERY, DOCS)
    # score and logits refuse to score blind as well
    with pytest.raises(ValueError, match=blind):
        reranker.score([(QUERY, d) for d in DOCS])
    with pytest.raises(ValueError, match=blind):
        reranker.logits([QUERY] * 3, DOCS)
    with pytest.raises(ValueError, match="first_stage: expected 3 scores"):
        reranker.rerank(QUERY, DOCS, first_stage=[1.0])
    with pytest.raises(ValueError, match=r"first_stage\[1\]: expected a finite number, got nan"):
        reranker.score([(QUERY, d) for d in DOCS], first_stage=[1.0, float("nan"), 2.0])
    first = [100.0, 2.0, 7.0]  # levels 100, 2, 7: single digits are words of the tiny vocabulary
    ranked = reranker.rerank(QUERY, DOCS, first_stage=first)
    logits = reranker.input_logits([f"{QUERY} [SEP] {n}" for n in (100, 2, 7)], DOCS)[0]
    by_index = [r.score for r in sorted(ranked, key=lambda r: r.index)]
    assert by_index == pytest.approx(list(reranker.probabilities(logits)))
    # The score is part of the input: documents 1 and 2 read other levels, document 0 the same.
    moved = [
        r.score
        for r in sorted(reranker.rerank(QUERY, DOCS, first_stage=[100.0, 7.0, 2.0]), key=lambda r: r.index)
    ]
    assert moved[0] == pytest.approx(by_index[0]) and moved[1:] != pytest.approx(by_index[1:])

    from rerankit.held_out import evaluate_seed_file

    evaluated = evaluate_seed_file(reranker, valid)  # each pair reads its document's score from the file
    vset = ValidationSet.from_records(read_records(valid)[0])
    queries, docs = vset.flat_pairs(reranker.score_injection)
    assert queries[0].startswith("valid tell me about") and any(q.endswith(" [SEP] 100") for q in queries)
    by_hand = vset.metrics(vset.split_scores(reranker.input_logits(queries, docs)[0]))
    assert evaluated["reranked"] == pytest.approx(by_hand)


def test_seed_file_evaluation_refuses_a_file_without_scores(injection_run, toy_data):
    from rerankit.errors import DataError
    from rerankit.held_out import evaluate_seed_file

    reranker = Reranker.load(injection_run[0].output_dir, device="cpu", dtype="float32")
    with pytest.raises(DataError, match="trained with score injection\\) needs every document's"):
        evaluate_seed_file(reranker, toy_data[1])


def test_export_and_server_read_the_first_stage_like_the_reranker(injection_run, tmp_path):
    from litestar.testing import TestClient

    from rerankit.export import export
    from rerankit.server import ServerSettings, create_app

    run = Reranker.load(injection_run[0].output_dir, device="cpu", dtype="float32")
    out = export(injection_run[0].output_dir, tmp_path / "export")
    exported = Reranker.load(out, device="cpu", dtype="float32")
    first = [100.0, 2.0, 7.0]
    expected = run.rerank(QUERY, DOCS, first_stage=first)
    assert exported.score_injection == run.score_injection
    assert exported.rerank(QUERY, DOCS, first_stage=first).indices == expected.indices

    with TestClient(create_app(ServerSettings(model="in-memory"), reranker=run)) as client:
        wait_ready(client)
        body = {"query": QUERY, "documents": DOCS, "first_stage_scores": first}
        answer = client.post("/v2/rerank", json=body).json()
        assert [r["index"] for r in answer["results"]] == expected.indices
        assert [r["relevance_score"] for r in answer["results"]] == pytest.approx([r.score for r in expected])
        tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "first_stage_scores": first})
        assert [r["index"] for r in tei.json()] == expected.indices
        missing = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
        assert missing.status_code == 400
        assert missing.json()["detail"].startswith("first_stage_scores: this model reads each document's")
        assert np.isfinite([r["relevance_score"] for r in answer["results"]]).all()


def test_rerank_cli_reads_the_documents_scores(injection_run, tmp_path):
    from click.testing import CliRunner

    from rerankit.cli import main

    run = injection_run[0].output_dir
    first = [100.0, 2.0, 7.0]
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": d, "score": s} for d, s in zip(DOCS, first)])
    args = ["rerank", "--model", str(run), "--query", QUERY, "--dtype", "float32", "--json", "--docs"]
    answer = CliRunner().invoke(main, [*args, str(docs)])
    assert answer.exit_code == 0, answer.output
    expected = Reranker.load(run, device="cpu", dtype="float32").rerank(QUERY, DOCS, first_stage=first)
    ranked = json.loads(answer.stdout)
    assert [r["index"] for r in ranked] == expected.indices
    assert [r["fused_score"] for r in ranked] == pytest.approx([r.fused_score for r in expected])

    bare = write_jsonl(tmp_path / "bare.jsonl", [{"text": d} for d in DOCS])
    refused = CliRunner().invoke(main, [*args, str(bare)])
    assert refused.exit_code == 2 and f"{bare}:1" in refused.output and "'score'" in refused.output
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"text": DOCS[0], "score": 1.0}, {"text": DOCS[1]}])
    refused = CliRunner().invoke(main, [*args, str(partial)])
    assert refused.exit_code == 2 and f"{partial}:2" in refused.output and "score injection" in refused.output
    for value, shown in (('"high"', "'high'"), ("1" + "0" * 400, "1000")):
        wrong = tmp_path / "wrong.jsonl"
        wrong.write_text(f'{{"text": "{DOCS[0]}", "score": {value}}}\n')
        refused = CliRunner().invoke(main, [*args, str(wrong)])
        assert refused.exit_code == 2 and f"expected a finite number, got {shown}" in refused.output
