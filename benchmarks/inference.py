"""Inference speed: rerankit's Reranker.score against sentence-transformers' CrossEncoder.predict.

    python benchmarks/inference.py [--model outputs/demo] [--queries 50] [--top-k 24] [--repeats 5]

Both score the same merged model on the same (query, paragraph) pairs: SQuAD dev questions
with their BM25 top-k paragraphs from ../shared/data/squad-v1.1-dev (mixed lengths). Runs
alternate between the contenders and the median of the repeats is reported. Quality is
checked against sentence-transformers in fp32: how many queries keep the same top-10 order,
and the largest score difference. Writes benchmarks/results/inference.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"


def load_pairs(n_queries: int, top_k: int, seed: int = 0):
    """n_queries SQuAD questions, their BM25 top_k paragraphs, and qrels over those."""
    import random

    from rerankit.beir import read_corpus, read_qrels, read_queries
    from rerankit.held_out import first_stage_top_k

    corpus = read_corpus(DATA / "corpus.jsonl")
    queries = read_queries(DATA / "queries.jsonl")
    positive = {
        q: next(d for d, grade in judged.items() if grade > 0)
        for q, judged in read_qrels(DATA / "qrels" / "test.tsv").items()
    }
    qids = random.Random(seed).sample(sorted(positive), n_queries)
    hits = first_stage_top_k(corpus, [queries[q] for q in qids], top_k, "bm25")
    doc_ids = [hit.ids for hit in hits]
    qrels = {
        str(i): {d: int(d == positive[q]) for d in ids} | {positive[q]: 1}
        for i, (q, ids) in enumerate(zip(qids, doc_ids))
    }
    return [queries[q] for q in qids], [[corpus[d] for d in row] for row in doc_ids], doc_ids, qrels


def prepare_model(model: str | None) -> str:
    """A merged model folder: the given one, the demo run exported, or MiniLM with a seeded head."""
    if model and (Path(model) / "run.json").exists():
        from rerankit.export import export

        out = Path(tempfile.mkdtemp()) / "merged"
        return str(export(model, out))
    if model:
        return model
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rerankit.loading import resolve_model_path

    base = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp()) / "minilm-ce"
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


def top10_agreement(reference: list[np.ndarray], other: list[np.ndarray]) -> int:
    return sum(
        list(np.argsort(-a, kind="stable")[:10]) == list(np.argsort(-b, kind="stable")[:10])
        for a, b in zip(reference, other)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=str(ROOT / "outputs/demo") if (ROOT / "outputs/demo/run.json").exists() else None
    )
    parser.add_argument("--queries", type=int, default=42)
    parser.add_argument("--top-k", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--st-batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    from rerankit import Reranker

    path = prepare_model(args.model)
    from rerankit.ranking_metrics import ranking_metrics

    queries, candidates, doc_ids, qrels = load_pairs(args.queries, args.top_k)
    pairs = [(q, d) for q, docs in zip(queries, candidates) for d in docs]
    bounds = np.cumsum([0] + [len(c) for c in candidates])

    def per_query(scores) -> list[np.ndarray]:
        scores = np.asarray(scores, dtype=np.float64)
        return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    st = CrossEncoder(path, device="cpu", max_length=args.max_length)
    contenders = {
        "sentence-transformers CrossEncoder.predict (fp32, batch 32)": lambda: st.predict(
            pairs, batch_size=args.st_batch_size, show_progress_bar=False
        ),
        "rerankit Reranker.score fp32": (lambda r: lambda: r.score(pairs))(
            Reranker.load(path, device="cpu", dtype="float32", max_length=args.max_length)
        ),
        "rerankit Reranker.score bf16": (lambda r: lambda: r.score(pairs))(
            Reranker.load(path, device="cpu", dtype="bfloat16", max_length=args.max_length)
        ),
    }
    reference = None
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    outputs: dict[str, np.ndarray] = {}
    for name, run in contenders.items():  # warm-up, and the scores compared for quality
        outputs[name] = np.asarray(run(), dtype=np.float64)
    for _ in range(args.repeats):  # alternate so drift hits every contender alike
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    reference_name = next(iter(contenders))
    reference = per_query(outputs[reference_name])
    rows = []
    for name in contenders:
        median = statistics.median(timings[name])
        rows.append(
            {
                "contender": name,
                "median_s": round(median, 3),
                "pairs_per_s": round(len(pairs) / median, 1),
                "speedup_vs_st": round(statistics.median(timings[reference_name]) / median, 2),
                "same_top10_queries": (
                    f"{top10_agreement(reference, per_query(outputs[name]))}/{len(queries)}"
                ),
                "max_abs_score_diff": float(np.max(np.abs(outputs[name] - outputs[reference_name]))),
                "ndcg@10": round(
                    ranking_metrics(
                        qrels,
                        {
                            str(i): dict(zip(ids, s))
                            for i, (ids, s) in enumerate(zip(doc_ids, per_query(outputs[name])))
                        },
                    )["ndcg@10"],
                    4,
                ),
            }
        )
    meta = {
        "pairs": len(pairs),
        "queries": len(queries),
        "top_k": args.top_k,
        "max_length": args.max_length,
        "repeats": args.repeats,
        "model": args.model or "MiniLM (seeded head)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    bm25 = ranking_metrics(
        qrels, {str(i): {d: -rank for rank, d in enumerate(ids)} for i, ids in enumerate(doc_ids)}
    )["ndcg@10"]
    meta["bm25_ndcg@10"] = round(bm25, 4)
    table = [
        "| contender | median s | pairs/s | × ST | same top-10 order as ST | max abs Δ score | NDCG@10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    table += [
        f"| {r['contender']} | {r['median_s']} | {r['pairs_per_s']} | {r['speedup_vs_st']} | "
        f"{r['same_top10_queries']} | {r['max_abs_score_diff']:.2e} | {r['ndcg@10']} |"
        for r in rows
    ]
    table.append(f"| (BM25 order, for reference) | | | | | | {bm25:.4f} |")
    text = "\n".join(table)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "inference.md").write_text(
        f"# Inference speed ({meta['pairs']} pairs, {meta['queries']} queries × BM25 top-{meta['top_k']}, "
        f"{meta['cores']} cores, torch {meta['torch']})\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
