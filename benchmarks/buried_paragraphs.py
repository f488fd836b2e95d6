"""Windows against the bare paragraph: does a paragraph-trained model find a relevant paragraph
when it is buried in a long document?

    python benchmarks/buried_paragraphs.py [--model outputs/demo] [--test-queries 200]

Protocol (seeded): the quality benchmark's SQuAD test questions (``benchmarks/quality.py``,
split by article) and BM25's top ``--top-k`` paragraphs of the whole corpus for each. Every
candidate paragraph is then buried among ``--fillers`` other paragraphs of its article (never a
positive of the question), at a random place, the paragraphs separated by blank lines: about
700 tokens. The same model (the cross-encoder alone: ``ensemble="none"``, its shipped runtime)
scores the bare paragraphs and the buried documents, truncated and by windows (max of the
windows), with windows cut at fixed token strides or at paragraph and sentence boundaries.
The buried document is relevant when its paragraph is, so the bare paragraphs are the
ceiling. Ratios to the bare paragraphs carry a 95 % paired bootstrap interval over questions.
Writes ``benchmarks/results/buried_paragraphs.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import cpu_line  # noqa: E402
from quality import DATA, _commit, article, first_stage_candidates, split_by_article  # noqa: E402

RESAMPLES = 2000


def buried_documents(test, paragraphs: dict[str, str], fillers: int, seed: int) -> dict[str, str]:
    """Per (question, candidate) key ``qid|doc``: the candidate among ``fillers`` other
    paragraphs of its article that are not positives of the question."""
    by_article: dict[str, list[str]] = {}
    for doc_id in sorted(paragraphs, key=lambda d: (article(d), int(d.rsplit("_", 1)[1]))):
        by_article.setdefault(article(doc_id), []).append(doc_id)
    rng = random.Random(seed)
    buried = {}
    for qid, ids in zip(test["qids"], test["hits"]):
        for doc_id in ids:
            others = [d for d in by_article[article(doc_id)] if d != doc_id and d not in test["qrels"][qid]]
            parts = [paragraphs[d] for d in rng.sample(others, min(fillers, len(others)))]
            parts.insert(rng.randrange(len(parts) + 1), paragraphs[doc_id])
            buried[f"{qid}|{doc_id}"] = "\n\n".join(parts)
    return buried


def per_query_ndcg(test, scores: list[np.ndarray]) -> np.ndarray:
    from rerankit.ranking_metrics import per_query_metrics

    run = {q: dict(zip(ids, map(float, s))) for q, ids, s in zip(test["qids"], test["hits"], scores)}
    values = per_query_metrics(test["qrels"], run)["ndcg@10"]
    return np.array([values[q] for q in test["qids"]])


def mean_interval(values: np.ndarray, seed: int) -> tuple[float, float]:
    """95 % bootstrap interval of the mean of per-question values."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def ratio_interval(values: np.ndarray, reference: np.ndarray, seed: int) -> tuple[float, float]:
    """95 % paired bootstrap interval of mean(values) / mean(reference) over questions."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
    ratios = values[picks].mean(axis=1) / reference[picks].mean(axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def scored(reranker, test, texts: list[str], long_documents: dict) -> tuple[list[np.ndarray], int, float]:
    """Raw scores of (question, text) for every candidate, one array per question; the pairs
    the model read (windows) and the seconds it took."""
    from rerankit.config import LongDocumentsConfig
    from rerankit.windows import count_windows

    reranker.long_documents = LongDocumentsConfig(**long_documents)
    queries = [q for q, ids in zip(test["queries"], test["hits"]) for _ in ids]
    windows = int(
        count_windows(reranker.tokenizer, queries, texts, reranker.max_length, reranker.long_documents).sum()
    )
    started = time.perf_counter()
    flat = reranker.logits(queries, texts)
    seconds = time.perf_counter() - started
    sizes = np.cumsum([len(ids) for ids in test["hits"]])[:-1]
    return np.split(np.asarray(flat, dtype=np.float64), sizes), windows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "demo"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--test-queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--fillers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from rerankit import Reranker
    from rerankit.beir import read_corpus

    sides = split_by_article(DATA)
    test = first_stage_candidates(sides["all"], args.test_queries, args.top_k, args.seed)
    paragraphs = read_corpus(DATA / "corpus.jsonl")  # without titles: the paragraphs as buried
    buried = buried_documents(test, paragraphs, args.fillers, args.seed)
    bare_texts = [paragraphs[d] for ids in test["hits"] for d in ids]
    buried_texts = [buried[f"{q}|{d}"] for q, ids in zip(test["qids"], test["hits"]) for d in ids]
    reranker = Reranker.load(args.model, ensemble="none")
    tokens = [len(x) for x in reranker.tokenizer(buried_texts, add_special_tokens=False)["input_ids"]]
    print(
        f"{len(test['qids'])} questions x {args.top_k} candidates; buried documents: median "
        f"{int(np.median(tokens))} tokens; model {args.model} ({reranker.backend_info['backend']} "
        f"{reranker.backend_info['precision']}), max_length {reranker.max_length}",
        flush=True,
    )
    contenders = [
        ("bare paragraph", "truncated", bare_texts, {"mode": "truncate"}),
        ("buried", "truncated (first window)", buried_texts, {"mode": "truncate"}),
        ("buried", "windows every 32-token stride, max", buried_texts, {"mode": "windows", "cut": "tokens"}),
        ("buried", "windows cut at paragraph/sentence ends, max", buried_texts, {"mode": "windows"}),
    ]
    rows: list[dict[str, Any]] = []
    per_query: dict[str, np.ndarray] = {}
    bm25 = per_query_ndcg(test, test["bm25"])
    for document, how, texts, options in contenders:
        scores, windows, seconds = scored(reranker, test, texts, options)
        values = per_query_ndcg(test, scores)
        per_query[how + document] = values
        rows.append(
            {
                "document": document,
                "scored": how,
                "ndcg@10": float(values.mean()),
                "pairs": windows,
                "seconds": seconds,
            }
        )
        print(rows[-1], flush=True)
    reference = per_query["truncatedbare paragraph"]
    for row in rows:
        values = per_query[row["scored"] + row["document"]]
        row["ratio_to_bare"] = float(values.mean() / reference.mean())
        row["ratio_interval"] = ratio_interval(values, reference, args.seed)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "cpu": cpu_line(),
        "model": args.model,
        "backend": reranker.backend_info,
        "questions": len(test["qids"]),
        "top_k": args.top_k,
        "fillers": args.fillers,
        "seed": args.seed,
        "median_tokens": int(np.median(tokens)),
        "bm25_ndcg@10": float(bm25.mean()),
        "max_length": reranker.max_length,
    }
    truncated = next(r for r in rows if r["document"] == "buried" and r["scored"].startswith("truncated"))
    best = rows[-1]
    verdict = (
        f"Boundary windows: {best['ratio_to_bare']:.3f}x the bare paragraphs (target >= 0.95: "
        f"{'met' if best['ratio_to_bare'] >= 0.95 else 'NOT met'}); "
        f"{best['ndcg@10'] - truncated['ndcg@10']:+.4f} over truncation (target >= +0.10: "
        f"{'met' if best['ndcg@10'] - truncated['ndcg@10'] >= 0.10 else 'NOT met'})."
    )
    args.results.mkdir(parents=True, exist_ok=True)
    result = json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    (args.results / "buried_paragraphs.json").write_text(result)
    lines = [
        f"# A relevant paragraph buried among {args.fillers} others of its article ({meta['date']}, "
        f"commit {meta['commit']})",
        "",
        f"{meta['questions']} SQuAD test questions (split by article) x BM25's top {args.top_k} paragraphs; "
        f"each candidate buried at a random place among {args.fillers} other paragraphs of its article "
        f"(median {meta['median_tokens']} tokens); model `{Path(args.model).name}` read as its cross-encoder "
        f"alone ({reranker.backend_info['backend']} {reranker.backend_info['precision']}), max_length "
        f"{meta['max_length']}. BM25 over the bare paragraphs: {meta['bm25_ndcg@10']:.4f}. "
        f"Ratio: NDCG@10 over the bare paragraphs', with its 95 % paired bootstrap interval over questions. "
        f"CPU: {meta['cpu']}.",
        "",
        "| document | scored | NDCG@10 | × bare | 95 % interval | pairs read | seconds |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        low, high = r["ratio_interval"]
        lines.append(
            f"| {r['document']} | {r['scored']} | {r['ndcg@10']:.4f} | {r['ratio_to_bare']:.3f} | "
            f"{low:.3f}–{high:.3f} | {r['pairs']} | {r['seconds']:.1f} |"
        )
    lines += ["", verdict, "", f"`python benchmarks/buried_paragraphs.py --model {Path(args.model).name}`"]
    (args.results / "buried_paragraphs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
