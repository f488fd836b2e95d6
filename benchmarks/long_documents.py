"""Long documents: truncation (FirstP) against windows, and MaxP training, on SQuAD documents of
several paragraphs.

    python benchmarks/long_documents.py [--train-queries 100] [--test-queries 80] [--top-k 10]

Protocol (seeded): the paragraphs of each SQuAD dev article (``../shared/data/squad-v1.1-dev``)
are merged, in order, into documents of about ``--doc-tokens`` word-piece tokens (title once,
then the paragraphs); a question's positive is the merged document holding its paragraph. The
split by article is the quality benchmark's (``benchmarks/quality.py``): training questions and
their BM25-mined negatives come from the train articles only; test questions are ranked over
BM25's top ``--top-k`` of all merged documents. Two runs of the shipped recipe
(``configs/train_qlora.yaml``, one epoch) differ only in ``model.long_documents.mode``:
``truncate`` (FirstP: the first window of each document) and ``windows`` (MaxP). Each model
scores the test candidates truncated, and by windows with every aggregate (one pass over the
windows, aggregated four ways). Writes ``benchmarks/results/long_documents.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality import (  # noqa: E402
    BACKBONE,
    DATA,
    article,
    first_stage_candidates,
    in_fresh_process,
    metrics_of,
    prepare_training_files,
    score_with,
    split_by_article,
    train_rerankit,
)

AGGREGATES = ("max", "first", "mean", "max+first")


def merge_paragraphs(corpus: dict[str, str], doc_tokens: int) -> tuple[dict[str, str], dict[str, str]]:
    """Consecutive paragraphs of an article joined into documents of about ``doc_tokens``
    tokens. Returns the merged corpus and paragraph id -> merged document id."""
    from rerankit.loading import load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(BACKBONE))
    ids = sorted(corpus, key=lambda d: (int(article(d)), int(d.rsplit("_", 1)[1])))
    lengths = dict(
        zip(ids, (len(x) for x in tokenizer([corpus[d] for d in ids], add_special_tokens=False)["input_ids"]))
    )
    merged: dict[str, str] = {}
    owner: dict[str, str] = {}
    current: list[str] = []

    def close() -> None:
        if current:
            doc_id = f"{article(current[0])}_m{current[0].rsplit('_', 1)[1]}"
            merged[doc_id] = " ".join(corpus[d] for d in current)
            owner.update(dict.fromkeys(current, doc_id))
            current.clear()

    for d in ids:
        if current and (article(d) != article(current[0]) or sum(lengths[c] for c in current) >= doc_tokens):
            close()
        current.append(d)
    close()
    return merged, owner


def merged_sides(doc_tokens: int):
    """The quality benchmark's sides, with documents merged and positives mapped to them."""
    sides = split_by_article(DATA)
    merged, owner = merge_paragraphs(sides["all"][0], doc_tokens)
    result = {}
    for name, (docs, queries, positives) in sides.items():
        kept = {owner[d] for d in docs}
        result[name] = (
            {d: merged[d] for d in kept},
            queries,
            {q: sorted({owner[d] for d in ids}) for q, ids in positives.items()},
        )
    return result, merged


def window_pass(reranker, test) -> tuple[dict[str, list[np.ndarray]], float, int]:
    """Every test candidate scored by windows once, aggregated each way; seconds and windows."""
    from rerankit.config import LongDocumentsConfig
    from rerankit.windows import aggregate, split_documents

    queries = [q for q, ids in zip(test["queries"], test["hits"]) for _ in ids]
    docs = [test["docs"][d] for ids in test["hits"] for d in ids]
    options = LongDocumentsConfig(mode="windows")
    started = time.perf_counter()
    flat_q, flat_d, owner = split_documents(reranker.tokenizer, queries, docs, reranker.max_length, options)
    window_scores = reranker.logits(flat_q, flat_d)
    seconds = time.perf_counter() - started
    sizes = np.cumsum([len(ids) for ids in test["hits"]])[:-1]
    return (
        {how: np.split(aggregate(window_scores, owner, len(docs), how), sizes) for how in AGGREGATES},
        seconds,
        len(flat_d),
    )


