"""Regenerate the bundled example data in examples/data/ from SQuAD v1.1 dev (BEIR layout).

    python examples/make_example_data.py [--source ../shared/data/squad-v1.1-dev]

The negatives are mined by ``rerankit.mining.mine`` (what ``rerankit mine --method bm25``
runs), so the example shows the same path a user takes:

- ``squad_train.jsonl``: questions of the training articles; negatives are the BM25 top
  paragraphs over the *training articles only* (every positive excluded by id and text) —
  mined on the training side alone.
- ``squad_valid.jsonl``: questions of held-out articles (no article is on both sides);
  candidates are the BM25 top paragraphs over the whole corpus, i.e. what a first stage would
  hand the reranker, plus the positive.
- ``sample_docs.jsonl``: BM25's top paragraphs for one held-out question, shuffled, for the demo.
- ``squad_corpus.jsonl``: every paragraph of the 14 articles (training and held-out), no
  question: the unlabelled corpus a user has, which ``adaptation.corpus`` turns into
  inverse-cloze training queries.

Data: SQuAD v1.1 (Rajpurkar et al., 2016), CC BY-SA 4.0; see examples/data/LICENSE.md.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from rerankit.beir import read_corpus, read_qrels, read_queries
from rerankit.data import write_records
from rerankit.held_out import first_stage_top_k
from rerankit.mining import MiningInput, mine

HERE = Path(__file__).resolve().parent
# Fixed held-out articles (ids are the corpus _id prefix): Super Bowl 50 and Nikola Tesla.
VALID_ARTICLES = ("40", "28")
# Training articles: unrelated to the held-out ones.
TRAIN_ARTICLES = ("0", "1", "3", "4", "5", "9", "13", "17", "20", "30", "33", "39")
DEMO_QUERY = "Which NFL team represented the AFC at Super Bowl 50?"


def article(doc_id: str) -> str:
    return doc_id.split("_")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=HERE.parent.parent / "shared/data/squad-v1.1-dev")
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--train-queries", type=int, default=240)
    parser.add_argument("--valid-queries", type=int, default=100)
    parser.add_argument("--train-negatives", type=int, default=10)
    parser.add_argument("--valid-negatives", type=int, default=9)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    corpus = read_corpus(args.source / "corpus.jsonl")
    queries = read_queries(args.source / "queries.jsonl")
    positives = {
        q: [d for d, grade in judged.items() if grade > 0]
        for q, judged in sorted(read_qrels(args.source / "qrels" / "test.tsv").items())
    }
    rng = random.Random(args.seed)

    def sample(articles: tuple[str, ...], n: int) -> list[str]:
        pool = [q for a in articles for q, ids in positives.items() if article(ids[0]) == a]
        return sorted(rng.sample(pool, min(n, len(pool))))

    def mined(qids: list[str], docs: dict[str, str], n_negatives: int):
        return mine(
            MiningInput(docs, {q: queries[q] for q in qids}, {q: positives[q] for q in qids}),
            method="bm25",
            num_negatives=n_negatives,
        )

    train_docs = {d: t for d, t in corpus.items() if article(d) in TRAIN_ARTICLES}
    train = mined(sample(TRAIN_ARTICLES, args.train_queries), train_docs, args.train_negatives)
    valid = mined(
        [q for q in sample(VALID_ARTICLES, args.valid_queries) if queries[q] != DEMO_QUERY],
        corpus,
        args.valid_negatives,
    )
    demo = [
        {"doc_id": d, "text": corpus[d]} for d in first_stage_top_k(corpus, [DEMO_QUERY], 8, "bm25")[0].ids
    ]
    # Shuffled, so that the demo shows the reranker ordering them (not BM25's order kept).
    rng.shuffle(demo)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, records in (("squad_train.jsonl", train), ("squad_valid.jsonl", valid)):
        print(f"{args.out / name}: {write_records(records, args.out / name)} lines")
    own = [(d, t) for d, t in corpus.items() if article(d) in TRAIN_ARTICLES + VALID_ARTICLES]
    with (args.out / "squad_corpus.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"_id": d, "text": t}, ensure_ascii=False) + "\n" for d, t in own)
    print(f"{args.out / 'squad_corpus.jsonl'}: {len(own)} lines")
    with (args.out / "sample_docs.jsonl").open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in demo)
    print(f"{args.out / 'sample_docs.jsonl'}: {len(demo)} lines")


if __name__ == "__main__":
    main()
