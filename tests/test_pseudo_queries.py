"""Inverse-cloze pseudo-queries: the query's sentence never leaks into its positive (when cut),
its own passage is never a negative, and the same corpus and seed give the same file."""

from __future__ import annotations

import json

import pytest

from rerankit import pseudo_queries as pq

pytestmark = pytest.mark.smoke

CORPUS = {
    "d1": "The Nile is the longest river in Africa. It flows north through eleven countries. "
    "Its delta empties into the Mediterranean Sea near Alexandria.",
    "d2": "Mount Kilimanjaro is a dormant volcano in Tanzania. It has three volcanic cones. "
    "The summit is the highest point in Africa at nearly six thousand metres.",
    "d3": "Paris is the capital of France. The city hosts the Louvre, the most visited museum "
    "in the world. Millions of tourists visit it every single year.",
    "d4": "Too short.",
    "d5": "Bananas are berries in the botanical sense of the word. Strawberries, however, are not "
    "true berries at all according to botanists.",
}


def test_inverse_cloze_cuts_the_sentence_out_of_its_positive():
    pseudo = pq.build(CORPUS, per_passage=2, seed=3)
    assert {p.doc_id for p in pseudo} == {"d1", "d2", "d3", "d5"}  # d4 has one sentence
    for p in pseudo:
        assert p.query in pq.sentences(CORPUS[p.doc_id]) and len(p.query.split()) >= 5
        assert p.query not in p.positive
        assert p.positive and all(s in CORPUS[p.doc_id] for s in pq.sentences(p.positive))
        assert len(pq.sentences(p.positive)) == len(pq.sentences(CORPUS[p.doc_id])) - 1
    per_doc = [p.doc_id for p in pseudo]
    assert per_doc.count("d1") == 2 and len({p.query for p in pseudo}) == len(pseudo)
    assert pq.build(CORPUS, per_passage=2, seed=3) == pseudo
    kept = pq.build(CORPUS, per_passage=1, seed=3, remove_sentence=False)
    assert all(p.query in p.positive and p.positive == CORPUS[p.doc_id] for p in kept)
    with pytest.raises(ValueError, match="per_passage"):
        pq.build(CORPUS, per_passage=0)
    long = {
        "d6": "Short one here but fine. Word " + " ".join(["word"] * 60) + ". Another fine sentence of words."
    }
    assert all(len(p.query.split()) <= pq.MAX_WORDS for p in pq.build(long, per_passage=3, seed=0))
    assert len(pq.build(long, per_passage=3, seed=0)) == 2


def test_mine_pseudo_queries_cli_writes_training_lines(tmp_path):
    from click.testing import CliRunner

    from rerankit.cli import main
    from rerankit.data import read_records

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in CORPUS.items()))
    out = tmp_path / "pseudo.jsonl"
    args = [
        "mine",
        "--corpus",
        str(corpus),
        "--pseudo-queries",
        "1",
        "--num-negatives",
        "2",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    records, _ = read_records(out)
    assert len(records) == 4
    for record in records:
        (positive,) = record.positives
        assert record.query not in positive.text  # cut out of the positive
        assert len(record.negatives) == 2
        assert positive.doc_id not in {n.doc_id for n in record.negatives}
        # the untouched passage (which still holds the sentence) is no negative either
        assert all(record.query not in n.text for n in record.negatives)
    assert CliRunner().invoke(main, args).exit_code == 0 and read_records(out)[0] == records

    bad = CliRunner().invoke(main, ["mine", "--pseudo-queries", "1", "--out", str(out)])
    assert bad.exit_code == 2 and "--pseudo-queries builds queries from --corpus alone" in bad.output

    short = tmp_path / "short.jsonl"  # one-sentence passages: no inverse-cloze query to make
    short.write_text(json.dumps({"_id": "s1", "text": "Just one sentence here."}) + "\n")
    bad = CliRunner().invoke(
        main, ["mine", "--corpus", str(short), "--pseudo-queries", "1", "--out", str(out)]
    )
    assert bad.exit_code == 2 and f"{short}: no passage has two sentences, one of 5 to 48 words" in bad.output


def _toy_corpus(rng_seed: int = 0) -> list[dict]:
    """Passages of three sentences in the toy vocabulary (the tiny BERT's words)."""
    import random

    from conftest import FILLER, TOPICS

    rng = random.Random(rng_seed)
    rows = []
    for i in range(24):
        topic = TOPICS[i % len(TOPICS)]
        sentences = [
            " ".join([topic.capitalize()] + [rng.choice(FILLER) for _ in range(6)] + [topic]) + "."
            for _ in range(3)
        ]
        rows.append({"_id": f"c{i}", "text": " ".join(sentences)})
    return rows


def test_fit_trains_on_corpus_pseudo_queries_beside_the_labelled_ones(tiny_bert_dir, toy_data, tmp_path):
    from conftest import tiny_config, write_jsonl

    import rerankit
    from rerankit.data import read_records

    train, valid = toy_data
    rows = _toy_corpus()
    # A validation question written into the corpus as a sentence must not become a training query.
    (valid_question, *_), _ = read_records(valid)
    rows.append({"_id": "leak", "text": f"{valid_question.query}. Paris is the capital of France today."})
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    config = tiny_config(
        tiny_bert_dir,
        train,
        valid,
        tmp_path / "run",
        training={"epochs": 1},
        adaptation={"corpus": str(corpus), "max_queries": 20, "num_negatives": 3},
    )
    result = rerankit.fit(config)
    adaptation = result.metrics["adaptation"]
    assert adaptation["pseudo_queries"] == 20 and adaptation["passages"] == 25
    assert result.metrics["train_queries"] == 48  # the labelled queries, counted apart
    # The trainer saw both: one epoch of (48 + 20) queries at 8 per step is 9 steps (6 without).
    assert result.metrics["evaluations"][-1]["step"] == 9
    report = (tmp_path / "run" / "report.md").read_text()
    assert "20 inverse-cloze pseudo-queries from 25 passages" in report

    from rerankit.adaptation import pseudo_query_records
    from rerankit.config import AdaptationConfig

    config = AdaptationConfig(corpus=str(corpus), per_passage=3)
    records, _ = pseudo_query_records(config, seed=7, labelled=48, exclude_queries={valid_question.query})
    assert valid_question.query not in {r.query for r in records}
    assert len(records) == 24 * 3 + 1  # every sentence of the toy passages, and the leak passage's other one
    config.ratio = 0.5  # at most half as many as the labelled queries
    assert len(pseudo_query_records(config, seed=7, labelled=48)[0]) == 24
    config.max_queries = 10  # the smaller cap applies
    assert len(pseudo_query_records(config, seed=7, labelled=48)[0]) == 10
    # Scores only when asked (score injection reads them; distillation must not get them unasked).
    plain = pseudo_query_records(config, seed=7, labelled=48)[0]
    assert all(d.score is None for r in plain for d in r.positives + r.negatives)
    scored = pseudo_query_records(config, seed=7, labelled=48, teacher_scores=True)[0]
    assert all(d.score is not None for r in scored for d in r.positives + r.negatives)