def truncated_pass(reranker, test) -> tuple[list[np.ndarray], float]:
    started = time.perf_counter()
    scores = score_with(reranker, test)
    return scores, time.perf_counter() - started


def evaluate_model(path: str, test, max_length: int) -> list[dict[str, Any]]:
    from rerankit import Reranker

    reranker = Reranker.load(path, device="cpu", max_length=max_length, long_documents={"mode": "truncate"})
    docs = sum(len(ids) for ids in test["hits"])
    truncated, seconds = truncated_pass(reranker, test)
    rows = [
        {
            "scored": "truncated (first window)",
            **metrics_of(test, truncated),
            "docs_per_s": docs / seconds,
            "pairs_per_s": docs / seconds,
        }
    ]
    by_windows, seconds, windows = window_pass(reranker, test)
    for how in AGGREGATES:
        rows.append(
            {
                "scored": f"windows, {how}",
                **metrics_of(test, by_windows[how]),
                "docs_per_s": docs / seconds,
                "pairs_per_s": windows / seconds,
                "windows": windows,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_qlora.yaml"))
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "long_documents")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--doc-tokens", type=int, default=700)
    parser.add_argument("--train-queries", type=int, default=100)
    parser.add_argument("--test-queries", type=int, default=80)
    parser.add_argument("--mined-negatives", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    sides, merged = merged_sides(args.doc_tokens)
    files = prepare_training_files(
        sides["train"], args.train_queries, args.mined_negatives, args.seed, args.work
    )
    test = first_stage_candidates(sides["all"], args.test_queries, args.top_k, args.seed)
    print(
        f"{len(merged)} merged documents; {files['train_queries']} train / {files['valid_queries']} "
        f"valid questions; {len(test['qids'])} test questions",
        flush=True,
    )
    max_length = 192
    rows: list[dict[str, Any]] = [
        {"model": "BM25 (first stage)", "scored": "", **metrics_of(test, test["bm25"])}
    ]
    runs = {}
    for mode, name in (
        ("truncate", "rerankit, FirstP-trained (truncate)"),
        ("windows", "rerankit, MaxP-trained (windows, max)"),
    ):
        out = str(args.work / f"run-{mode}")
        overrides = {"training.epochs": 1, "model.long_documents.mode": mode}
        print(f"training {name} ...", flush=True)
        runs[mode] = in_fresh_process(train_rerankit, args.config, files, out, overrides)
        for row in evaluate_model(out, test, max_length):
            rows.append({"model": name, **row, "train_wall_s": runs[mode]["wall_s"]})
            print(rows[-1], flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    lengths = [len(t.split()) for t in merged.values()]
    meta = {
        "date": date.today().isoformat(),
        "commit": commit.stdout.strip(),
        **vars(args),
        "merged_documents": len(merged),
        "words_per_document_median": int(np.median(lengths)),
        "train_queries": files["train_queries"],
        "valid_queries": files["valid_queries"],
        "test_queries": len(test["qids"]),
        "max_length": max_length,
    }
    meta = {k: str(v) if isinstance(v, Path) else v for k, v in meta.items()}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "long_documents.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        f"# Long documents: SQuAD paragraphs merged into ~{args.doc_tokens}-token documents "
        f"({meta['date']}, commit {meta['commit']})",
        "",
        f"{len(merged)} documents (median {meta['words_per_document_median']} words); "
        f"{meta['train_queries']} training questions (1 epoch) from the train articles; "
        f"{meta['test_queries']} test questions over BM25's top {args.top_k} of all documents; "
        f"max_length {max_length}; 2 CPU cores.",
        "",
        "| model | scored | NDCG@10 | MRR@10 | docs/s | pairs/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        speed = f"{r['docs_per_s']:.1f} | {r['pairs_per_s']:.1f}" if "docs_per_s" in r else " | "
        lines.append(f"| {r['model']} | {r['scored']} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {speed} |")
    (args.results / "long_documents.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
