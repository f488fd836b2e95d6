"""What the self-ensemble costs: ``Reranker.rerank`` with the run's ensemble against the same
model with ``ensemble="none"`` (the cross-encoder alone), in pairs per second.

    python benchmarks/ensemble_speed.py [--model outputs/demo] [--queries 40] [--top-k 30] [--repeats 3]

SQuAD dev questions with their BM25 top-k paragraphs (../shared/data/squad-v1.1-dev), one
``rerank`` call per question, as a RAG pipeline calls it. Passes alternate between the contenders
and the median is reported. The ensemble's cosine keeps embeddings, so three ensemble rows are
shown: passages new to the model (every kept embedding dropped before each pass: each passage
embedded once), as loaded (the run's corpus embedded at the end of fit, when the passages are
in it), and warm (every passage seen before, as a corpus searched again and again sends them).
The time ``Reranker.load`` takes is shown with and without the ensemble. Prints the CPU's flags
beside the table; writes
benchmarks/results/ensemble_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from machine import FLAGS_OF_INTEREST, cpu_flags  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"


def load_pairs(n_queries: int, top_k: int, seed: int = 1):
    """n_queries SQuAD dev questions and their BM25 top_k paragraphs, each paragraph with its
    article's title, as the quality benchmark (and a run trained on its corpus) reads them."""
    import random

    from rerankit.beir import read_corpus, read_queries
    from rerankit.held_out import first_stage_top_k

    corpus = read_corpus(DATA / "corpus.jsonl", with_title=True)
    queries = read_queries(DATA / "queries.jsonl")
    qids = random.Random(seed).sample(sorted(queries), n_queries)
    hits = first_stage_top_k(corpus, [queries[q] for q in qids], top_k, "bm25")
    return [queries[q] for q in qids], [[corpus[d] for d in hit.ids] for hit in hits]


def timed(reranker, queries, docs) -> float:
    started = time.perf_counter()
    for query, candidates in zip(queries, docs):
        reranker.rerank(query, candidates)
    return sum(len(d) for d in docs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "outputs" / "demo"))
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from rerankit import Reranker

    queries, docs = load_pairs(args.queries, args.top_k)
    alone = Reranker.load(args.model, dtype=args.dtype, ensemble="none")
    warm = Reranker.load(args.model, dtype=args.dtype)
    if warm.ensemble is None:
        raise SystemExit(f"{args.model} has no ensemble: nothing to compare")
    timed(alone, queries[:2], docs[:2])  # warm-up of the kernels
    timed(warm, queries, docs)  # fills the warm model's cache
    new, loaded = "ensemble, passages new", "ensemble, as loaded (the run's corpus embedded)"
    rates: dict[str, list[float]] = {"cross-encoder alone": [], new: [], loaded: [], "ensemble, warm": []}
    pinned = warm.signals["cosine"].pinned if "cosine" in warm.signals else 0
    load_s: dict[str, list[float]] = {"cross-encoder alone": [], "ensemble": []}

    def load(**options):
        started = time.perf_counter()
        reranker = Reranker.load(args.model, dtype=args.dtype, **options)
        name = "ensemble" if reranker.ensemble else "cross-encoder alone"
        load_s[name].append(time.perf_counter() - started)
        return reranker

    for _ in range(args.repeats):  # alternating, so the machine's drift hits every row alike
        rates["cross-encoder alone"].append(timed(alone, queries, docs))
        load(ensemble="none")
        fresh = load()
        if "cosine" in fresh.signals:
            fresh.signals["cosine"].forget()
        rates[new].append(timed(fresh, queries, docs))
        rates[loaded].append(timed(Reranker.load(args.model, dtype=args.dtype), queries, docs))
        rates["ensemble, warm"].append(timed(warm, queries, docs))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    load_medians = {name: statistics.median(values) for name, values in load_s.items()}
    base = medians["cross-encoder alone"]
    name, flags = cpu_flags()
    pairs = sum(len(d) for d in docs)
    distinct = len({text for row in docs for text in row})
    rows = [
        {"name": n, "pairs_per_s": rate, "cost": base / rate, "passes": rates[n]}
        for n, rate in medians.items()
    ]
    result = {
        "model": args.model,
        "weights": dict(zip(warm.ensemble.signals, warm.ensemble.weights)),
        "runtime": f"{alone.backend_info['backend']} {alone.backend_info['precision']}",
        "encoder_runtime": warm.backend_info.get("ensemble_encoder", {}).get("runtime"),
        "pairs": pairs,
        "distinct_passages": distinct,
        "corpus_embeddings_kept": pinned,
        "cpu": name,
        "flags": flags,
        "rows": rows,
        "load_s": load_medians,
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    lines = [
        f"# Self-ensemble cost ({args.queries} SQuAD questions × BM25 top {args.top_k}: {pairs} pairs, "
        f"{distinct} distinct passages; one rerank call per question)",
        "",
        f"CPU: {name}; flags: {', '.join(flags) or 'none of ' + ', '.join(FLAGS_OF_INTEREST)}; "
        f"model {result['runtime']}, sentence encoder {result['encoder_runtime'] or 'none'}; "
        f"median of {args.repeats} alternating passes; "
        f"{result['date']}, commit {result['commit']}.",
        "",
        "| scoring | pairs/s | time × the cross-encoder alone |",
        "|---|---:|---:|",
        *(f"| {r['name']} | {r['pairs_per_s']:.1f} | {r['cost']:.2f} |" for r in rows),
        "",
        "Ensemble weights: "
        + ", ".join(f"{s} {w:.2f}" for s, w in result["weights"].items())
        + f"; the run keeps the embeddings of {pinned} corpus texts (its passages, and their "
        "sentences where a best-sentence cosine weighs).",
        "",
        f"`Reranker.load` (median): {load_medians['cross-encoder alone']:.1f} s for the cross-encoder "
        f"alone, {load_medians['ensemble']:.1f} s with the ensemble (its signals read, the sentence "
        "encoder's graph compiled and checked).",
        "",
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "ensemble_speed.json").write_text(json.dumps(result, indent=2))
    (args.results / "ensemble_speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
