"""Regenerate the bundled example data in examples/data/ from SQuAD v1.1 dev (BEIR layout).

    python examples/make_example_data.py [--source ../shared/data/squad-v1.1-dev]

What it writes (seed JSONL, one question per line):

- ``squad_train.jsonl``: questions of the training articles; hard negatives are the BM25
  (bm25s) top paragraphs for the question over the *training articles only*, excluding
  the positive paragraph — mined on the training side alone.
- ``squad_valid.jsonl``: questions of held-out articles (no article is on both sides);
  candidates are the BM25 top paragraphs over the whole corpus, excluding the positive,
  i.e. what a first stage would hand the reranker, plus the positive.
- ``sample_docs.jsonl``: BM25's top paragraphs for one held-out question, shuffled, for the demo.

Data: SQuAD v1.1 (Rajpurkar et al., 2016), CC BY-SA 4.0; see examples/data/LICENSE.md.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

from rerankit.first_stage import BM25Retriever

HERE = Path(__file__).resolve().parent
# Fixed held-out articles (ids are the corpus _id prefix): Super Bowl 50 and Nikola Tesla.
VALID_ARTICLES = ("40", "28")
# Training articles: unrelated to the held-out ones.
TRAIN_ARTICLES = ("0", "1", "3", "4", "5", "9", "13", "17", "20", "30", "33", "39")
DEMO_QUERY = "Which NFL team represented the AFC at Super Bowl 50?"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class BM25Index:
    """rerankit's BM25 retriever over corpus rows, returning the rows themselves."""

    def __init__(self, docs: list[dict]) -> None:
        self.rows = {d["_id"]: d for d in docs}
        self.retriever = BM25Retriever({d["_id"]: d["text"] for d in docs})

    def top(self, query: str, k: int) -> list[dict]:
        return [self.rows[doc_id] for doc_id, _ in self.retriever.retrieve([query], k)[0]]


def line_for(query: dict, positive: dict, ranked: list[dict], n_negatives: int) -> dict:
    negatives = [d for d in ranked if d["_id"] != positive["_id"]
                 and d["text"] != positive["text"]][:n_negatives]
    return {
        "query_text": query["text"],
        "positives": [{"doc_id": positive["_id"], "text": positive["text"]}],
        "negatives": [{"doc_id": d["_id"], "text": d["text"]} for d in negatives],
        "source_chunk": positive["_id"],
        "meta": {"article": positive["title"], "source": "squad-v1.1-dev", "query_id": query["_id"]},
    }


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

    corpus = {d["_id"]: d for d in read_jsonl(args.source / "corpus.jsonl")}
    queries = {q["_id"]: q for q in read_jsonl(args.source / "queries.jsonl")}
    positive_of: dict[str, str] = {}
    with (args.source / "qrels" / "test.tsv").open(encoding="utf-8") as handle:
        next(handle)
        for row in handle:
            qid, doc_id, score = row.rstrip("\n").split("\t")
            if int(score) > 0:
                positive_of[qid] = doc_id
    by_article: dict[str, list[str]] = defaultdict(list)
    for qid, doc_id in sorted(positive_of.items()):
        by_article[doc_id.split("_")[0]].append(qid)

    rng = random.Random(args.seed)
    article = lambda doc_id: doc_id.split("_")[0]  # noqa: E731
    train_index = BM25Index([d for d in corpus.values() if article(d["_id"]) in TRAIN_ARTICLES])
    full_index = BM25Index(list(corpus.values()))

    def sample(articles: tuple[str, ...], n: int) -> list[str]:
        pool = [qid for a in articles for qid in by_article[a]]
        return sorted(rng.sample(pool, min(n, len(pool))))

    outputs = {
        "squad_train.jsonl": [line_for(queries[q], corpus[positive_of[q]],
                                       train_index.top(queries[q]["text"], args.train_negatives + 1),
                                       args.train_negatives)
                              for q in sample(TRAIN_ARTICLES, args.train_queries)],
        "squad_valid.jsonl": [line_for(queries[q], corpus[positive_of[q]],
                                       full_index.top(queries[q]["text"], args.valid_negatives + 1),
                                       args.valid_negatives)
                              for q in sample(VALID_ARTICLES, args.valid_queries)
                              if queries[q]["text"] != DEMO_QUERY],
        "sample_docs.jsonl": [{"doc_id": d["_id"], "text": d["text"]}
                              for d in full_index.top(DEMO_QUERY, 8)],
    }
    # Shuffled, so that the demo shows the reranker ordering them (not BM25's order kept).
    rng.shuffle(outputs["sample_docs.jsonl"])
    args.out.mkdir(parents=True, exist_ok=True)
    for name, lines in outputs.items():
        with (args.out / name).open("w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        print(f"{args.out / name}: {len(lines)} lines")


if __name__ == "__main__":
    main()
