"""Long documents: truncation (FirstP) against windows, and MaxP training, on SQuAD documents of
several paragraphs, beside controls that show what a gain would look like.

    python benchmarks/long_documents.py [--train-queries 600] [--test-queries 200] [--reuse]

Protocol (seeded): the paragraphs of each SQuAD dev article (``../shared/data/squad-v1.1-dev``;
each paragraph opens with its article's title) are merged, in order and separated by blank
lines, into documents of about ``--doc-tokens`` word-piece tokens; a question's positive is the
merged document holding its paragraph. The split by article is the quality benchmark's
(``benchmarks/quality.py``): training questions and their BM25-mined negatives come from the
train articles only; test questions are ranked over BM25's top ``--top-k`` of all merged
documents. Two runs of the shipped recipe (``configs/train_qlora.yaml``, one epoch) differ only
in ``model.long_documents.mode``: ``truncate`` (FirstP: the first window of each document) and
``windows`` (MaxP). Each model, read as its cross-encoder alone, scores the test candidates
truncated, and by windows with every aggregate (one pass over the windows, aggregated four
ways), and through an oracle window (each positive read by its relevant paragraph, the others
by their best window). Controls: BM25, a random order, the untrained cross-encoder, and a model
trained on bare paragraphs (``--paragraph-model``, the demo run) read by windows. Each row's
NDCG@10 carries a 95 % bootstrap interval over the test questions; each trained row its run's
validation NDCG@10. Writes ``benchmarks/results/long_documents.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from buried_paragraphs import mean_interval, per_query_ndcg  # noqa: E402
from machine import cpu_line  # noqa: E402
from quality import (  # noqa: E402
    BACKBONE,
    DATA,
    _commit,
    article,
    first_stage_candidates,
    in_fresh_process,
    metrics_of,
    prepare_training_files,
    reused_run,
    split_by_article,
    train_rerankit,
    untrained_reranker,
    write_corpus,
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
            merged[doc_id] = "\n\n".join(corpus[d] for d in current)
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
        kept = sorted({owner[d] for d in docs})  # sorted: the same order, so runs repeat
        result[name] = (
            {d: merged[d] for d in kept},
            queries,
            {q: sorted({owner[d] for d in ids}) for q, ids in positives.items()},
        )
    return result, merged


def window_pass(reranker, test, docs: list[str]) -> tuple[dict[str, list[np.ndarray]], float, int, int]:
    """Every test candidate (``docs``, flat) scored by windows once, aggregated each way;
    seconds, windows scored, and documents that ``max_windows`` cut."""
    from rerankit.windows import aggregate, split_documents

    queries = [q for q, ids in zip(test["queries"], test["hits"]) for _ in ids]
    options = reranker.long_documents.model_copy(update={"mode": "windows"})
    started = time.perf_counter()
    with warnings.catch_warnings(record=True):  # counted below instead
        warnings.simplefilter("always")
        flat_q, flat_d, owner = split_documents(
            reranker.tokenizer, queries, docs, reranker.max_length, options
        )
    window_scores = reranker.logits(flat_q, flat_d)
    seconds = time.perf_counter() - started
    cut = int(sum(np.bincount(owner, minlength=len(docs)) >= options.max_windows))
    sizes = np.cumsum([len(ids) for ids in test["hits"]])[:-1]
    return (
        {how: np.split(aggregate(window_scores, owner, len(docs), how), sizes) for how in AGGREGATES},
        seconds,
        len(flat_d),
        cut,
    )


def truncated_pass(reranker, test, docs: list[str]) -> tuple[list[np.ndarray], float]:
    queries = [q for q, ids in zip(test["queries"], test["hits"]) for _ in ids]
    started = time.perf_counter()
    flat = np.asarray(reranker.logits(queries, docs), dtype=np.float64)
    sizes = np.cumsum([len(ids) for ids in test["hits"]])[:-1]
    return np.split(flat, sizes), time.perf_counter() - started


def oracle(reranker, test, paragraphs: dict[str, str], by_windows: list[np.ndarray]) -> list[np.ndarray]:
    """Each positive document read through its relevant paragraph alone, the others by their
    best window: what a perfect choice of window gives the positives."""
    where = [
        (row, col)
        for row, (q, ids) in enumerate(zip(test["qids"], test["hits"]))
        for col, d in enumerate(ids)
        if d in test["qrels"][q]
    ]
    gold = reranker.logits(
        [test["queries"][row] for row, _ in where],
        [paragraphs[test["gold"][test["qids"][row]]] for row, _ in where],
    )
    scores = [np.array(s, dtype=np.float64) for s in by_windows]
    for (row, col), value in zip(where, gold):
        scores[row][col] = value
    return scores


def evaluate_model(reranker, name: str, test, paragraphs: dict[str, str], aggregates=AGGREGATES):
    """Rows of one model: truncated, by windows (each aggregate), and the oracle window."""
    docs = [test["docs"][d] for ids in test["hits"] for d in ids]
    # whatever the run recorded: the truncated and oracle rows read one window; the windows
    # pass cuts its own
    reranker.long_documents = reranker.long_documents.model_copy(update={"mode": "truncate"})
    truncated, seconds = truncated_pass(reranker, test, docs)
    rows = [_row(test, name, "truncated (first window)", truncated, len(docs), seconds, len(docs))]
    by_windows, seconds, windows, cut = window_pass(reranker, test, docs)
    for how in aggregates:
        rows.append(_row(test, name, f"windows, {how}", by_windows[how], len(docs), seconds, windows))
        rows[-1]["documents_cut_by_max_windows"] = cut
    scores = oracle(reranker, test, paragraphs, by_windows["max"])
    rows.append(_row(test, name, "oracle window (positives by their paragraph), max", scores))
    return rows


def _row(test, model: str, scored: str, scores, docs: int = 0, seconds: float = 0.0, pairs: int = 0) -> dict:
    values = per_query_ndcg(test, scores)
    low, high = mean_interval(values, seed=0)
    row = {"model": model, "scored": scored, **metrics_of(test, scores), "ndcg@10_interval": [low, high]}
    if seconds:
        row.update(docs_per_s=docs / seconds, pairs_per_s=pairs / seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "train_qlora.yaml"))
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "long_documents")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--paragraph-model", default=str(ROOT / "outputs" / "demo"))
    parser.add_argument("--doc-tokens", type=int, default=700)
    parser.add_argument("--train-queries", type=int, default=600)
    parser.add_argument("--test-queries", type=int, default=200)
    parser.add_argument("--mined-negatives", type=int, default=15)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reuse", action="store_true", help="Score the run folders already in --work.")
    args = parser.parse_args()

    from rerankit import Reranker
    from rerankit.beir import read_corpus

    sides, merged = merged_sides(args.doc_tokens)
    files = prepare_training_files(
        sides["train"], args.train_queries, args.mined_negatives, args.seed, args.work
    )
    files["corpus_file"] = write_corpus(sides["train"][0], args.work / "corpus.jsonl")
    test = first_stage_candidates(sides["all"], args.test_queries, args.top_k, args.seed)
    # each test question's relevant paragraph (the oracle window reads it)
    positives = split_by_article(DATA)["all"][2]
    test["gold"] = {q: positives[q][0] for q in test["qids"]}
    paragraphs = read_corpus(DATA / "corpus.jsonl", with_title=True)
    print(
        f"{len(merged)} merged documents; {files['train_queries']} train / {files['valid_queries']} "
        f"valid questions; {len(test['qids'])} test questions",
        flush=True,
    )
    max_length = 192
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = [
        _row(test, "BM25 (first stage)", "", test["bm25"]),
        _row(test, "random order", "", [rng.random(len(ids)) for ids in test["hits"]]),
    ]
    untrained = untrained_reranker(max_length, args.seed)
    rows += evaluate_model(untrained, "untrained cross-encoder", test, paragraphs, aggregates=("max",))
    trained_on_paragraphs = Reranker.load(
        args.paragraph_model, device="cpu", max_length=max_length, ensemble="none"
    )
    rows += evaluate_model(
        trained_on_paragraphs, "paragraph-trained (the demo run)", test, paragraphs, ("max",)
    )
    runs = {}
    for mode, name in (
        ("truncate", "FirstP-trained (truncate)"),
        ("windows", "MaxP-trained (windows, max)"),
    ):
        out = args.work / f"run-{mode}"
        overrides = {"training.epochs": 1, "model.long_documents.mode": mode, "graphs": "none"}
        if args.reuse and (out / "run.json").exists():
            runs[mode] = reused_run(out)
        else:
            print(f"training {name} ...", flush=True)
            runs[mode] = in_fresh_process(train_rerankit, args.config, files, str(out), overrides)
        reranker = Reranker.load(out, device="cpu", max_length=max_length, ensemble="none")
        for row in evaluate_model(reranker, name, test, paragraphs):
            row.update(valid_ndcg=runs[mode]["valid_best"]["ndcg@10"], train_wall_s=runs[mode].get("wall_s"))
            rows.append(row)
            print(row, flush=True)

    lengths = [len(t.split()) for t in merged.values()]
    meta = {
        "date": date.today().isoformat(),
        "commit": _commit(),
        "cpu": cpu_line(),
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "merged_documents": len(merged),
        "words_per_document_median": int(np.median(lengths)),
        "train_queries": files["train_queries"],
        "valid_queries": files["valid_queries"],
        "test_queries": len(test["qids"]),
        "max_length": max_length,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "long_documents.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    (args.results / "long_documents.md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))


def markdown(meta: dict, rows: list[dict]) -> str:
    cut = max((r.get("documents_cut_by_max_windows", 0) for r in rows), default=0)
    lines = [
        f"# Long documents: SQuAD paragraphs merged into ~{meta['doc_tokens']}-token documents "
        f"({meta['date']}, commit {meta['commit']})",
        "",
        f"{meta['merged_documents']} documents (median {meta['words_per_document_median']} words; "
        "paragraphs separated by blank lines); "
        f"{meta['train_queries']} training questions (+{meta['valid_queries']} validation, one epoch, "
        f"{meta['mined_negatives']} BM25-mined negatives each) from the train articles; "
        f"{meta['test_queries']} test questions over BM25's top {meta['top_k']} of all documents; "
        f"max_length {meta['max_length']}; windows cut at paragraph and sentence ends "
        f"(`long_documents.cut: boundaries`); every model read as its cross-encoder alone. "
        f"{cut} of the test documents had more windows than `max_windows` and were read only that far. "
        f"Interval: 95 % bootstrap over questions. CPU: {meta['cpu']}.",
        "",
        "| model | scored | NDCG@10 | 95 % interval | MRR@10 | valid NDCG@10 | train wall | docs/s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        low, high = r["ndcg@10_interval"]
        valid = f"{r['valid_ndcg']:.4f}" if r.get("valid_ndcg") is not None else ""
        wall = f"{r['train_wall_s']:.0f} s" if r.get("train_wall_s") else ""
        speed = f"{r['docs_per_s']:.1f}" if "docs_per_s" in r else ""
        lines.append(
            f"| {r['model']} | {r['scored']} | {r['ndcg@10']:.4f} | {low:.3f}–{high:.3f} | "
            f"{r['mrr@10']:.4f} | {valid} | {wall} | {speed} |"
        )
    lines += ["", "`python benchmarks/long_documents.py`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
